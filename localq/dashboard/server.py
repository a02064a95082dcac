"""The dashboard's HTTP server: standard library only (ThreadingHTTPServer).

GET serves the page (one HTML shell, its script and stylesheet, all from this
package: no CDN, works offline), the JSON API under Flower's paths and
``/metrics``. Every action is a POST that must carry the token the page got from
this server (header ``X-Localq-Token`` or form field ``token``): a cross-site
form cannot read the page, so it cannot know the token, and gets 403. The page
builds every element with ``textContent``, never HTML from data, and a strict
Content-Security-Policy forbids inline and foreign scripts besides. With
``--readonly`` no action is served. ``--basic-auth user:password`` guards
everything, as in Flower. A request naming another host than the one bound
(DNS rebinding) gets 403 when bound to the loopback address.
"""
from __future__ import annotations

import base64
import hmac
import ipaddress
import json
import secrets
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import TYPE_CHECKING, Any, Callable
from urllib.parse import parse_qs, unquote, urlsplit

from ..exceptions import LocalqError
from . import views

if TYPE_CHECKING:
    from ..app import Localq

MAX_BODY = 64 * 1024
MAX_LIMIT = 1000
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
       "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
STATIC = {"app.js": "text/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8"}


def _static(name: str) -> bytes:
    return resources.files(__package__).joinpath("static", name).read_bytes()


class _HTTPError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Dashboard(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, app: Localq, address: str, port: int, readonly: bool = False,
                 basic_auth: str | None = None) -> None:
        self.app = app
        self.readonly = readonly
        self.token = secrets.token_urlsafe(32)
        self.auth = ("Basic " + base64.b64encode(basic_auth.encode()).decode()
                     if basic_auth else None)
        self.loopback = _is_loopback(address)
        super().__init__((address, port), _Handler)

    @property
    def url(self) -> str:
        host, port = str(self.server_address[0]), int(self.server_address[1])
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{port}/"


def _is_loopback(address: str) -> bool:
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def _int(params: dict[str, str], key: str, default: int, top: int) -> int:
    text = params.get(key) or ""
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise _HTTPError(400, f"{key} must be a whole number, not {text!r}") from None
    if not 0 <= value <= top:
        raise _HTTPError(400, f"{key} must be between 0 and {top}, not {value}")
    return value


class _Handler(BaseHTTPRequestHandler):
    server: Dashboard
    server_version = "localq-dashboard"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:   # quiet: a page polls each second
        pass

    # ---------------------------------------------------------------- plumbing

    def _send(self, status: int, body: bytes, ctype: str, extra: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Security-Policy", CSP)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("X-Frame-Options", "DENY")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Access-Control-Expose-Headers", "X-Localq-Next")
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, data: Any, status: int = 200) -> None:
        self._send(status, json.dumps(data, default=repr).encode(),
                   "application/json; charset=utf-8")

    def _error(self, status: int, message: str) -> None:
        extra = {"WWW-Authenticate": 'Basic realm="localq"'} if status == 401 else None
        self._send(status, json.dumps({"error": message}).encode(),
                   "application/json; charset=utf-8", extra)

    def _guard(self) -> None:
        server = self.server
        if server.loopback:
            host = (self.headers.get("Host") or "").rsplit(":", 1)[0].strip("[]").lower()
            if host not in ("127.0.0.1", "localhost", "::1", ""):
                raise _HTTPError(403, f"this dashboard answers to 127.0.0.1, not {host!r}")
        if server.auth is not None:
            given = self.headers.get("Authorization") or ""
            if not hmac.compare_digest(given.encode(), server.auth.encode()):
                raise _HTTPError(401, "authentication required")

    def _route(self, method: str) -> None:
        try:
            self._guard()
            parts = urlsplit(self.path)
            params = {k: v[-1] for k, v in parse_qs(parts.query).items()}
            path = parts.path
            if method == "GET":
                self._get(path, params)
            else:
                self._post(path, params)
        except _HTTPError as exc:
            self._error(exc.status, str(exc))
        except LocalqError as exc:
            self._error(503, str(exc))
        except (BrokenPipeError, ConnectionResetError):
            pass

    def do_GET(self) -> None:   # noqa: N802 - http.server's name
        self._route("GET")

    do_HEAD = do_GET

    def do_POST(self) -> None:  # noqa: N802
        self._route("POST")

    # ---------------------------------------------------------------- GET

    def _get(self, path: str, params: dict[str, str]) -> None:
        app = self.server.app
        if path in ("/", "/index.html"):
            page = _static("index.html").decode()
            page = page.replace("{{token}}", "" if self.server.readonly else self.server.token)
            page = page.replace("{{readonly}}", "1" if self.server.readonly else "0")
            self._send(200, page.encode(), "text/html; charset=utf-8")
            return
        if path == "/favicon.ico":
            self._send(204, b"", "image/x-icon")
            return
        if path.startswith("/static/") and path[8:] in STATIC:
            self._send(200, _static(path[8:]), STATIC[path[8:]])
            return
        if path == "/metrics":
            self._send(200, views.metrics(app).encode(),
                       "text/plain; version=0.0.4; charset=utf-8")
            return
        api: dict[str, Callable[[], Any]] = {
            "/api/workers": lambda: views.workers(app),
            "/api/queues/length": lambda: {"active_queues": views.queues(app)["active_queues"]},
            "/api/queues": lambda: views.queues(app),
            "/api/throughput": lambda: views.throughput(app),
            "/api/task/names": lambda: views.names(app),
        }
        if path == "/api/tasks":
            # Flower's shape (task id -> task, newest first); the cursor of the next page
            # goes in a header, so that Flower's clients read the body as they always did.
            found = views.tasks(
                app, state=params.get("state") or None, taskname=params.get("taskname") or None,
                queue=params.get("queue") or None, limit=_int(params, "limit", 50, MAX_LIMIT),
                offset=_int(params, "offset", 0, 1 << 31), before=self._cursor(params),
                search=params.get("search") or None)
            self._send(200, json.dumps({t["uuid"]: t for t in found["tasks"]},
                                       default=repr).encode(),
                       "application/json; charset=utf-8",
                       {"X-Localq-Next": found["next"]} if found["next"] else None)
            return
        if path in api:
            self._json(api[path]())
            return
        if path.startswith("/api/task/info/"):
            info = views.task_info(app, unquote(path[len("/api/task/info/"):]))
            if info is None:
                raise _HTTPError(404, "no such task")
            self._json(info)
            return
        raise _HTTPError(404, f"no page {path}")

    @staticmethod
    def _cursor(params: dict[str, str]) -> str | None:
        before = params.get("before") or None
        if before is not None and not before.isdigit():
            raise _HTTPError(400, f"before must be a cursor from a page's 'next', not {before!r}")
        return before

    # ---------------------------------------------------------------- POST

    def _post(self, path: str, params: dict[str, str]) -> None:
        server = self.server
        if server.readonly:
            raise _HTTPError(403, "this dashboard is read-only (--readonly)")
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            raise _HTTPError(413, "request body too large")
        body = self.rfile.read(length) if length else b""
        form = {k: v[-1] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
        params = {**params, **form}
        token = self.headers.get("X-Localq-Token") or params.get("token") or ""
        if not hmac.compare_digest(token.encode(), server.token.encode()):
            raise _HTTPError(403, "missing or wrong action token: actions come from the "
                             "dashboard's page (or send its token as X-Localq-Token)")
        app = server.app
        for prefix, action in ((("/api/task/revoke/"), self._revoke),
                               ("/api/task/retry/", self._retry),
                               ("/api/task/rate-limit/", self._rate_limit),
                               ("/api/queues/purge/", self._purge)):
            if path.startswith(prefix):
                self._json(action(app, unquote(path[len(prefix):]), params))
                return
        raise _HTTPError(404, f"no action {path}")

    @staticmethod
    def _revoke(app: Localq, job_id: str, params: dict[str, str]) -> dict:
        terminate = params.get("terminate", "").lower() in ("1", "true", "yes")
        app.control.revoke(job_id, terminate=terminate)
        return {"message": f"Revoked '{job_id}'", "state": app.store.state(job_id)}

    @staticmethod
    def _retry(app: Localq, job_id: str, params: dict[str, str]) -> dict:
        info = views.task_info(app, job_id)
        message = info.get("exception_message") if info else None
        if not app.store.requeue_failed(job_id, message):
            raise _HTTPError(409, f"{job_id} is not a failed task: only a FAILURE is retried")
        app.nudge_workers()
        return {"message": f"Retrying '{job_id}'", "state": app.store.state(job_id)}

    @staticmethod
    def _rate_limit(app: Localq, task: str, params: dict[str, str]) -> dict:
        rate = params.get("ratelimit", "").strip()
        if not task or not rate:
            raise _HTTPError(400, "give a task and ratelimit (N/s, N/m, N/h, 0, or none)")
        try:
            app.control.rate_limit(task, None if rate.lower() == "none" else rate)
        except (ValueError, TypeError) as exc:
            raise _HTTPError(400, str(exc)) from None
        return {"message": f"new rate limit set successfully: {task} {rate}"}

    @staticmethod
    def _purge(app: Localq, queue: str, params: dict[str, str]) -> dict:
        if not queue:
            raise _HTTPError(400, "name the queue to purge")
        return {"message": f"purged {app.control.purge([queue])} waiting job(s) from {queue}"}


def serve(app: Localq, address: str = "127.0.0.1", port: int = 5555, readonly: bool = False,
          basic_auth: str | None = None) -> Dashboard:
    """The dashboard's server, bound and ready: call ``serve_forever()`` on it."""
    if basic_auth is not None and ":" not in basic_auth:
        raise LocalqError("--basic-auth takes user:password")
    try:
        server = Dashboard(app, address, port, readonly, basic_auth)
    except OSError as exc:
        raise LocalqError(f"cannot listen on {address}:{port}: {exc.strerror} (pick another "
                          f"--port, or stop what uses it)") from None
    if not server.loopback and basic_auth is None:
        print(f"localq: WARNING: the dashboard listens on {address}, beyond this host, with "
              f"no password: anyone who reaches it can read every task"
              f"{'' if readonly else ' and revoke or purge them'}. Pass --basic-auth "
              f"user:password (or bind 127.0.0.1).", file=sys.stderr, flush=True)
    return server


def run(app: Localq, address: str, port: int, readonly: bool, basic_auth: str | None) -> int:
    server = serve(app, address, port, readonly, basic_auth)
    print(f"localq dashboard on {server.url} (database {app.path}"
          f"{', read-only' if readonly else ''}); Ctrl-C stops it", file=sys.stderr, flush=True)
    try:
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
