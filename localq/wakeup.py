"""Doorbells: best-effort wake-ups between processes that share a database.

Each waiting process binds a Unix datagram socket in the database's wake-up
folder (``<db>.d/``, mode 0700). Producers ring the supervisors' bells
(``w<pid>``) after an enqueue; supervisors ring the waiters' bells (``g...``)
after writing outcomes. A ring never blocks and never fails the caller: a
full or dead bell is skipped (and a dead one removed), because every sleeper
also re-checks the database on a timer. So a lost ring costs latency, never
correctness.

A supervisor's ring may carry the outcomes it announces (``outcomes_message``): a
waiter whose job is among them skips its read of the file. Only outcomes that the
supervisor's transaction wrote are carried, and the ring comes after its commit, so
what a waiter takes from it is what the file holds; a waiter whose job is not carried
reads the file as after any ring.

Another local user may have made the folder, or put a symlink in its place: it
is used only when ``lstat`` shows a directory of this user with mode 0700 (made
here with mkdir 0700 when missing), checked again whenever a ringer looks at
it; otherwise it is left alone, with one warning, and everyone polls. Only
sockets named by our scheme are ever removed, and only inside such a folder.
"""
from __future__ import annotations

import errno
import functools
import itertools
import logging
import os
import select
import socket
import stat
import struct
import threading
import time
from typing import Iterable, Iterator

# sun_path holds 108 bytes on Linux; leave room for the bell's own name.
_MAX_FOLDER = 90
_counter = itertools.count()
RELIST = 0.05
REFRESH = 1.0
CONNECTED = 4
# A producer sending into its inbox rings the supervisors at most once per
# INBOX_RING_EVERY; a supervisor that hears an inbox ring looks at the inboxes every
# INBOX_RING_EVERY until INBOX_WATCH has passed since it heard the last one, so a job
# sent without a ring (its producer rang less than INBOX_RING_EVERY before) is copied as
# soon as if it had rung. A stream of delay() then costs a ring per INBOX_RING_EVERY, not
# one system call (and a wake-up to read it) per job. INBOX_WATCH must exceed
# INBOX_RING_EVERY by a look's interval, with room.
INBOX_RING_EVERY = 0.0005
INBOX_WATCH = 0.002
# A ring that carries outcomes: b"S", then per job its seq and the byte lengths of its
# task's name, serializer and encoded result (_CARRIED), then those three texts.
CARRY_MAX = 2048         # bytes in such a ring, at most; a bell reads this much at once
_CARRIED = struct.Struct("<QHHI")
_warned: set[str] = set()


@functools.lru_cache(maxsize=256)
def wake_folder(db_path: str) -> str:
    """The wake-up folder of a database. The path is resolved once (symlinks
    followed) so that every process using the file, by whatever path, agrees."""
    folder = os.path.realpath(db_path) + ".d"
    if len(folder.encode()) <= _MAX_FOLDER:
        return folder
    import hashlib  # rare (a deep path), and ~3 ms to import: only when needed
    import tempfile
    digest = hashlib.sha1(folder.encode()).hexdigest()[:16]
    return os.path.join(tempfile.gettempdir(), f"localq-{os.geteuid()}", digest)


def _not_private(path: str, st: os.stat_result | None = None) -> str | None:
    """Why ``path`` (its ``lstat``) is not a folder of this user, mode 0700, not a
    symlink: another user could have made or replaced it. None when it is."""
    try:
        st = st or os.lstat(path)
    except OSError as exc:
        return exc.strerror or "missing"
    if stat.S_ISLNK(st.st_mode):
        return "a symlink"
    if not stat.S_ISDIR(st.st_mode):
        return "not a folder"
    if st.st_uid != os.geteuid():
        return f"owned by uid {st.st_uid}"
    if stat.S_IMODE(st.st_mode) != 0o700:
        return f"mode {stat.S_IMODE(st.st_mode):o}, not 700"
    return None


def _refuse(folder: str, path: str, why: str) -> bool:
    """Log once per wake-up folder why it is not used; False."""
    if folder not in _warned:
        _warned.add(folder)
        logging.getLogger("localq").warning(
            "localq does not use the wake-up folder %s: %s is %s, and it must be a private "
            "folder of this user. Workers and get() poll the database instead (slower). "
            "Remove it if you do not know who made it.", folder, path, why)
    return False


def safe_folder(folder: str, st: os.stat_result | None = None, create: bool = False) -> bool:
    """True when the wake-up folder (made here if ``create`` and missing, mode 0700)
    and, for the temp-dir fallback, its per-user parent are private to this user."""
    levels = [folder] if folder.endswith(".d") else [os.path.dirname(folder), folder]
    for path in levels:
        if create:
            try:
                os.mkdir(path, 0o700)
            except FileExistsError:
                pass
            except OSError:
                return False   # a read-only folder, say: no wake-ups, the timers still run
        why = _not_private(path, st if path == folder else None)
        if why is not None:
            return _refuse(folder, path, why) if create or os.path.lexists(path) else False
    return True


def _bell_name(name: str, prefix: str) -> bool:
    """Our naming scheme: a prefix letter, then ``<pid>.<n>``."""
    head, dot, tail = name[len(prefix):].partition(".")
    return name.startswith(prefix) and head.isdigit() and dot == "." and tail.isdigit()


def _unlink_socket(path: str) -> None:
    """Remove ``path`` if it is a socket (never a file, a folder or a symlink)."""
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    except OSError:
        pass


class Doorbell:
    """A bell of one's own: ``fileno()`` turns readable when someone rings.

    When the folder is not safe to use the bell is never bound: it never rings,
    and its owner's timer does the work."""

    def __init__(self, folder: str, name: str) -> None:
        self.folder = folder
        self.path = os.path.join(folder, name)
        self.pid = os.getpid()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.bound = False
        for _ in range(3):
            if not safe_folder(folder, create=True):
                break
            try:
                _unlink_socket(self.path)       # a dead process's bell of the same name
                self.sock.bind(self.path)
                self.bound = True
                break
            except FileNotFoundError:   # the folder was removed under us: make it again
                continue
            except OSError:
                break
        self.poller = select.poll()     # not select(): descriptors above 1024 happen
        self.poller.register(self.sock.fileno(), select.POLLIN)

    def fileno(self) -> int:
        return self.sock.fileno()

    def drain_messages(self) -> list[bytes]:
        messages = []
        while True:
            try:
                messages.append(self.sock.recv(CARRY_MAX))
            except OSError:   # BlockingIOError: nothing more to read
                return messages

    def close(self) -> None:
        if self.sock.fileno() < 0:
            return
        self.sock.close()
        if self.bound:
            _unlink_socket(self.path)
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

    def __init__(self, folder: str, prefix: str, skip: str | None = None) -> None:
        self.folder = folder
        self.prefix = prefix
        self.skip = skip            # a bell of one's own, not rung
        self._mtime: int | None = None
        self._checked = 0.0
        self._listed = 0.0
        self._targets: list[str] = []
        self._sock: socket.socket | None = None
        # A socket connected to each of the first CONNECTED bells: send() on it skips
        # the path lookup of sendto(), ~1 us of a delay()'s ~30.
        self._connected: dict[str, socket.socket] = {}
        self._lock = threading.Lock()

    def ring(self, message: bytes = b"!") -> None:
        try:
            with self._lock:
                self._ring(message)
        except Exception:
            pass    # best effort, by design

    def has_bells(self) -> bool:
        """Is there a bell to ring (as of the last look at the folder, at most RELIST
        ago)? Then the folder is private to this user, too."""
        try:
            with self._lock:
                self._look(time.monotonic())
                return bool(self._targets)
        except Exception:
            return False

    def _look(self, now: float) -> None:
        # Look at the folder at most every RELIST seconds: a bell that appears
        # meanwhile belongs to a process that checks the database when it starts.
        if now - self._checked >= RELIST:
            self._checked = now
            try:
                st = os.lstat(self.folder)
            except OSError:
                st = None
            if st is None or not safe_folder(self.folder, st):
                self._targets, self._mtime = [], None
                self._disconnect()
                return
            mtime = st.st_mtime_ns
            if mtime != self._mtime or now - self._listed >= REFRESH:
                self._mtime = mtime
                self._list(now)

    def _ring(self, message: bytes) -> None:
        now = time.monotonic()
        self._look(now)
        if self._targets and not self._send_all(message):
            self._list(now)               # a bell was dead: ring whoever is there now
            self._send_all(message)

    def _list(self, now: float) -> None:
        self._listed = now
        try:
            names = os.listdir(self.folder)
        except OSError:
            names = []
        self._targets = [path for n in names if _bell_name(n, self.prefix)
                         and (path := os.path.join(self.folder, n)) != self.skip]
        self._disconnect(keep=self._targets)

    def _send_all(self, message: bytes) -> bool:
        """Ring every cached bell; False if one of them was dead (and removed)."""
        all_alive = True
        for target in self._targets:
            try:
                if self._send_connected(target, message):
                    continue
                if self._sock is None:
                    self._sock = _datagram_socket()
                self._sock.sendto(message, target)
            except (BlockingIOError, InterruptedError):
                pass          # its queue is full: it is awake already
            except OSError as exc:
                if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
                    all_alive = False
                    _unlink_socket(target)   # nobody reads it: its owner died uncleanly
        return all_alive

    def _send_connected(self, target: str, message: bytes) -> bool:
        """Ring ``target`` on a socket connected to it (connected now if there is room);
        False when that failed or there is no room, and sendto() is to ring it. A
        connected socket that fails is closed: its peer may be gone while another bell
        now has its name, so only sendto() by name may judge the name dead."""
        sock = self._connected.get(target)
        if sock is None:
            if len(self._connected) >= CONNECTED:
                return False
            sock = self._connected[target] = _datagram_socket()
            try:
                sock.connect(target)
            except OSError:
                self._disconnect(drop=target)
                return False
        try:
            sock.send(message)
        except (BlockingIOError, InterruptedError):
            pass              # its queue is full: it is awake already
        except OSError:
            self._disconnect(drop=target)
            return False
        return True

    def _disconnect(self, keep: list[str] | None = None, drop: str | None = None) -> None:
        """Close the connected sockets of bells not in ``keep`` (all, if None), or of
        ``drop`` alone."""
        gone = [drop] if drop is not None else [
            t for t in self._connected if keep is None or t not in keep]
        for target in gone:
            sock = self._connected.pop(target, None)
            if sock is not None:
                sock.close()

    def close(self) -> None:
        self._disconnect()
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def outcomes_message(outcomes: Iterable[tuple[int, str, str, str]]) -> bytes:
    """A ring that carries these SUCCESS outcomes, (seq, task, serializer, encoded
    result) each, as many as fit in CARRY_MAX; a plain ring if none fits."""
    parts, size = [b"S"], 1
    for seq, task, serializer, result in outcomes:
        try:
            texts = task.encode(), serializer.encode(), result.encode()
        except UnicodeEncodeError:
            continue
        size += _CARRIED.size + sum(map(len, texts))
        if size > CARRY_MAX:
            break
        parts += (_CARRIED.pack(seq, *map(len, texts)), *texts)
    return b"".join(parts) if len(parts) > 1 else b"!"


def carried_outcomes(message: bytes) -> Iterator[tuple[int, str, str, str]]:
    """The outcomes a ring carries (see outcomes_message); nothing for a plain ring or
    one that does not parse."""
    if message[:1] != b"S":
        return
    pos, end = 1, len(message)
    try:
        while pos < end:
            seq, *sizes = _CARRIED.unpack_from(message, pos)
            pos += _CARRIED.size
            texts = []
            for size in sizes:
                texts.append(message[pos:pos + size].decode())
                pos += size
            if pos > end:
                return
            yield seq, texts[0], texts[1], texts[2]
    except (struct.error, UnicodeDecodeError):
        return


def _datagram_socket() -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.setblocking(False)
    return sock


def waiter_name() -> str:
    return f"g{os.getpid()}.{next(_counter)}"


def supervisor_name() -> str:
    return f"w{os.getpid()}.{next(_counter)}"
