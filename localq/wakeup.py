"""Doorbells: best-effort wake-ups between processes that share a database.

Each waiting process binds a Unix datagram socket in the database's wake-up
folder (``<db>.d/``, mode 0700). Producers ring the supervisors' bells
(``w<pid>``) after an enqueue; supervisors ring the waiters' bells (``g...``)
after writing outcomes. A ring never blocks and never fails the caller: a
full or dead bell is skipped (and a dead one removed), because every sleeper
also re-checks the database on a timer. So a lost ring costs latency, never
correctness.
"""
from __future__ import annotations

import errno
import itertools
import os
import socket
import threading
import time

# sun_path holds 108 bytes on Linux; leave room for the bell's own name.
_MAX_FOLDER = 90
_counter = itertools.count()
RELIST = 0.05
REFRESH = 1.0


def wake_folder(db_path: str) -> str:
    folder = os.path.abspath(db_path) + ".d"
    if len(folder.encode()) <= _MAX_FOLDER:
        return folder
    import hashlib  # rare (a deep path), and ~3 ms to import: only when needed
    import tempfile
    digest = hashlib.sha1(folder.encode()).hexdigest()[:16]
    return os.path.join(tempfile.gettempdir(), f"localq-{os.getuid()}", digest)


def _ensure_folder(folder: str) -> None:
    parent = os.path.dirname(folder)
    if not folder.endswith(".d") and not os.path.isdir(parent):   # the temp-dir fallback
        os.makedirs(parent, mode=0o700, exist_ok=True)
    try:
        os.mkdir(folder, 0o700)
    except FileExistsError:
        pass


class Doorbell:
    """A bell of one's own: ``fileno()`` turns readable when someone rings."""

    def __init__(self, folder: str, name: str) -> None:
        self.folder = folder
        self.path = os.path.join(folder, name)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        for _ in range(3):
            _ensure_folder(folder)
            try:
                if os.path.exists(self.path):
                    os.unlink(self.path)
                self.sock.bind(self.path)
                break
            except FileNotFoundError:   # the folder was removed under us: make it again
                continue

    def fileno(self) -> int:
        return self.sock.fileno()

    def drain_messages(self) -> list[bytes]:
        messages = []
        while True:
            try:
                messages.append(self.sock.recv(64))
            except OSError:   # BlockingIOError: nothing more to read
                return messages

    def close(self) -> None:
        try:
            os.unlink(self.path)
        except OSError:
            pass
        self.sock.close()
        try:
            os.rmdir(self.folder)      # only succeeds when no other bell is left
        except OSError:
            pass


class Ringer:
    """Rings every bell whose name starts with ``prefix`` in a folder.

    The folder listing is cached: re-read when the folder's mtime changes, at
    least every REFRESH seconds (an mtime can stay the same when one bell goes
    and another comes within its granularity), and at once when a cached bell
    turns out to be dead, so that its successor is rung in the same call.
    """

    def __init__(self, folder: str, prefix: str) -> None:
        self.folder = folder
        self.prefix = prefix
        self._mtime: int | None = None
        self._checked = 0.0
        self._listed = 0.0
        self._targets: list[str] = []
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()

    def ring(self, message: bytes = b"!") -> None:
        try:
            with self._lock:
                self._ring(message)
        except Exception:
            pass    # best effort, by design

    def _ring(self, message: bytes) -> None:
        now = time.monotonic()
        # Look at the folder at most every RELIST seconds: a bell that appears
        # meanwhile belongs to a process that checks the database when it starts.
        if now - self._checked >= RELIST:
            self._checked = now
            try:
                mtime = os.stat(self.folder).st_mtime_ns
            except OSError:
                self._targets, self._mtime = [], None
                return
            if mtime != self._mtime or now - self._listed >= REFRESH:
                self._mtime = mtime
                self._list(now)
        if self._targets and not self._send_all(message):
            self._list(now)               # a bell was dead: ring whoever is there now
            self._send_all(message)

    def _list(self, now: float) -> None:
        self._listed = now
        try:
            names = os.listdir(self.folder)
        except OSError:
            names = []
        self._targets = [os.path.join(self.folder, n) for n in names
                         if n.startswith(self.prefix)]

    def _send_all(self, message: bytes) -> bool:
        """Ring every cached bell; False if one of them was dead (and removed)."""
        if self._sock is None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sock.setblocking(False)
        all_alive = True
        for target in self._targets:
            try:
                self._sock.sendto(message, target)
            except (BlockingIOError, InterruptedError):
                pass          # its queue is full: it is awake already
            except OSError as exc:
                if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
                    all_alive = False
                    try:      # nobody reads it: its owner died without cleaning up
                        os.unlink(target)
                    except OSError:
                        pass
        return all_alive

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def waiter_name() -> str:
    return f"g{os.getpid()}.{next(_counter)}"


def supervisor_name() -> str:
    return f"w{os.getpid()}.{next(_counter)}"
