"""The embedded worker: ``with app.worker(concurrency=2): ...`` in a script or a test.

The supervisor runs in a forked copy of the calling process, so tasks
defined anywhere, ``__main__`` included, are known to it without any import
guard, and it starts in milliseconds. It watches a pipe from its parent and
shuts down (putting jobs back) if the parent dies; leaving the block asks it
for a warm shutdown and waits until it and its children are gone.
"""
from __future__ import annotations

import os
import select
import signal
import sys
import time
import traceback
from typing import TYPE_CHECKING, Any, Iterable

from ..exceptions import LocalqError
from ..log import setup_worker_logging
from .options import resolve

if TYPE_CHECKING:
    from .options import WorkerApp

START_TIMEOUT = 30.0


class EmbeddedWorker:
    def __init__(self, app: WorkerApp, concurrency: int | None = None,
                 queues: Iterable[str] | str | None = None, *,
                 max_tasks_per_child: int | None = None,
                 max_memory_per_child: int | None = None, time_limit: float | None = None,
                 soft_time_limit: float | None = None, loglevel: str | int | None = None,
                 hostname: str | None = None, beat: bool = False) -> None:
        self.app = app
        self.options = resolve(app.conf, concurrency=concurrency, queues=queues,
                               max_tasks_per_child=max_tasks_per_child,
                               max_memory_per_child=max_memory_per_child,
                               time_limit=time_limit, soft_time_limit=soft_time_limit,
                               loglevel=loglevel, hostname=hostname, beat=beat)
        self.pid: int | None = None
        self._parent_w: int | None = None

    def __enter__(self) -> EmbeddedWorker:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def start(self) -> EmbeddedWorker:
        if self.pid is not None:
            return self
        if self.options.beat:       # a bad entry is the caller's error, not the fork's
            from ..beat import entries_of
            entries_of(self.app)
        parent_r, parent_w = os.pipe()
        ready_r, ready_w = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            os.close(parent_w)
            os.close(ready_r)
            self._run_supervisor(parent_r, ready_w)     # never returns
        os.close(parent_r)
        os.close(ready_w)
        self.pid, self._parent_w = pid, parent_w
        try:
            self._wait_ready(ready_r)
        finally:
            os.close(ready_r)
        return self

    def _run_supervisor(self, parent_r: int, ready_w: int) -> None:
        code = 70
        try:
            from .supervisor import Supervisor
            setup_worker_logging(self.options.loglevel,
                                 self.app.conf.worker_hijack_root_logger)
            self.options.apply_time_limits(self.app.conf)
            code = Supervisor(self.app, self.options, parent_fd=parent_r,
                              ready_fd=ready_w).run()
        except BaseException as exc:  # noqa: BLE001 - report to the parent, never unwind
            try:
                os.write(ready_w, f"error: {exc}\n".encode())
                traceback.print_exc()
            except BaseException:
                pass
        finally:
            try:
                sys.stderr.flush()
            except BaseException:
                pass
            os._exit(code)

    def _wait_ready(self, ready_r: int) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        data = b""
        while b"\n" not in data:
            remaining = deadline - time.monotonic()
            poller = select.poll()     # not select(): descriptors above 1024 happen
            poller.register(ready_r, select.POLLIN)
            if not poller.poll(max(0.0, remaining) * 1000):
                self.stop(timeout=5)
                raise LocalqError(f"the embedded worker did not start within {START_TIMEOUT}s")
            chunk = os.read(ready_r, 4096)
            if not chunk:
                break
            data += chunk
        if not data.startswith(b"ready"):
            self._reap(timeout=5)
            message = data.decode(errors="replace").strip().removeprefix("error: ")
            raise LocalqError(f"the embedded worker failed to start: "
                              f"{message or 'it exited at once'}")

    def stop(self, timeout: float | None = None) -> None:
        """Warm shutdown: finish running jobs, then stop. Past ``timeout``, cold."""
        if self.pid is None:
            return
        try:
            os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        if not self._reap(timeout):
            try:
                os.kill(self.pid, signal.SIGTERM)     # a second signal: cold shutdown
            except ProcessLookupError:
                pass
            if not self._reap(10.0):
                os.kill(self.pid, signal.SIGKILL)
                self._reap(None)
        if self._parent_w is not None:
            os.close(self._parent_w)
            self._parent_w = None
        self.pid = None

    def _reap(self, timeout: float | None) -> bool:
        assert self.pid is not None
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.0005
        while True:
            try:
                done, _ = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                return True
            if done:
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    @property
    def alive(self) -> bool:
        if self.pid is None:
            return False
        try:
            return os.waitpid(self.pid, os.WNOHANG) == (0, 0)
        except ChildProcessError:
            return False
