"""Upkeep of a worker: its heartbeat, recovering the jobs of dead workers, expiring
results, and checkpointing the WAL.

A component of the Supervisor: each step is small and bounded, so that upkeep
never stalls the pool, and returns what it found; the supervisor decides what
to do about it (rejoin when presumed dead, claim when jobs came back). The one
step that is not small, copying the WAL back into the database file (it ends in
an fsync), runs in a thread of its own: see :class:`Checkpointer`.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Iterable, TypeVar

from ..exceptions import DatabaseError, WorkerLostError
from ..serializer import encode_exception
from ..store.inbox import process_start_time
from ..store.schema import WAL_FILE_KEPT

if TYPE_CHECKING:
    from ..config import Settings
    from ..store import Store
    from .pool import Child
    from .tally import Tally
    from .timers import Now

log = logging.getLogger("localq.worker")
T = TypeVar("T")

RECOVERY_EVERY = 5.0     # seconds between looks for dead workers
CHECKPOINT_EVERY = 0.05  # seconds between WAL checkpoints, at most, while jobs flow
# With SQLite's WAL-reset bug a checkpoint holds the write lock (store/schema.py's
# WAL_RESET_BUG): the thread then skips it until the -wal file has grown past the size it
# is kept at, so that writers wait for one checkpoint of a few MiB rather than one every
# 50 ms. A larger one holds the lock longer but costs less per job (a page written many
# times is copied once); producers checkpoint only past twice this (WAL_CHECKPOINT_BYTES).
CHECKPOINT_PAST = WAL_FILE_KEPT


class Checkpointer:
    """Keeps the WAL short from a thread of the supervisor, so producers need not.

    SQLite checkpoints in whichever connection's commit takes the WAL past a size
    (store/connection.py's WAL_CHECKPOINT_BYTES): that is a producer's ``delay()``
    (a few ms, with an fsync) or the supervisor's own turn (the whole pool waits).
    Here a thread, woken by the loop after it writes, checkpoints at most every
    CHECKPOINT_EVERY seconds; SQLite releases the GIL meanwhile. A reset of the
    WAL to its start also needs a moment when every frame is copied and no
    writer or reader is on the WAL, which a steady stream of jobs rarely leaves:
    then the commit that takes the WAL past that size checkpoints and resets it.
    With SQLite's WAL-reset bug each checkpoint holds the write lock (store/schema.py's
    WAL_RESET_BUG), so the thread skips it while the WAL is under CHECKPOINT_PAST.
    Its own Store closes its connection around any fork, as every Store does, and the thread is
    paused around the supervisor's forks, so that a child is never forked from a
    process with a second thread (a deadlock risk Python 3.12 warns about).
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self._thread: threading.Thread | None = None
        self.resume()

    def poke(self) -> None:
        if not self._wake.is_set():
            self._wake.set()

    def pause(self) -> None:
        """Stop the thread (waiting for a checkpoint under way); resume() starts anew."""
        if self._thread is not None:
            self._stopping.set()
            self._wake.set()
            self._thread.join()
            self._thread = None

    def resume(self) -> None:
        """Start a thread with a fresh pair of events (the old thread may still be
        reading its own). It checkpoints once at once: a poke made while paused is
        not kept."""
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._wake.set()
        self._thread = threading.Thread(target=self._run, name="localq-checkpoint",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.pause()
        self.store.close()

    def _run(self) -> None:
        wake, stopping = self._wake, self._stopping     # this thread's own pair
        while True:
            wake.wait()
            if stopping.is_set():
                return
            wake.clear()
            try:
                self.store.checkpoint(past=CHECKPOINT_PAST)
            except Exception as exc:      # never fatal: SQLite checkpoints on its own
                log.warning("WAL checkpoint failed: %s", exc)
            if stopping.wait(CHECKPOINT_EVERY):
                return


def worker_is_gone(w: dict, now: float, lost_after: float) -> bool:
    try:
        os.kill(w["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    if w["pid_start"] and process_start_time(w["pid"]) not in (None, w["pid_start"]):
        return True              # the pid was reused by another process
    return now - w["heartbeat"] > lost_after


def safely(step: Callable[..., T], *args: Any) -> T | None:
    """Run one step that touches the database; a database fault is logged and None
    returned, so that the loop goes on and tries again later."""
    try:
        return step(*args)
    except DatabaseError as exc:
        log.warning("%s: %s; the worker goes on and tries again later",
                    step.__name__.strip("_").replace("_", " "), exc)
        return None


class Upkeep:
    """The worker's bookkeeping in the file: registration, heartbeat, recovery of dead
    workers' jobs, and result expiry. It returns facts (an id, "presumed dead", how
    many jobs came back, when to run next); the supervisor acts on them."""

    def __init__(self, store: Store, conf: Settings, queues: list[str],
                 concurrency: int) -> None:
        self.store = store
        self.conf = conf
        self.queues = queues
        self.concurrency = concurrency
        self.expiry_cursor = 0
        self.next_expiry = 0.0         # monotonic time of the next expiry step

    def register(self, now: float) -> int:
        """Register this worker under a new id; returns the id."""
        pid = os.getpid()
        return self.store.register_worker(pid, process_start_time(pid), socket.gethostname(),
                                          self.queues, self.concurrency, now)

    def heartbeat(self, worker_id: int, now: float, tally: Tally | None = None,
                  children: Iterable[Child] = ()) -> bool:
        """False when this worker's row is gone: another presumed it dead. With a
        ``tally``, its report (outcome counts, the children) goes with it."""
        if tally is None:
            return self.store.heartbeat(worker_id, now)
        alive = self.store.heartbeat(worker_id, now, tally.report(children))
        if alive:                  # else nothing was written: the counts wait for the next
            tally.written()
        return alive

    def recover(self, worker_id: int, now: float) -> int:
        """Take back the jobs of dead workers; how many were put back or failed."""
        lost_after = self.conf.worker_lost_after
        gone = [w["id"] for w in self.store.workers()
                if w["id"] != worker_id and worker_is_gone(w, now, lost_after)]
        if not gone:
            return 0
        reason = encode_exception("json", WorkerLostError(
            "the worker running this job died and the task has acks_late=False"))
        back, failed = self.store.release_worker_jobs(gone, now, reason)
        if back or failed:
            log.warning("recovered %d job(s) from %d dead worker(s): %d put back, "
                        "%d failed (acks_late=False)", back + failed, len(gone), back, failed)
        return back + failed

    def _expire_results(self, scan: int, stopping: bool, now: float) -> bool:
        """One bounded step of result expiry; True when there is more to look at now."""
        expires = self.conf.result_expires
        if not expires or stopping:
            return False
        seconds = expires.total_seconds() if hasattr(expires, "total_seconds") else expires
        _, self.expiry_cursor = self.store.expire_results(now - float(seconds),
                                                          self.expiry_cursor, scan)
        return self.expiry_cursor != 0

    def expiry_step(self, now: Now, busy: bool, stopping: bool) -> None:
        """One bounded step of the sweep (``busy``: jobs are flowing). While jobs flow,
        steps are small and spaced so that sweeping takes about a twentieth of the
        loop's time (measured on the real clock); idle, it goes on at full speed.
        Sets ``next_expiry``."""
        t0 = time.monotonic()
        more = bool(safely(self._expire_results, 1000 if busy else 5000, stopping, now.wall))
        took = time.monotonic() - t0
        self.next_expiry = now.mono + (RECOVERY_EVERY if not more else
                                       max(0.02, 19 * took) if busy else 0)
