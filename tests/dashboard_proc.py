"""``python -m localq dashboard`` as a real subprocess, for the HTTP and browser tests."""
from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from typing import Any

from conftest import spawn_localq, wait_for


class DashboardProcess:
    def __init__(self, db_path: str, *args: str) -> None:
        self.proc, self.log_path = spawn_localq(db_path, "dashboard", "--port", "0", *args)
        found = wait_for(lambda: re.search(r"dashboard on (http://\S+/)", self.stderr()) or
                         self.proc.poll() is not None, what="the dashboard to listen")
        assert self.proc.poll() is None, self.stderr()
        self.url = found.group(1).rstrip("/")   # type: ignore[union-attr]

    def stderr(self) -> str:
        with open(self.log_path) as f:
            return f.read()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)

    def request(self, path: str, data: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict, bytes]:
        req = urllib.request.Request(self.url + path, data=data, headers=headers or {},
                                     method="POST" if data is not None else "GET")
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    def get(self, path: str, **headers: str) -> Any:
        status, _, body = self.request(path, headers=headers)
        assert status == 200, (status, body)
        return json.loads(body)

    def token(self) -> str:
        _, _, body = self.request("/")
        match = re.search(rb'name="localq-token" content="([^"]*)"', body)
        assert match
        return match.group(1).decode()
