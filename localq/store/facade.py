"""The Store and the Transaction: where the store's transactions begin and end.

``Store`` is what the rest of localq holds: each method is one read or one
write transaction, composed of the SQL functions of jobs.py, workers.py,
maps.py and flow.py over a connection of connection.py's Database. A caller
that must make several changes atomically (the supervisor's turn: outcomes,
then the claim) opens ``store.transaction()`` and gets a ``Transaction``: the
statements that may run inside one, never the raw connection, so that the
store stays the only code that speaks SQL.
"""
from __future__ import annotations

import os
import sqlite3
import time
from contextlib import contextmanager
from typing import Any, Iterable, Iterator, Sequence

from ..exceptions import DatabaseError
from ..ids import current_pid, new_seq, parse_id
from . import beat, canvas, flow, inbox, jobs, maps, monitor, workers
from .connection import Database
from .records import INSERT_JOB, Claimed, JobRow, Outcome

INBOX_RETRY = 1.0   # seconds before trying again to make an inbox, after a failure


class Transaction:
    """The statements of one open write transaction (``Store.transaction()``)."""

    __slots__ = ("_conn",)

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def is_registered(self, worker_id: int) -> bool:
        """Is this worker still registered (not presumed dead by another)?"""
        return workers.is_registered(self._conn, worker_id)

    def finish(self, owner: int, outcomes: Sequence[Outcome],
               written: list[int] | None = None) -> int:
        """Write outcomes, each guarded by ``owner``; returns how many jobs the canvas
        made ready because of them (0: none). ``written``: see jobs.finish."""
        return jobs.finish(self._conn, owner, outcomes, written)

    def set_task_states(self, owner: int, states: Sequence[tuple[int, str, Any]],
                        now: float) -> None:
        """Custom states of this worker's running jobs (``update_state``)."""
        jobs.set_task_states(self._conn, owner, states, now)

    def claim(self, owner: int, queue: str, limit: int, now: float, lane: str | None = None,
              exclude: Sequence[str] = ()) -> list[Claimed]:
        """Claim up to ``limit`` due jobs of one queue (or one lane), highest priority
        first, then oldest first; never those of the ``exclude``d tasks."""
        return jobs.claim(self._conn, owner, queue, limit, now, lane, exclude)

    def release_due(self, now: float) -> int:
        """Make delayed jobs whose time has come claimable."""
        return flow.release_due(self._conn, now)

    def next_due(self, queues: Sequence[str]) -> float | None:
        """The earliest ETA of a delayed job in these queues, if any."""
        return flow.next_due(self._conn, queues)

    def buckets(self) -> dict[str, tuple]:
        """task -> (override, tokens, updated) of every rate-limit bucket."""
        return flow.buckets(self._conn)

    def has_rate_overrides(self) -> bool:
        return flow.has_rate_overrides(self._conn)

    def save_bucket(self, task: str, tokens: float, now: float) -> None:
        flow.save_bucket(self._conn, task, tokens, now)

    def move_to_lane(self, tasks: Sequence[str], queues: Sequence[str]) -> int:
        return flow.move_to_lane(self._conn, tasks, queues)

    def waiting_lanes(self) -> list[str]:
        return flow.waiting_lanes(self._conn)

    def running_counts(self, tasks: Sequence[str]) -> dict[str, int]:
        return flow.running_counts(self._conn, tasks)

    def advance_beat_entry(self, name: str, expected: float, new: float, now: float) -> bool:
        """Move a periodic entry's last due time from ``expected`` to ``new`` (compare
        and set): True if this transaction did, and so may send the run."""
        return beat.advance(self._conn, name, expected, new, now)

    def enqueue(self, job: JobRow) -> bool:
        """Insert one job; False when its id already exists."""
        return self._conn.execute(INSERT_JOB, tuple(job)).rowcount == 1

    def absorb(self, name: str, alias: str, limit: int = inbox.COPY_MAX) -> tuple[int, bool]:
        """Copy an attached inbox's new rows into jobs (at most ``limit``); returns
        (rows copied, more left)."""
        return inbox.absorb(self._conn, name, alias, limit)

    def free_inbox(self, name: str, alias: str) -> bool:
        """Free the slot of a gone producer's inbox if it has been copied whole (the
        caller removes the file after the commit: ``Store.remove_inbox``)."""
        return inbox.free(self._conn, name, alias)


class Store:
    """The database file as localq's modules use it: one method per transaction."""

    def __init__(self, path: str, synchronous: str = "NORMAL") -> None:
        self.path = path
        self.synchronous = synchronous
        self.db = Database(path, synchronous)
        # The private folder producers' inboxes live in (<db>.d/), once the caller has
        # checked it is this user's (wakeup.py); None: no inbox is made or read.
        self.inbox_folder: str | None = None
        self._inbox: inbox.Inbox | None = None
        self._inbox_retry_at = 0.0

    @property
    def patience(self) -> float:
        """Seconds a write waits for the write lock before DatabaseError."""
        return self.db.patience

    @patience.setter
    def patience(self, seconds: float) -> None:
        self.db.patience = seconds

    def close(self) -> None:
        self.close_inbox()
        self.db.close()

    def close_inbox(self) -> None:
        """Close this process's inbox: freed and its files removed if every row has been
        copied (else the next worker copies it and removes it)."""
        box, self._inbox = self._inbox, None
        if box is not None:
            try:
                box.close(self.db)
            except Exception:  # noqa: BLE001 - a gone producer's inbox is freed by a worker
                pass

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """One write transaction: committed at the end of the block, rolled back if
        it raises."""
        with self.db.transaction() as conn:
            yield Transaction(conn)

    def checkpoint(self, past: int = 0) -> None:
        self.db.checkpoint(past)

    def data_version(self) -> int:
        return self.db.data_version()

    # -------------------------------------------------------------- producers

    # The rows are bound as plain tuples: sqlite3 binds a tuple subclass (a NamedTuple)
    # through the generic sequence protocol, ~1 us more per delay() (~4 %).

    def enqueue(self, job: JobRow) -> bool:
        """Insert one job in its own transaction; False when its id already exists."""
        return self.db.write(INSERT_JOB, tuple(job)).rowcount == 1

    def send(self, job: JobRow, use_inbox: bool) -> int:
        """Store a job with a generated id (``job.seq`` is a first draw): into this
        process's inbox if ``use_inbox`` (a worker runs to copy it), else into jobs,
        drawing again on a clash (and drawing it first if it is 0). Returns the seq."""
        if use_inbox and self.inbox_folder is not None and inbox.allowed():
            box = self._inbox
            if box is None or box.pid != current_pid():
                box = self._new_inbox()
                if box is None:
                    return self.send(job, False)
            return box.put(job, self._inbox_position)
        if not job.seq:
            job = job._replace(seq=new_seq())
        while not self.enqueue(job):
            job = job._replace(seq=new_seq())  # two producers drew the same row number
        return job.seq or 0

    def _new_inbox(self) -> inbox.Inbox | None:
        """This process's inbox, made now (one per process, whatever the threads)."""
        with self.db.lock:
            box = self._inbox
            if box is not None and box.pid == os.getpid():
                return box
            if time.monotonic() < self._inbox_retry_at or self.inbox_folder is None:
                return None
            try:
                box = self._inbox = inbox.Inbox(self.db, self.inbox_folder, self.synchronous)
            except (OSError, OverflowError, DatabaseError):
                # No inbox now (a full disk, every slot taken): straight into jobs, which
                # says what is wrong if it is wrong there too.
                self._inbox_retry_at = time.monotonic() + INBOX_RETRY
                return None
            return box

    @property
    def inbox_bell(self) -> bytes:
        """What a ring after ``send`` says: which inbox has work (b"I<slot>")."""
        box = self._inbox
        return box.message if box is not None and box.pid == current_pid() else b"!"

    def _inbox_position(self, slot: int) -> int | None:
        with self.db.read() as conn:
            return inbox.position(conn, slot)

    def inboxes(self) -> list[tuple[int, str, int | None, str | None, int]]:
        """(slot, name, pid, pid_start, pos) of every registered inbox."""
        with self.db.read() as conn:
            return inbox.registered(conn)

    def inboxes_waiting(self, rows: list[tuple[int, str, int | None, str | None, int]]
                        ) -> bool:
        """Have any of these inboxes (``inboxes()``'s rows) rows not copied yet?"""
        if self.inbox_folder is None or not rows:
            return False
        with self.db.read() as conn:
            return inbox.waiting(conn, self.db.read_inboxes, self.inbox_folder, rows)

    def attach_inboxes(self, names: Iterable[str]) -> dict[str, str]:
        """Attach inboxes to the writing connection for ``Transaction.absorb``."""
        if self.inbox_folder is None:
            return {}
        return self.db.attach_inboxes(self.inbox_folder, names)

    def detach_inbox(self, name: str) -> None:
        self.db.detach_inbox(name)

    def remove_inbox(self, name: str) -> None:
        """Unlink a freed inbox's files."""
        if self.inbox_folder is not None:
            inbox.remove(self.inbox_folder, name)

    def remove_orphan_inboxes(self, now: float) -> int:
        """Unlink inbox files of no registered inbox whose producer is gone; how many."""
        if self.inbox_folder is None:
            return 0
        found = inbox.orphans(self.inbox_folder, [r[1] for r in self.inboxes()], now)
        for name in found:
            inbox.remove(self.inbox_folder, name)
        return len(found)

    def free_missing_inbox(self, name: str) -> None:
        """Free the slot of a gone producer that never made its file (if it is still
        missing: checked inside the transaction)."""
        if self.inbox_folder is None:
            return
        with self.db.transaction() as conn:
            if not os.path.lexists(os.path.join(self.inbox_folder, name)):
                conn.execute("UPDATE inboxes SET name = NULL, pid = NULL, pid_start = NULL "
                             "WHERE name = ?", (name,))

    def _absorbing(self) -> dict[str, str]:
        """Before a transaction that must see every job (revoke, purge): copy every
        registered inbox. SQLite attaches a few files at once: all but the last
        MAX_ATTACHED are copied now, a transaction per group; the last are returned
        attached, for the caller's transaction to copy (``_absorb_all``)."""
        if self.inbox_folder is None:
            return {}
        names = [r[1] for r in self.inboxes()]
        step = inbox.MAX_ATTACHED
        while len(names) > step:
            group, names = names[:step], names[step:]
            attached = self.attach_inboxes(group)
            with self.db.transaction() as conn:
                self._absorb_all(conn, attached)
        return self.attach_inboxes(names) if names else {}

    def _absorb_all(self, conn: Any, attached: dict[str, str]) -> None:
        for name, alias in attached.items():
            while inbox.absorb(conn, name, alias)[1]:
                pass

    def _in_inbox(self, job_id: str) -> dict | None:
        """A job that jobs does not have (yet): still in a producer's inbox?"""
        seq = parse_id(job_id)
        if seq is None or self.inbox_folder is None:
            return None
        with self.db.read() as conn:
            found = inbox.find(conn, self.db.read_inboxes, self.inbox_folder, seq)
            if found is None:     # copied between the two reads? jobs has it now
                return jobs.job(conn, job_id)
            return found

    def enqueue_rows(self, rows: Iterable[JobRow]) -> int:
        """Insert jobs in one transaction; returns how many were new (a job whose id
        exists already is skipped)."""
        return self.db.write_many(INSERT_JOB, map(tuple, rows))

    def job(self, job_id: str) -> dict | None:
        with self.db.read() as conn:
            found = jobs.job(conn, job_id)
        return found if found is not None else self._in_inbox(job_id)

    def final_job(self, job_id: str) -> dict | None:
        """A job's row once it is final, else None (a job still in an inbox never is)."""
        with self.db.read() as conn:
            return jobs.final_job(conn, job_id)

    def state(self, job_id: str) -> str | None:
        """One job's state (None when there is no such job): a fraction of job()'s cost."""
        row = self.db.read_one(*jobs.state_query(job_id))
        if row is None:
            job = self._in_inbox(job_id)
            return None if job is None else job["state"]
        return row[0]

    def states(self, job_ids: Sequence[str]) -> dict[str, str]:
        with self.db.read() as conn:
            found = jobs.states(conn, job_ids)
        for job_id in job_ids:
            if job_id not in found and (job := self._in_inbox(job_id)) is not None:
                found[job_id] = job["state"]
        return found

    def attempts(self, seq: int) -> list[dict]:
        with self.db.read() as conn:
            return jobs.attempts(conn, seq)

    def task_state(self, job_id: str) -> tuple | None:
        """A running job's custom state: (state, meta, serializer, task), or None."""
        with self.db.read() as conn:
            return jobs.task_state(conn, job_id)

    def set_task_state(self, job_id: str, state: str, meta: Any, now: float) -> None:
        """``update_state`` from outside a worker: only a job that is running."""
        with self.db.transaction() as conn:
            seq = jobs.seq_of(conn, job_id)
            if seq is not None:
                jobs.set_task_states(conn, None, [(seq, state, meta)], now)

    def forget(self, job_id: str) -> None:
        with self.db.transaction() as conn:
            jobs.forget(conn, job_id)

    def revoke(self, job_id: str, terminate: bool, reason: Any, now: float) -> str:
        """Revoke a job: waiting -> REVOKED at once; running -> marked (and killed if
        ``terminate``); unknown -> a REVOKED tombstone, so a later send with that id
        never runs (nor the copy of a job still in an inbox). Returns the state after
        the call."""
        attached = self._absorbing()
        with self.db.transaction() as conn:
            self._absorb_all(conn, attached)
            return jobs.revoke(conn, job_id, terminate, reason, now)

    # -------------------------------------------------------------- workers

    def revoke_requests(self, owner: int) -> list[tuple[int, int]]:
        """(seq, revoke) of this worker's running jobs that were revoked meanwhile."""
        with self.db.read() as conn:
            return jobs.revoke_requests(conn, owner)

    def finish(self, owner: int, outcomes: Sequence[Outcome]) -> None:
        """Write a batch of outcomes in one transaction; each is guarded by owner."""
        if not outcomes:
            return
        with self.db.transaction() as conn:
            jobs.finish(conn, owner, outcomes)

    def register_worker(self, pid: int, pid_start: str | None, hostname: str,
                        queues: Sequence[str], concurrency: int, now: float) -> int:
        with self.db.transaction() as conn:
            return workers.register(conn, pid, pid_start, hostname, queues, concurrency, now)

    def heartbeat(self, worker_id: int, now: float, report: dict | None = None) -> bool:
        """False when this worker's row is gone (another presumed it dead). With a
        ``report`` (worker/tally.py), the monitoring counts go in the same transaction."""
        if report is None:
            return self.db.write(workers.HEARTBEAT, (now, worker_id)).rowcount == 1
        with self.db.transaction() as conn:
            return monitor.write_report(conn, worker_id, now, report)

    def unregister_worker(self, worker_id: int) -> None:
        self.db.write(workers.UNREGISTER, (worker_id,))

    def workers(self) -> list[dict]:
        with self.db.read() as conn:
            return workers.workers(conn)

    def release_worker_jobs(self, worker_ids: Sequence[int], now: float,
                            lost_reason: Any) -> tuple[int, int]:
        """Put back the STARTED jobs of workers that are gone, and forget the workers.

        A job whose options say ``acks_late: false`` ends FAILURE/WorkerLostError
        instead, and a job revoked meanwhile ends REVOKED. Returns (put back, failed).
        """
        if not worker_ids:
            return 0, 0
        with self.db.transaction() as conn:
            return workers.release_jobs(conn, worker_ids, now, lost_reason)

    @property
    def monitor(self) -> monitor.Monitor:
        """The reads of the dashboard, ``inspect``, ``events`` and ``/metrics``."""
        return monitor.Monitor(self.db)

    def requeue_failed(self, job_id: str, exc_message: str | None = None) -> bool:
        """A FAILURE back to PENDING under its own id, the failure kept as an attempt;
        False if it is not a FAILURE."""
        with self.db.transaction() as conn:
            return monitor.requeue_failed(conn, job_id, exc_message)

    def purge(self, queues: Sequence[str] | None) -> int:
        attached = self._absorbing()
        with self.db.transaction() as conn:
            self._absorb_all(conn, attached)
            return workers.purge(conn, queues)

    def expire_results(self, before: float, after_seq: int, scan: int) -> tuple[int, int]:
        with self.db.transaction() as conn:
            return workers.expire_results(conn, before, after_seq, scan)

    def counts(self) -> list[tuple[str, str, str, int]]:
        """(queue, task, state, count) over every job, those still in producers' inboxes
        included."""
        with self._one_state() as conn:
            return workers.counts(conn) + self._inbox_depths(conn)

    def queue_depths(self) -> tuple[dict[str, list], list[tuple[str, str, str, int]]]:
        """``monitor.queue_depths`` and (queue, task, 'PENDING', count) of the jobs still
        in producers' inboxes (at most a few milliseconds' worth while a worker runs)."""
        with self._one_state() as conn:
            return monitor.queue_depths(conn), self._inbox_depths(conn)

    @contextmanager
    def _one_state(self) -> Iterator[Any]:
        """Reads of the file and of the inboxes from one state of the file: a worker
        copies an inbox's rows and moves its read position in one transaction, so a job
        copied meanwhile is counted once. Inboxes are attached first (ATTACH is refused
        inside a transaction); one registered after that is left out."""
        with self.db.lock:
            if self.inbox_folder is not None:
                with self.db.read() as conn:
                    inbox.attach_registered(conn, self.db.read_inboxes, self.inbox_folder)
            with self.db.snapshot() as conn:
                yield conn

    def _inbox_depths(self, conn: Any) -> list[tuple[str, str, str, int]]:
        if self.inbox_folder is None:
            return []
        return inbox.pending_counts(conn, self.db.read_inboxes, self.inbox_folder)

    def recent(self, states: Sequence[str], limit: int) -> list[dict]:
        with self.db.read() as conn:
            return workers.recent(conn, states, limit)

    # -------------------------------------------------------------- maps

    def group_indexes(self, group: str, lo: int, hi: int) -> set[int]:
        with self.db.read() as conn:
            return maps.group_indexes(conn, group, lo, hi)

    def begin_map(self, name: str, task: str, digest: str, total: int, now: float) -> bool:
        with self.db.transaction() as conn:
            return maps.begin_map(conn, name, task, digest, total, now)

    def drop_map(self, name: str) -> int:
        with self.db.transaction() as conn:
            return maps.drop_map(conn, name)

    def drop_group(self, group: str) -> int:
        with self.db.transaction() as conn:
            return maps.drop_group(conn, group)

    def map_results(self, group: str, lo: int, hi: int) -> list[tuple]:
        with self.db.read() as conn:
            return maps.map_results(conn, group, lo, hi)

    # -------------------------------------------------------------- the canvas

    def send_workflow(self, batches: Iterable[tuple[Sequence[JobRow], Sequence[tuple[int, str]],
                                                    Sequence[tuple]]],
                      groups: Sequence[tuple]) -> int:
        """Insert a workflow (batches of jobs and of what their outcomes set off, then
        its groups and chords) in one transaction; returns how many jobs were new."""
        with self.db.transaction() as conn:
            return canvas.insert(conn, batches, groups)

    def canvas_group(self, group_id: str) -> tuple | None:
        """(total, remaining, body seq) of a group or chord; None when unknown."""
        with self.db.read() as conn:
            return canvas.group(conn, group_id)

    def forget_group(self, group_id: str) -> None:
        with self.db.transaction() as conn:
            canvas.forget_group(conn, group_id)

    def group_members(self, group_id: str) -> list[tuple[int, str | None]]:
        with self.db.read() as conn:
            return canvas.members(conn, group_id)

    def group_tail(self, group_id: str) -> tuple[int, tuple[int, str | None] | None]:
        with self.db.read() as conn:
            return canvas.tail(conn, group_id)

    def group_progress(self, group_id: str) -> tuple[int, int, int | None]:
        with self.db.read() as conn:
            return canvas.progress(conn, group_id)

    def group_states(self, group_id: str) -> dict[str, int]:
        with self.db.read() as conn:
            return canvas.states(conn, group_id)

    def chord_of(self, body_seq: int) -> str | None:
        """The header group of the chord whose body is this job, if it is one."""
        with self.db.read() as conn:
            return canvas.chord_of(conn, body_seq)

    def group_results(self, group_id: str) -> list[tuple]:
        with self.db.read() as conn:
            return canvas.results(conn, group_id)

    def children(self, job_id: str) -> list[tuple[int, str | None]]:
        with self.db.read() as conn:
            return canvas.children(conn, job_id)

    # -------------------------------------------------------------- flow control

    def set_rate_override(self, task: str, rate: str | None, now: float) -> None:
        """Set (``None``: drop) a task's run-time rate limit, and remember when."""
        self.db.write(flow.SET_OVERRIDE, (task, rate, None if rate is None else now))

    def rate_overrides(self) -> list[tuple[str, str, float | None]]:
        """(task, override, when it was set) of every run-time rate limit in force."""
        with self.db.read() as conn:
            return flow.rate_overrides(conn)

    # -------------------------------------------------------------- periodic tasks

    def sync_beat_entries(self, names: Sequence[str],
                          now: float) -> dict[str, tuple[float, float | None]]:
        """Keep exactly these periodic entries (new ones anchored at ``now``); returns
        name -> (last_due, last_run)."""
        with self.db.transaction() as conn:
            return beat.sync_entries(conn, names, now)

    def restore_beat_entry(self, name: str, last_due: float, last_run: float | None) -> None:
        """Put back a periodic entry another scheduler forgot, anchored where it was."""
        with self.db.transaction() as conn:
            beat.restore(conn, name, last_due, last_run)

    def beat_entries(self) -> dict[str, tuple[float, float | None]]:
        """name -> (last_due, last_run) of every stored periodic entry."""
        with self.db.read() as conn:
            return beat.entries(conn)
