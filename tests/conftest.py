"""Shared fixtures: an app on a fresh database, and helpers to run real workers."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

sys.path.insert(0, str(HERE))

import sample_tasks  # noqa: E402


def wait_for(predicate: Callable[[], object], timeout: float = 20.0, what: str = "") -> object:
    """Poll until predicate() is truthy; fail after a generous deadline."""
    deadline = time.monotonic() + timeout
    delay = 0.002
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def need(present: object, what: str, how: str) -> None:
    """Skip when ``what`` is missing, saying how to get it; fail instead under CI."""
    if present:
        return
    message = f"{what} is not installed: {how}"
    if os.environ.get("CI"):
        pytest.fail(f"{message} (CI is set, so this fails instead of skipping)")
    pytest.skip(message)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:   # a zombie is dead for our purposes
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def child_pids(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    return str(tmp_path / "jobs.db")


@pytest.fixture
def app(db_path: str) -> Iterator[sample_tasks.Localq]:
    """The sample app pointed at a fresh database for this test."""
    a = sample_tasks.app
    old = a.path
    a.path = db_path
    saved = dict(a.conf)
    try:
        yield a
    finally:
        a.close()
        a.conf.update({k: v for k, v in saved.items()})
        a.path = old


def spawn_localq(db_path: str, command: str, *args: str) -> tuple[subprocess.Popen, str]:
    """``python -m localq COMMAND ARGS`` on ``db_path`` in a session of its own, with the
    tests' folder importable; its stderr goes to a log file beside the database.
    Returns the process and the log's path."""
    env = dict(os.environ, LOCALQ_DB=db_path,
               PYTHONPATH=os.pathsep.join([str(HERE), str(ROOT),
                                           os.environ.get("PYTHONPATH", "")]))
    log_path = f"{db_path}.{command}-{time.monotonic_ns()}.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "localq", command, *args],
                                env=env, stderr=log, stdout=subprocess.DEVNULL,
                                start_new_session=True)
    return proc, log_path


class WorkerProcess:
    """``python -m localq worker`` as a real subprocess, stopped by pid."""

    def __init__(self, db_path: str, *args: str) -> None:
        self.proc, self.log_path = spawn_localq(db_path, "worker", "--app", "sample_tasks:app",
                                                "--loglevel", "INFO", *args)
        self.pid = self.proc.pid

    def ready(self) -> WorkerProcess:
        wait_for(lambda: "localq worker ready" in self.stderr(), what="the worker to be ready")
        return self

    def children(self) -> list[int]:
        return child_pids(self.pid)

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def wait(self, timeout: float = 30.0) -> int:
        return self.proc.wait(timeout)

    def stderr(self) -> str:
        with open(self.log_path) as f:
            return f.read()

    def kill_all(self) -> None:
        kids = self.children()
        if self.proc.poll() is None:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)
        for k in kids:
            try:
                os.kill(k, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture
def start_worker(db_path: str) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start(*args: str, db: str | None = None) -> WorkerProcess:
        w = WorkerProcess(db or db_path, *args)
        started.append(w)
        return w

    yield start
    for w in started:
        w.kill_all()
