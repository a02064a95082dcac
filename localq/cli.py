"""``python -m localq``: worker, status, show, purge, rate-limit, revoke, dashboard,
inspect, events.

Nothing imports this module; it imports the app and the supervisor. Bad
input is one line on stderr: a usage error (exit 2) from the argument types
here, or ``localq: what is wrong, what to do`` (exit 1 or 2) for an app that
cannot be loaded or a file that is not there.
"""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
import time
from datetime import datetime
from pprint import pformat
from typing import Any, Callable, NoReturn, Sequence

from .app import Localq
from .exceptions import LocalqError
from .ids import format_id
from .log import check_level, setup_worker_logging
from .status import age
from .store.records import FINAL_STATES
from .task import Task

EPILOG = "Docs: README.md. Celery users: the worker flags follow `celery worker`."
TERMINATE_WAIT = 15.0     # seconds `revoke --terminate` waits for the job's final state


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    if args.needs_app and not args.app:
        parser.error(f"{args.command} needs --app MODULE:APP (before or after the command, "
                     f"as with celery: --app=tasks:app {args.command}, or {args.command} "
                     f"-A tasks:app)")
    try:
        code = args.run(args)
        sys.stdout.flush()          # here, where a closed pipe can still be caught
        return code
    except LocalqError as exc:
        print(f"localq: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`status | head -1`): stop quietly, as Unix tools do.
        # stdout is pointed at /dev/null so that the flush at exit does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141              # 128 + SIGPIPE, what a tool killed by the signal returns


def run() -> NoReturn:
    """The ``localq`` console script (pyproject's [project.scripts])."""
    sys.exit(main())


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line, not argparse's usage block and then the error."""
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _whole(least: int) -> Callable[[str], int]:
    def whole(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"must be {least} or more, not {value}")
        return value
    return whole


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of seconds above 0, not {text}")
    return value


def _when(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 date and time "
                                         f"(e.g. 2026-12-01T08:00+00:00)") from None


def _loglevel(text: str) -> str | int:
    try:
        return check_level(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _global_args(p: argparse.ArgumentParser, default: Any) -> None:
    """--app and --db: accepted before the command (Celery's order: ``--app=tasks:app
    worker``) and after it. On a subcommand their default is SUPPRESS, so that a value
    given before the command is not overwritten by the subcommand's absent one."""
    p.add_argument("-A", "--app", default=default, metavar="MODULE:APP",
                   help="the app, as module:attribute (e.g. tasks:app)")
    p.add_argument("--db", default=default, metavar="PATH", help="use this database file "
                   "instead of the app's (for status/show/purge without the app)")


# Celery's command-line flags that mean nothing on one host: accepted, so that an existing
# command line (a systemd unit, a Procfile) starts as it is, and named in one warning at
# start. (flags, value metavar or None for a switch, why it means nothing here)
_NoOp = tuple[tuple[str, ...], str | None, str]
_SCHEDULE_FILE: _NoOp = (("-s", "--schedule"), "PATH",
                         "beat's last runs are kept in the database file")
_SCHEDULER: _NoOp = (("-S", "--scheduler"), "CLASS", "localq has one scheduler, on the file")
CELERY_WORKER_NO_OPS: list[_NoOp] = [
    (("-E", "--task-events"), None, "task events are always read from the file"),
    (("--without-gossip",), None, "there is no cluster to gossip with"),
    (("--without-mingle",), None, "there is no cluster to sync with at start"),
    (("--without-heartbeat",), None, "the heartbeat stays: it is how a dead worker's jobs "
                                     "are put back"),
    (("--prefetch-multiplier",), "N", "a child is handed work by how fast it finishes it"),
    (("--statedb",), "PATH", "revocations are kept in the database file"),
    _SCHEDULE_FILE, _SCHEDULER,
]
CELERY_BEAT_NO_OPS: list[_NoOp] = [_SCHEDULE_FILE, _SCHEDULER,
                                   (("--max-interval",), "SECONDS",
                                    "the scheduler sleeps until the next due run")]


def _no_op_dest(names: tuple[str, ...]) -> str:
    return "celery_" + names[-1].lstrip("-").replace("-", "_")


def _celery_no_ops(parser: argparse.ArgumentParser, flags: list[_NoOp]) -> None:
    for names, metavar, why in flags:
        how: dict[str, Any] = {"action": "store_true"} if metavar is None else \
            {"default": None, "metavar": metavar}
        parser.add_argument(*names, dest=_no_op_dest(names),
                            help=f"accepted for Celery's; no effect: {why}", **how)


def ignored_celery_flags(args: argparse.Namespace, flags: list[_NoOp],
                         also: Sequence[str] = ()) -> str | None:
    """The one warning naming the Celery flags given that have no effect here (and
    ``also``: others, already described)."""
    given = [f"{names[-1]} ({why})" for names, _, why in flags
             if getattr(args, _no_op_dest(names), None) not in (None, False)]
    given += also
    return f"localq ignores these Celery flags: {'; '.join(given)}" if given else None


def _autoscale(text: str) -> int:
    """Celery's --autoscale MAX,MIN (or MAX): the MAX."""
    try:
        most = int(text.split(",")[0])
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not MAX,MIN (e.g. 8,2)") from None
    if most < 1:
        raise argparse.ArgumentTypeError(f"MAX must be 1 or more, not {most}")
    return most


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m localq", epilog=EPILOG,
                     description="A task queue for one host on one SQLite file.")
    _global_args(parser, None)
    parser.set_defaults(needs_app=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def app_args(p: argparse.ArgumentParser, required: bool = True) -> None:
        """A subcommand's --app and --db; ``required``: it cannot run without --app
        (checked after parsing, since --app may come before the command)."""
        _global_args(p, argparse.SUPPRESS)
        p.set_defaults(needs_app=required)

    w = sub.add_parser("worker", help="run a worker: a supervisor and its child processes")
    app_args(w)
    w.add_argument("-c", "--concurrency", type=_whole(1), default=None,
                   help="child processes (default: worker_concurrency, else the CPU count)")
    w.add_argument("-Q", "--queues", default=None, help="comma-separated queues "
                   "(default: task_default_queue, 'default')")
    w.add_argument("-l", "--loglevel", type=_loglevel, default=None,
                   help="DEBUG, INFO (a line per job received, succeeded, retried), "
                   "WARNING (the default, unless the app sets worker_log_level, "
                   "CELERYD_LOG_LEVEL), ERROR, CRITICAL")
    w.add_argument("-n", "--hostname", default=None, metavar="NAME",
                   help="the worker's node name (self.request.hostname): %%h host, "
                   "%%n its first part, %%d its domain (default localq@%%h)")
    w.add_argument("--pidfile", default=None, metavar="PATH",
                   help="write the worker's pid here (0600); refused if a live process "
                   "holds it; removed at exit")
    w.add_argument("--logfile", default=None, metavar="PATH",
                   help="log here (appended, 0600) instead of stderr")
    w.add_argument("-D", "--detach", action="store_true",
                   help="run in the background (needs --pidfile: stop it with "
                   "kill $(cat PIDFILE))")
    w.add_argument("-O", dest="optimization", choices=("fair", "default"), default=None,
                   help="accepted for Celery's -O fair: a localq child is always handed "
                   "work by how fast it finishes it, so both mean the same")
    w.add_argument("--max-tasks-per-child", type=_whole(1), default=None, metavar="N")
    w.add_argument("--max-memory-per-child", type=_whole(1), default=None, metavar="KIB",
                   help="recycle a child whose resident memory passes this many KiB")
    w.add_argument("--time-limit", type=_seconds, default=None, metavar="SECONDS",
                   help="hard time limit")
    w.add_argument("--soft-time-limit", type=_seconds, default=None, metavar="SECONDS",
                   help="soft time limit")
    w.add_argument("-B", "--beat", action="store_true", help="also send the periodic tasks "
                   "of beat_schedule (safe in every worker: each due run is sent once)")
    w.add_argument("-P", "--pool", default=None, metavar="POOL",
                   help="Celery's pool: prefork (what localq runs) or solo (one child); "
                   "threads, gevent and eventlet are refused")
    w.add_argument("--autoscale", type=_autoscale, default=None, metavar="MAX,MIN",
                   help="accepted for Celery's: localq keeps MAX children (no autoscaling)")
    _celery_no_ops(w, CELERY_WORKER_NO_OPS)
    w.set_defaults(run=cmd_worker)
    _beat_parser(sub, app_args)

    s = sub.add_parser("status", help="what is running, waiting and failing")
    app_args(s, required=False)
    s.add_argument("--json", action="store_true", help="print it as JSON (keys: README)")
    s.set_defaults(run=cmd_status)

    sh = sub.add_parser("show", help="one job: state, result or error, every attempt")
    app_args(sh, required=False)
    sh.add_argument("id")
    sh.add_argument("--json", action="store_true", help="print it as JSON (keys: README)")
    sh.set_defaults(run=cmd_show)

    p = sub.add_parser("purge", help="delete waiting jobs")
    app_args(p, required=False)
    p.add_argument("-Q", "--queues", default=None, help="only these queues (comma-separated)")
    p.add_argument("-f", "--force", action="store_true", help="do not ask")
    p.set_defaults(run=cmd_purge)

    r = sub.add_parser("rate-limit", help="set a task's global rate limit at run time",
                       description="Set a task's rate limit for every worker on the file. "
                       "It is stored in the file: it holds across worker restarts and beats "
                       "the task's declared rate_limit until set back with 'none'.")
    app_args(r, required=False)
    r.add_argument("task", help="the task's name, e.g. tasks.add")
    r.add_argument("rate", help="N/s, N/m, N/h or a bare number (per second); 0: no limit "
                   "at all, even if the task declares one; none: back to the task's declared "
                   "rate_limit")
    r.set_defaults(run=cmd_rate_limit)

    v = sub.add_parser("revoke", help="revoke jobs (a running one with --terminate)")
    app_args(v, required=False)
    v.add_argument("ids", nargs="+")
    v.add_argument("--terminate", action="store_true",
                   help=f"kill a running job's child; waits up to {TERMINATE_WAIT:.0f}s for "
                   f"its final state")
    v.set_defaults(run=cmd_revoke)

    d = sub.add_parser("dashboard", help="a live dashboard, JSON API and /metrics (like Flower)",
                       description="Serve the dashboard, Flower's JSON API paths and Prometheus "
                       "metrics over HTTP, from the standard library. Without --app, the file "
                       "given by --db or $LOCALQ_DB is read (limits declared in code unknown).")
    app_args(d, required=False)
    d.add_argument("--address", default="127.0.0.1", help="address to bind (default "
                   "127.0.0.1: this host only)")
    d.add_argument("--port", type=_whole(0), default=5555, help="port (default 5555, "
                   "Flower's; 0: any free port)")
    d.add_argument("--readonly", action="store_true", help="serve no actions (revoke, "
                   "terminate, rate limit, purge, retry)")
    d.add_argument("--basic-auth", metavar="USER:PASSWORD", default=None,
                   help="require this user and password (HTTP basic auth)")
    d.set_defaults(run=cmd_dashboard)

    i = sub.add_parser("inspect", help="ask the workers, with Celery's names: active, "
                       "reserved, scheduled, registered, stats")
    app_args(i, required=False)
    i.add_argument("what", choices=("active", "reserved", "scheduled", "registered", "stats"))
    i.add_argument("--json", action="store_true", help="print it as JSON")
    i.set_defaults(run=cmd_inspect)

    c = sub.add_parser("call", help="send a job by task name and print its id (Celery's "
                       "`celery call`)")
    app_args(c, required=False)
    c.add_argument("name", help="the task's name, e.g. tasks.add")
    c.add_argument("-a", "--args", default="[]", help="positional arguments, a JSON list")
    c.add_argument("-k", "--kwargs", default="{}", help="keyword arguments, a JSON object")
    c.add_argument("--countdown", type=_seconds, default=None, metavar="SECONDS",
                   help="not before this many seconds from now")
    c.add_argument("--eta", type=_when, default=None, metavar="ISO8601",
                   help="not before this date and time (e.g. 2026-12-01T08:00+00:00)")
    c.add_argument("--expires", type=_seconds, default=None, metavar="SECONDS",
                   help="never starts after this many seconds from now")
    c.add_argument("-Q", "--queue", default=None, help="the queue (default: the task's)")
    c.set_defaults(run=cmd_call)

    rs = sub.add_parser("result", help="print a job's result, waiting for it (Celery's "
                        "`celery result`)")
    app_args(rs, required=False)
    rs.add_argument("id")
    rs.add_argument("-t", "--timeout", type=_seconds, default=None, metavar="SECONDS",
                    help="wait at most this long (default: as long as it takes)")
    rs.add_argument("--traceback", action="store_true", help="print a failed job's "
                    "traceback instead")
    rs.add_argument("--json", action="store_true", help="print the result as JSON")
    rs.set_defaults(run=cmd_result)

    e = sub.add_parser("events", help="print task state changes as they happen (Ctrl-C stops)")
    app_args(e, required=False)
    e.set_defaults(run=cmd_events)
    return parser


def _fail(message: str, code: int = 2) -> NoReturn:
    print(f"localq: {message}", file=sys.stderr)
    raise SystemExit(code)


def load_app(spec: str) -> Localq:
    """``module:attr`` (or ``module``, finding the one Localq in it) -> the app; anything
    else ends the command with one line saying what is wrong and what to do."""
    module_name, _, attr = spec.partition(":")
    if module_name.endswith(".py") or os.sep in module_name:
        dotted = module_name.removesuffix(".py").replace(os.sep, ".").strip(".")
        _fail(f"--app takes a module name, not a file: --app {dotted}{':' + attr if attr else ''}"
              f" (run from the folder that holds {module_name.rsplit(os.sep, 1)[-1]})")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            _fail(f"no module named {module_name!r} (from --app {spec}): run from the folder "
                  f"that holds {module_name.split('.')[0]}.py, or add that folder to PYTHONPATH")
        _fail(f"importing {module_name!r} failed: {type(exc).__name__}: {exc} (python -c "
              f"'import {module_name}' shows where)")
    except Exception as exc:  # one line, no traceback: it is the user's module
        _fail(f"importing {module_name!r} failed: {type(exc).__name__}: {exc} (python -c "
              f"'import {module_name}' shows where)")
    apps = sorted(k for k, v in vars(module).items() if isinstance(v, Localq))
    hint = f" (its Localq apps: {', '.join(apps)})" if apps else ""
    if not attr:
        if len(apps) != 1:
            _fail(f"module {module_name!r} has {len(apps)} Localq apps{hint}: name one as "
                  f"--app {module_name}:NAME")
        obj: Any = getattr(module, apps[0])
    else:
        obj = module
        for part in attr.split("."):
            if not hasattr(obj, part):
                _fail(f"module {module_name!r} has no attribute {attr!r}{hint}")
            obj = getattr(obj, part)
    if isinstance(obj, Task):
        _fail(f"{spec} is a task ({obj.name}), not a Localq app: pass the app, e.g. "
              f"--app {module_name}:{apps[0] if apps else 'app'}")
    if not isinstance(obj, Localq) and callable(obj) and not isinstance(obj, type):
        obj = obj()               # a factory function: --app tasks:make_app
    if not isinstance(obj, Localq):
        _fail(f"{spec} is a {type(obj).__name__}, not a Localq app{hint}")
    if obj.main_name == "localq":
        obj.main_name = spec if attr else f"{module_name}:{apps[0]}"
    return obj


def _existing_app(args: argparse.Namespace) -> Localq:
    """The app of a command that only reads or edits jobs: it never creates a database."""
    app = _app(args)
    if not os.path.exists(app.path):
        _fail(f"there is no localq database at {app.path}: pass --app module:app or "
              f"--db PATH (or set $LOCALQ_DB), or run from the folder that holds it", 1)
    return app


def _app(args: argparse.Namespace) -> Localq:
    app = load_app(args.app) if args.app else Localq(args.db)
    if args.db:
        app.path = args.db
    return app


def banner(app: Localq, queues: list[str], concurrency: int) -> str:
    """What the worker prints as it starts, whatever the log level (Celery's banner)."""
    tasks = sorted(app.tasks)
    return "\n".join([
        f"localq worker (pid {os.getpid()})",
        f"  app:         {app.main_name}",
        f"  database:    {app.path}",
        f"  queues:      {','.join(queues)}",
        f"  concurrency: {concurrency}",
        "",
        "[tasks]",
        *(f"  . {name}" for name in tasks),
        *(["  (none: import the modules that define them, imports=[...])"] if not tasks else []),
        "",
    ])


def cmd_worker(args: argparse.Namespace) -> int:
    if args.detach and not args.pidfile:
        _fail("--detach needs --pidfile PATH: the pid written there is how you stop the "
              "worker later (kill $(cat PATH))")
    concurrency = args.concurrency
    pool = (args.pool or "prefork").lower()
    if pool in ("solo",):
        concurrency = concurrency or 1
    elif pool not in ("prefork", "processes"):
        _fail(f"localq runs tasks in child processes only (Celery's prefork pool), not "
              f"{args.pool!r}: drop -P/--pool, or use -P prefork")
    if args.autoscale is not None and concurrency is None:
        concurrency = args.autoscale
    app = _app(args)
    from .worker.daemon import PidFile, detach, open_logfile
    from .worker.options import resolve
    from .worker.supervisor import Supervisor
    try:
        app.import_task_modules()
    except ImportError as exc:
        _fail(f"cannot import a module named in the app's imports/include: {exc}")
    app.finalize()         # autodiscover_tasks, on_after_configure: before the banner
    options = resolve(app.conf, concurrency=concurrency, queues=args.queues,
                      max_tasks_per_child=args.max_tasks_per_child,
                      max_memory_per_child=args.max_memory_per_child,
                      time_limit=args.time_limit, soft_time_limit=args.soft_time_limit,
                      loglevel=args.loglevel, hostname=args.hostname, beat=args.beat)
    log_fd = open_logfile(args.logfile) if args.logfile else None
    pidfile: PidFile | None = None
    if args.detach:
        pidfile = detach(args.pidfile, log_fd)   # returns in the daemon only
    else:
        pidfile = PidFile(args.pidfile) if args.pidfile else None
        if log_fd is not None:
            os.dup2(log_fd, sys.stderr.fileno())
    if log_fd is not None:
        os.close(log_fd)
    try:
        setup_worker_logging(options.loglevel, app.conf.worker_hijack_root_logger)
        autoscale = [] if args.autoscale is None else \
            [f"--autoscale (it keeps {options.concurrency} children)"]
        if ignored := ignored_celery_flags(args, CELERY_WORKER_NO_OPS, autoscale):
            logging.getLogger("localq.worker").warning(ignored)
        options.apply_time_limits(app.conf)
        print(banner(app, options.queues, options.concurrency), file=sys.stderr, flush=True)
        return Supervisor(app, options).run()
    finally:
        if pidfile is not None:
            pidfile.remove()


def _beat_parser(sub: Any, app_args: Callable[[argparse.ArgumentParser], None]) -> None:
    b = sub.add_parser("beat", help="send the periodic tasks of beat_schedule, without a "
                       "worker (or: worker -B)")
    app_args(b)
    b.add_argument("-l", "--loglevel", type=_loglevel, default="INFO",
                   help="DEBUG, INFO (the default: a line per run sent), WARNING, ...")
    b.add_argument("--list", action="store_true",
                   help="print each entry with its schedule, last run and next run, and exit")
    _celery_no_ops(b, CELERY_BEAT_NO_OPS)
    b.set_defaults(run=cmd_beat)


def cmd_beat(args: argparse.Namespace) -> int:
    from .beat import listing, render_listing, serve, zone_of
    from .store import Store
    app = _app(args)
    try:
        app.import_task_modules()
    except ImportError as exc:
        _fail(f"cannot import a module named in the app's imports/include: {exc}")
    if args.list:
        store = app.store if os.path.exists(app.path) else None
        print(render_listing(listing(app, store, time.time()), zone_of(app.conf)))
        return 0
    setup_worker_logging(args.loglevel, app.conf.worker_hijack_root_logger)
    if ignored := ignored_celery_flags(args, CELERY_BEAT_NO_OPS):
        logging.getLogger("localq.beat").warning(ignored)
    return serve(app, Store(app.path, app.conf.database_synchronous))


def _ago(ts: float | None, now: float) -> str:
    if not ts:
        return "-"
    secs = now - ts
    if secs < 0:
        return f"in {age(-secs)}"
    return f"{age(secs)} ago"


def cmd_status(args: argparse.Namespace) -> int:
    from .status import collect, render_status
    app = _existing_app(args)
    data = collect(app)
    print(json.dumps(data, indent=2) if args.json else render_status(app, data))
    return 0


def job_data(app: Localq, job_id: str) -> dict[str, Any] | None:
    """One job as ``show --json`` prints it (times are Unix timestamps)."""
    row = app.store.job(job_id)
    if row is None:
        return None
    result = app.AsyncResult(job_id)
    value = error = None
    if row["state"] == "SUCCESS":
        value = result.result
    elif row["state"] in ("FAILURE", "REVOKED"):
        error = repr(result.result)
    return {"id": row["id"], "task": row["task"], "state": row["state"], "queue": row["queue"],
            "priority": row["priority"], "created": row["created"],
            "eta": row["eta"] if row["eta"] and row["eta"] > 0 else None,
            "waiting": row["eta"] < 0,      # the canvas: for the job before it (parent_id)
            "parent_id": row["parent_id"], "root_id": row["root_id"],
            "started": row["started"], "done": row["done"], "retries": row["retries"],
            "result": value, "error": error, "exc_type": row["exc_type"],
            "traceback": row["traceback"],
            "attempts": [{"attempt": a["attempt"], "outcome": a["outcome"],
                          "started": a["started"], "ended": a["ended"], "pid": a["pid"],
                          "exc_type": a["exc_type"], "exc_message": a["exc_message"]}
                         for a in result.attempts]}


def cmd_show(args: argparse.Namespace) -> int:
    app = _existing_app(args)
    job = job_data(app, args.id)
    if job is None and app.store.canvas_group(args.id) is not None:
        return _show_group(app, args.id, args.json)
    if job is None:
        _fail(f"no job {args.id} in {app.path}", 1)
    if args.json:
        print(json.dumps(job, indent=2, default=repr))   # a result JSON cannot hold: repr
        return 0
    now = time.time()
    task = job["task"] or "- (an unknown id, recorded as revoked: a job sent with it never runs)"
    print(f"id:       {job['id']}\ntask:     {task}\nstate:    {job['state']}\n"
          f"queue:    {job['queue']} (priority {job['priority']})\n"
          f"created:  {stamp(job['created'])} ({_ago(job['created'], now)})\n"
          f"retries:  {job['retries']}")
    if job["eta"]:
        print(f"eta:      {stamp(job['eta'])} ({_ago(job['eta'], now)})")
    if job["parent_id"]:
        print(f"parent:   {job['parent_id']}")
    if job["waiting"]:
        print("waiting:  for the job before it in its workflow (a chain's step, a chord's "
              "body, a link)")
    if job["state"] == "SUCCESS":
        print(f"result:   {job['result']!r}")
    elif job["error"] is not None:
        print(f"error:    {job['error']}")
    print("attempts:")
    for a in job["attempts"]:
        took = f"{(a['ended'] - a['started']):.3f}s" if a["ended"] and a["started"] else "-"
        print(f"  #{a['attempt']}  {a['outcome']:<8} started {stamp(a['started'])}  took {took}"
              f"  pid {a['pid'] or '-'}  {a['exc_type'] or ''} {a['exc_message'] or ''}".rstrip())
    if job["traceback"]:
        print("traceback:\n" + job["traceback"].rstrip())
    return 0


def group_data(app: Localq, group_id: str) -> dict[str, Any]:
    """A group or a chord's header as ``show --json`` prints it."""
    total, remaining, body = app.store.canvas_group(group_id) or (0, None, None)
    states = app.store.group_states(group_id)
    members = [custom or format_id(seq) for seq, custom in app.store.group_members(group_id)]
    data: dict[str, Any] = {"id": group_id, "kind": "chord" if body is not None else "group",
                            "total": total, "done": sum(n for s, n in states.items()
                                                         if s in FINAL_STATES),
                            "states": states, "members": members}
    if body is not None:
        body_id = format_id(body)
        row = app.store.job(body_id)
        data["body"] = {"id": row["id"] if row else body_id,
                        "state": row["state"] if row else "deleted"}
    return data


def _show_group(app: Localq, group_id: str, as_json: bool) -> int:
    data = group_data(app, group_id)
    if as_json:
        print(json.dumps(data, indent=2))
        return 0
    states = ", ".join(f"{n} {s}" for s, n in sorted(data["states"].items()))
    print(f"id:       {group_id}\nkind:     {data['kind']}\n"
          f"done:     {data['done']} of {data['total']} ({states or 'none sent'})")
    if "body" in data:
        print(f"body:     {data['body']['id']} {data['body']['state']}")
    shown = data["members"][:20]
    member_states = app.store.states(shown)
    print("members:")
    for member in shown:
        print(f"  {member}  {member_states.get(member, '-')}")
    if len(data["members"]) > len(shown):
        print(f"  ... and {len(data['members']) - len(shown)} more")
    return 0


def stamp(t: float | None) -> str:
    return datetime.fromtimestamp(t).isoformat(" ", "seconds") if t else "-"


def cmd_purge(args: argparse.Namespace) -> int:
    app = _existing_app(args)
    queues = [q.strip() for q in args.queues.split(",")] if args.queues else None
    where = f"queue(s) {', '.join(queues)}" if queues else "all queues"
    if not args.force:
        if not sys.stdin.isatty():
            print("localq: purge deletes waiting jobs; pass -f to confirm", file=sys.stderr)
            return 2
        answer = input(f"Delete every waiting job in {where} of {app.path}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing deleted")
            return 1
    count = app.control.purge(queues)
    print(f"purged {count} waiting job(s) from {where}")
    return 0


def cmd_rate_limit(args: argparse.Namespace) -> int:
    app = _app(args)
    app.control.rate_limit(args.task, None if args.rate.lower() == "none" else args.rate)
    print(f"rate limit of {args.task}: {args.rate} (global, for every worker on {app.path})")
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    app = _existing_app(args)
    known = {job_id: app.store.state(job_id) is not None for job_id in args.ids}
    app.control.revoke(args.ids, terminate=args.terminate)
    for job_id in args.ids:
        if not known[job_id]:
            print(f"{job_id}: unknown id, recorded as revoked (a job sent with it never runs)")
            continue
        state = app.store.state(job_id)
        if state == "STARTED" and args.terminate:
            state = _final_state(app, job_id, TERMINATE_WAIT) or \
                f"STARTED (still, after {TERMINATE_WAIT:.0f}s: is its worker running?)"
        elif state == "STARTED":
            state = "STARTED (running: it finishes; --terminate kills it)"
        print(f"{job_id}: {state}")
    return 0


def _final_state(app: Localq, job_id: str, timeout: float) -> str | None:
    """Poll until the job is in a final state; None after ``timeout`` seconds."""
    from .store.records import FINAL_STATES
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        state = app.store.state(job_id)
        if state in FINAL_STATES or state is None:
            return state
        if time.monotonic() >= deadline:
            return None
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def cmd_call(args: argparse.Namespace) -> int:
    call_args, call_kwargs = _json_arg("--args", args.args, list), \
        _json_arg("--kwargs", args.kwargs, dict)
    options = {k: v for k, v in (("countdown", args.countdown), ("eta", args.eta),
                                 ("expires", args.expires), ("queue", args.queue))
               if v is not None}
    print(_app(args).send_task(args.name, call_args, call_kwargs, **options).id)
    return 0


def _json_arg(flag: str, text: str, kind: type) -> Any:
    try:
        value = json.loads(text)
    except ValueError as exc:
        _fail(f"{flag} is not JSON ({exc}): e.g. {flag} '[2, 2]'" if kind is list else
              f"{flag} is not JSON ({exc}): e.g. {flag} '{{\"x\": 1}}'")
    if not isinstance(value, kind):
        _fail(f"{flag} must be a JSON {'list' if kind is list else 'object'}, "
              f"not {type(value).__name__}")
    return value


def cmd_result(args: argparse.Namespace) -> int:
    app = _existing_app(args)
    if app.store.state(args.id) is None:
        _fail(f"no job {args.id} in {app.path}", 1)
    result = app.AsyncResult(args.id)
    try:
        value = result.get(timeout=args.timeout, propagate=False)
    except TimeoutError:
        _fail(f"job {args.id} is still {result.state} after {args.timeout}s", 1)
    if args.traceback:
        print(result.traceback or f"job {args.id} ended {result.state}: no traceback")
        return 0
    if result.state != "SUCCESS":
        _fail(f"job {args.id} ended {result.state}: {type(value).__name__}: {value} "
              f"(--traceback prints where)", 1)
    print(json.dumps(value, default=repr) if args.json else pformat(value))
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    from .dashboard.server import run
    return run(_existing_app(args), args.address, args.port, args.readonly, args.basic_auth)


def cmd_inspect(args: argparse.Namespace) -> int:
    from .inspect import inspect, render
    answer = inspect(_existing_app(args), args.what)
    print(json.dumps(answer, indent=2, default=repr) if args.json else render(answer))
    return 0


def cmd_events(args: argparse.Namespace) -> int:
    from .inspect import events
    return events(_existing_app(args), sys.stdout)
