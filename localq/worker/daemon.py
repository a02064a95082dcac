"""The worker as a daemon: ``--pidfile``, ``--logfile`` and ``-D/--detach`` (Celery's flags).

A pidfile is created 0600 with O_EXCL and O_NOFOLLOW, so that it is never
written through a link or over another file. One that exists already is refused
while the process it names is alive; a stale one (its process gone) is replaced
only if it is a regular file of this user holding nothing but a pid, so that
nothing localq did not write is unlinked. At exit it is removed only if it is
still the file this process created and still holds its pid.

``--detach`` forks twice (the worker is then no child of the shell, in a session
of its own, with stdin on /dev/null and stdout/stderr on the logfile or
/dev/null). The command returns once the daemon has written its pidfile, with
the daemon's error instead if it could not (another worker holds the pidfile).
"""
from __future__ import annotations

import os
import stat
import sys

from ..exceptions import LocalqError


class PidFile:
    """This process's pidfile: created at once, removed by :meth:`remove` if still ours."""

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        self.pid = os.getpid()
        self.identity: tuple[int, int] | None = None
        self._create()

    def _create(self) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        for _ in range(3):
            try:
                fd = os.open(self.path, flags, 0o600)
            except FileExistsError:
                self._clear_stale()
                continue
            except OSError as exc:
                raise LocalqError(f"cannot create the pidfile {self.path}: {exc.strerror} "
                                  f"(choose a --pidfile in a folder you can write)") from None
            try:
                os.write(fd, f"{self.pid}\n".encode())
                st = os.fstat(fd)
                self.identity = (st.st_dev, st.st_ino)
            finally:
                os.close(fd)
            return
        raise LocalqError(f"cannot create the pidfile {self.path}: another process keeps "
                          f"creating it")

    def _clear_stale(self) -> None:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid():
            raise LocalqError(f"the pidfile {self.path} exists and is not a regular file of "
                              f"yours: localq leaves it alone; choose another --pidfile")
        pid = read_pid(self.path)
        if pid is None:
            raise LocalqError(f"the pidfile {self.path} exists and does not hold a pid: "
                              f"localq leaves it alone; remove it or choose another --pidfile")
        if _alive(pid):
            raise LocalqError(f"the pidfile {self.path} names process {pid}, which is "
                              f"running: stop it first (kill {pid}) or choose another "
                              f"--pidfile")
        os.unlink(self.path)        # stale: a pid of this user's whose process is gone

    def remove(self) -> None:
        """Remove the pidfile if it is still the one this process made, holding its pid."""
        if os.getpid() != self.pid or self.identity is None:
            return
        try:
            st = os.lstat(self.path)
            if (st.st_dev, st.st_ino) == self.identity and read_pid(self.path) == self.pid:
                os.unlink(self.path)
        except OSError:
            pass
        self.identity = None


def read_pid(path: str) -> int | None:
    """The pid a pidfile holds, or None if it holds anything else."""
    try:
        with open(path, "rb") as f:
            text = f.read(64).strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True             # another user's live process
    return True


def open_logfile(path: str) -> int:
    """``--logfile``: opened for appending, created 0600, never through a link."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW
                     | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise LocalqError(f"cannot open the logfile {path}: {exc.strerror}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid():
        os.close(fd)
        raise LocalqError(f"the logfile {path} is not a regular file of yours: choose "
                          f"another --logfile")
    return fd


def detach(pidfile: str, log_fd: int | None) -> PidFile:
    """Fork twice; return in the daemon, with its pidfile written. The calling process
    exits (0 once the daemon wrote its pidfile, 1 with the daemon's error)."""
    read_end, write_end = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    if os.fork() > 0:                    # the command: wait for the daemon's word
        os.close(write_end)
        data = b""
        while chunk := os.read(read_end, 4096):
            data += chunk
        os.close(read_end)
        text = data.decode(errors="replace").strip()
        if text.startswith("ok "):
            print(f"localq worker detached: pid {text[3:]} (in {os.path.abspath(pidfile)})")
            sys.exit(0)
        print(f"localq: {text.removeprefix('error: ') or 'the detached worker died at once'}",
              file=sys.stderr)
        sys.exit(1)
    os.close(read_end)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)                      # the intermediate: the daemon is nobody's child
    try:
        pid_file = PidFile(pidfile)
    except BaseException as exc:
        os.write(write_end, f"error: {exc}".encode())
        os._exit(1)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(log_fd if log_fd is not None else null, 1)
    os.dup2(log_fd if log_fd is not None else null, 2)
    os.close(null)
    os.write(write_end, f"ok {os.getpid()}\n".encode())
    os.close(write_end)
    return pid_file
