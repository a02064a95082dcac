"""The child processes of one supervisor: starting, tracking and killing them.

Children are forked from the supervisor, which holds no open SQLite
connection at that moment (store/connection.py closes every connection before any fork
and reopens it lazily). Forking, rather than ``spawn`` or ``forkserver`` as
DESIGN.md first proposed, is what lets tasks defined in a script's
``__main__`` (with no ``if __name__ == "__main__"`` guard) run in an embedded
worker, and it starts a child in about a millisecond instead of ~40 ms.

Each child has its own duplex channel, and a pidfd (its process sentinel)
that becomes readable when it dies: the supervisor learns of a child's death
from that even when a grandchild the task forked still holds the channel open
(EOF on the channel comes too, when no other process holds the child's end).

Each child also has a shared-memory slot, mapped before the fork, in which it
writes the seq of the job it is starting and 0 when that job ends: when a
child dies, the supervisor reads there which job was running, and only that
job is blamed (WorkerLostError) or run again (``reject_on_worker_lost``).
Children send outcomes in batches, so the jobs before it on the child's list
may have finished without their outcomes reaching the supervisor: those run
again, as do the jobs after it, which never started. Two plain stores per job
into a page of shared memory cost far less than a message per job would.
"""
from __future__ import annotations

import enum
import logging
import mmap
import os
import select
import signal
from collections import deque
from multiprocessing import Pipe
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Callable, Iterable

from ..exceptions import TimeLimitExceeded, WorkerLostError
from ..serializer import encode_exception, exception_type_name
from ..store import Outcome, records
from . import protocol
from .child import child_main
from .execute import revoked_outcome

if TYPE_CHECKING:
    from ..store import Claimed
    from ..task import Task
    from .options import WorkerApp

log = logging.getLogger("localq.worker")

KILL_GRACE = 0.1      # seconds between SIGTERM and SIGKILL for a child we stop
# Jobs queued in one child, at most, however fast they are: enough that the
# supervisor writes and claims while the children work (128 left it idle a
# quarter of a drain, waiting for outcomes), few enough that a job stuck
# behind a slow one is not a crowd.
PREFETCH_MAX = 512
DIED = "died"         # the selector's tag of a child's sentinel: (DIED, child)


class Inflight:
    __slots__ = ("job", "hard", "sent", "size")

    def __init__(self, job: Claimed, hard: float | None, sent: float) -> None:
        self.job = job
        self.hard = hard        # hard time limit in seconds, if any
        self.sent = sent        # monotonic time it was handed to the child
        self.size = len(job.payload or b"")


class ChildState(enum.Enum):
    """Where a child is in its life, as the supervisor sees it. Moves only forward:
    ACTIVE -> RETIRING -> LEAVING -> STOPPING -> DEAD, any step may be skipped.
    Idle and busy are not states: ``inflight`` says which, and is the one record of
    it (a state updated on every hand-over and outcome would cost the hot path)."""
    ACTIVE = "active"        # takes work
    RETIRING = "retiring"    # handed its max_tasks_per_child: runs them, takes no more;
                             # its successor is started at once
    LEAVING = "leaving"      # said it exits on its own (recycled): takes no more
    STOPPING = "stopping"    # signalled by the supervisor; ``kill_reason`` says why
    DEAD = "dead"            # exited, reaped and closed


class Child:
    """One child process as the supervisor sees it."""

    def __init__(self, pid: int, conn: Connection, slot: mmap.mmap,
                 sentinel: int | None) -> None:
        self.pid = pid
        self.conn = conn
        self.slot = slot              # shared with the child: see protocol.py
        self.words = protocol.slot_words(slot)
        self.sentinel = sentinel      # readable when the process has exited
        self.inflight: deque[Inflight] = deque()   # change it through hand/pop/keep_only
        self.queued_bytes = 0         # the arguments' size of what is in flight
        self.last_report = 0.0        # monotonic time of its last outcomes
        self.avg_duration: float | None = None
        self._prefetch = 1            # prefetch(), kept up to date by note_duration
        self.handed = 0               # jobs handed over in its life (for max_tasks)
        self.state = ChildState.ACTIVE
        self.kill_reason: str | None = None   # STOPPING: time_limit, revoke, shutdown...
        self.kill_job: int | None = None      # STOPPING: the job it was stopped for
        self.sigkill_at: float | None = None
        # conn.poll() builds a selector on every call: ~20 us in the supervisor's loop
        self._poller = select.poll()
        self._poller.register(conn.fileno(), select.POLLIN)

    def has_more(self) -> bool:
        """Is there more to read from the child right now?"""
        return bool(self._poller.poll(0))

    def hand(self, items: list[Inflight]) -> None:
        self.inflight.extend(items)
        self.queued_bytes += sum(i.size for i in items)

    def pop(self, seq: int) -> Claimed | None:
        """Take a reported job off the list. Outcomes come in the order the jobs were
        handed over: it is the head, almost always."""
        inflight = self.inflight
        if inflight and inflight[0].job.seq == seq:
            item = inflight.popleft()
        else:
            for item in inflight:
                if item.job.seq == seq:
                    inflight.remove(item)
                    break
            else:
                return None
        self.queued_bytes -= item.size
        return item.job

    def keep_only(self, items: Iterable[Inflight]) -> None:
        self.inflight = deque(items)
        self.queued_bytes = sum(i.size for i in self.inflight)

    def running(self) -> Inflight | None:
        return self.inflight[0] if self.inflight else None

    def running_seq(self) -> int:
        """The seq of the job the child is running (0: none), as the child wrote it."""
        return int(self.words[protocol.RUNNING])

    def skip(self, seq: int) -> bool:
        """Tell the child not to start this job (revoked after it was handed over): it
        reports it REVOKED instead. False if the slot's list is full."""
        words, count = self.words, self.words[protocol.SKIPS]
        if count >= protocol.SKIP_MAX:
            return False
        words[protocol.FIRST_SKIP + count] = seq     # the seq first, then the count
        words[protocol.SKIPS] = count + 1
        return True

    def close(self) -> None:
        """Release the channel, the sentinel and the slot of a child that has exited."""
        self.state = ChildState.DEAD
        self.conn.close()
        if self.sentinel is not None:
            os.close(self.sentinel)
            self.sentinel = None
        self.words.release()
        self.slot.close()

    def running_since(self) -> float:
        """When the job now running started, as near as the supervisor can tell:
        the child reports outcomes in order, so the head started after the
        last report and after it was sent."""
        head = self.inflight[0]
        return max(self.last_report, head.sent)

    def deadline(self) -> float | None:
        """Monotonic time of the next thing to do to this child, if any: SIGKILL once
        the grace of a stop is over, or a stop at the hard time limit of its job."""
        if self.state is ChildState.STOPPING:
            return self.sigkill_at
        head = self.inflight[0] if self.inflight else None
        if head is None or not head.hard:
            return None
        return max(self.last_report, head.sent) + head.hard

    def run_deadline(self, mono: float) -> bool:
        """Do what ``deadline`` said, if it has come; True if the child was just stopped
        at its job's hard time limit (its successor is to be started now)."""
        at = self.deadline()
        if at is None or mono < at:
            return False
        if self.state is ChildState.STOPPING:
            self.escalate()
            return False
        self.stop("time_limit", self.inflight[0].job.seq, mono)
        return True

    def prefetch(self) -> int:
        """How many jobs to keep queued in the child: about 5 ms of work."""
        return self._prefetch

    def note_duration(self, seconds: float) -> None:
        avg = self.avg_duration
        self.avg_duration = avg = seconds if avg is None else 0.8 * avg + 0.2 * seconds
        self._prefetch = max(1, min(PREFETCH_MAX, int(0.005 / max(avg, 1e-6))))

    @property
    def takes_work(self) -> bool:
        return self.state is ChildState.ACTIVE

    @property
    def stopping(self) -> bool:
        """Signalled by the supervisor (it is being stopped or killed)."""
        return self.state is ChildState.STOPPING

    def exits_unexpectedly(self) -> bool:
        """Would its exit now be a surprise (neither announced nor caused by us)?"""
        return self.state in (ChildState.ACTIVE, ChildState.RETIRING)

    def retire(self) -> bool:
        """It was handed its last jobs: True if it was taking work until now."""
        if self.state is not ChildState.ACTIVE:
            return False
        self.state = ChildState.RETIRING
        return True

    def leave(self) -> None:
        """It said it exits on its own."""
        if self.state in (ChildState.ACTIVE, ChildState.RETIRING):
            self.state = ChildState.LEAVING

    def _stopping(self, reason: str, job_seq: int | None) -> None:
        # The first reason stays: it says what became of the job it was stopped for.
        if self.state is not ChildState.STOPPING:
            self.state = ChildState.STOPPING
            self.kill_reason = reason
            self.kill_job = job_seq

    def stop(self, reason: str, job_seq: int | None, mono: float) -> None:
        """SIGTERM now, SIGKILL after a short grace (a task may ignore SIGTERM)."""
        self._stopping(reason, job_seq)
        self.sigkill_at = mono + KILL_GRACE
        self.words[protocol.STOP_ASKED] = 1     # so that the child takes it as meant
        self.send_signal(signal.SIGTERM)

    def kill(self, reason: str) -> None:
        """SIGKILL now; no job is blamed: whatever it was running runs again."""
        self._stopping(reason, None)
        self.kill_job = None
        self.escalate()

    def escalate(self) -> None:
        self.sigkill_at = None
        self.send_signal(signal.SIGKILL)

    def send_signal(self, sig: int) -> None:
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            pass

    def reap(self) -> str:
        """Wait for the exited child; describe how it ended (Celery's wording)."""
        try:
            _, status = os.waitpid(self.pid, 0)
        except ChildProcessError:
            return "exited"
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            try:
                name = signal.Signals(sig).name
            except ValueError:
                name = str(sig)
            return f"signal {sig} ({name})"
        return f"exitcode {os.WEXITSTATUS(status)}"


def fork_child(app: WorkerApp, siblings: list[Connection], close_fds: list[int],
               max_tasks: int | None, max_memory_kib: int | None,
               before_run: Callable[[], None] | None = None) -> Child:
    ours, theirs = Pipe(duplex=True)
    slot = protocol.new_slot()
    pid = os.fork()
    if pid == 0:    # the child: drop everything that belongs to the supervisor
        try:
            signal.set_wakeup_fd(-1)
            ours.close()
            for conn in siblings:
                conn.close()
            for fd in close_fds:
                try:
                    os.close(fd)
                except OSError:
                    pass
            if before_run:
                before_run()
        except BaseException:
            os._exit(70)
        child_main(app, theirs, slot, max_tasks, max_memory_kib)   # never returns
        os._exit(70)
    theirs.close()
    try:
        sentinel: int | None = os.pidfd_open(pid)
    except (AttributeError, OSError):     # Linux before 5.3: the channel's EOF only
        sentinel = None
    return Child(pid, ours, slot, sentinel)


def death_outcome(child: Child, head: Inflight, task: Task | None, how: str,
                  now: float) -> Outcome:
    """What became of the job a child was running when it died."""
    seq, job = head.job.seq, head.job
    stopped = child.kill_reason       # set once it was stopped (it may be DEAD by now)
    if stopped == "time_limit" and child.kill_job == seq:
        log.error("Task %s[%s] killed: hard time limit (%ss) exceeded", job.task, job.id,
                  head.hard)
        return _failed(seq, job.serializer, TimeLimitExceeded(f"TimeLimitExceeded({head.hard})"),
                       now, child.pid)
    if stopped == "revoke" and child.kill_job == seq:
        log.info("Task %s[%s] terminated by revoke", job.task, job.id)
        return revoked_outcome(seq, job.serializer, "terminated", now, child.pid)
    if stopped is not None:
        # Shut down, or killed for another job that had just finished: this one was
        # caught in the crossfire; it runs again.
        return records.put_back(seq)
    if task is not None and task.option("reject_on_worker_lost"):
        log.warning("Task %s[%s]: worker lost (%s); it will run again", job.task, job.id, how)
        return records.put_back(seq)
    exc = WorkerLostError(f"Worker exited prematurely: {how} Job: {job.id}.")
    log.error("Task %s[%s] failed: %s", job.task, job.id, exc)
    return _failed(seq, job.serializer, exc, now, child.pid)


def _failed(seq: int, serializer: str, exc: BaseException, now: float, pid: int) -> Outcome:
    return records.failed(seq, encode_exception(serializer, exc), exception_type_name(exc),
                          None, None, now, pid, str(exc))
