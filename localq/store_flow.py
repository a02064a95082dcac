"""The store's SQL for flow control: token buckets, lanes, due ETAs, running counts."""
from __future__ import annotations

import sqlite3
from contextlib import AbstractContextManager
from typing import Callable, Sequence

from .rows import READY_WHERE


class FlowRecords:
    """Methods of :class:`localq.store.Store`; they use its connection and transactions."""

    _read: Callable[[], AbstractContextManager[sqlite3.Connection]]
    transaction: Callable[[], AbstractContextManager[sqlite3.Connection]]

    def set_rate_override(self, task: str, rate: str | None, now: float) -> None:
        """Set (``None``: drop) a task's run-time rate limit, and remember when."""
        when = None if rate is None else now
        with self.transaction() as conn:
            conn.execute("INSERT INTO rate_limits (task, override, override_set) VALUES (?, ?, ?) "
                         "ON CONFLICT(task) DO UPDATE SET override = excluded.override, "
                         "override_set = excluded.override_set", (task, rate, when))

    def rate_overrides(self) -> list[tuple[str, str, float | None]]:
        """(task, override, when it was set) of every run-time rate limit in force."""
        with self._read() as conn:
            return conn.execute("SELECT task, override, override_set FROM rate_limits "
                                "WHERE override IS NOT NULL ORDER BY task").fetchall()

    @staticmethod
    def buckets(conn: sqlite3.Connection) -> dict[str, tuple]:
        """task -> (override, tokens, updated), inside the caller's transaction."""
        return {row[0]: row[1:] for row in conn.execute(
            "SELECT task, override, tokens, updated FROM rate_limits")}

    @staticmethod
    def has_rate_overrides(conn: sqlite3.Connection) -> bool:
        return conn.execute("SELECT 1 FROM rate_limits WHERE override IS NOT NULL "
                            "LIMIT 1").fetchone() is not None

    @staticmethod
    def save_bucket(conn: sqlite3.Connection, task: str, tokens: float, now: float) -> None:
        conn.execute("INSERT INTO rate_limits (task, tokens, updated) VALUES (?, ?, ?) "
                     "ON CONFLICT(task) DO UPDATE SET tokens = excluded.tokens, "
                     "updated = excluded.updated", (task, tokens, now))

    @staticmethod
    def move_to_lane(conn: sqlite3.Connection, tasks: Sequence[str],
                     queues: Sequence[str]) -> int:
        """Move these tasks' ready jobs in these queues out of the main claim order into
        their own lanes: a walk of the main order's index (jobs_ready) of the queues."""
        return conn.execute(f"UPDATE jobs SET lane = task WHERE {READY_WHERE} AND lane IS NULL "
                            f"AND eta = 0 AND queue IN ({','.join('?' * len(queues))}) "
                            f"AND task IN ({','.join('?' * len(tasks))})",
                            [*queues, *tasks]).rowcount

    @staticmethod
    def waiting_lanes(conn: sqlite3.Connection) -> list[str]:
        """Every lane that has waiting jobs: one index seek per lane."""
        lanes: list[str] = []
        while True:
            row = conn.execute(f"SELECT lane FROM jobs WHERE {READY_WHERE} AND lane IS NOT NULL "
                               "AND eta = 0 AND lane > ? ORDER BY lane LIMIT 1",
                               (lanes[-1] if lanes else "",)).fetchone()
            if row is None:
                return lanes
            lanes.append(row[0])

    @staticmethod
    def release_due(conn: sqlite3.Connection, now: float) -> int:
        """Make delayed jobs whose time has come claimable (inside the claim transaction)."""
        return conn.execute(f"UPDATE jobs SET eta = 0 WHERE {READY_WHERE} AND eta > 0 AND "
                            "eta <= ?", (now,)).rowcount

    def next_due(self, conn: sqlite3.Connection, queues: Sequence[str]) -> float | None:
        """The earliest ETA of a delayed job in these queues, if any (inside ``conn``'s
        transaction: the claim's, so that it costs no read transaction of its own)."""
        marks = ",".join("?" * len(queues))
        row = conn.execute(f"SELECT min(eta) FROM jobs WHERE {READY_WHERE} AND eta > 0 "
                           f"AND queue IN ({marks})", list(queues)).fetchone()
        return row[0] if row else None

    def running_counts(self, conn: sqlite3.Connection, tasks: Sequence[str]) -> dict[str, int]:
        marks = ",".join("?" * len(tasks))
        return dict(conn.execute(f"SELECT task, count(*) FROM jobs WHERE state = 'STARTED' "
                                 f"AND task IN ({marks}) GROUP BY task", list(tasks)).fetchall())
