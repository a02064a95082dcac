"""The store's SQL for flow control: token buckets, lanes, due ETAs, running counts.

Functions over an open connection: all but the overrides run inside the
supervisor's claim transaction (through its Transaction object)."""
from __future__ import annotations

import sqlite3
from typing import Sequence

from .records import READY_WHERE

SET_OVERRIDE = ("INSERT INTO rate_limits (task, override, override_set) VALUES (?, ?, ?) "
                "ON CONFLICT(task) DO UPDATE SET override = excluded.override, "
                "override_set = excluded.override_set")


def rate_overrides(conn: sqlite3.Connection) -> list[tuple[str, str, float | None]]:
    return conn.execute("SELECT task, override, override_set FROM rate_limits "
                        "WHERE override IS NOT NULL ORDER BY task").fetchall()


def buckets(conn: sqlite3.Connection) -> dict[str, tuple]:
    return {row[0]: row[1:] for row in conn.execute(
        "SELECT task, override, tokens, updated FROM rate_limits")}


def has_rate_overrides(conn: sqlite3.Connection) -> bool:
    return conn.execute("SELECT 1 FROM rate_limits WHERE override IS NOT NULL "
                        "LIMIT 1").fetchone() is not None


def save_bucket(conn: sqlite3.Connection, task: str, tokens: float, now: float) -> None:
    conn.execute("INSERT INTO rate_limits (task, tokens, updated) VALUES (?, ?, ?) "
                 "ON CONFLICT(task) DO UPDATE SET tokens = excluded.tokens, "
                 "updated = excluded.updated", (task, tokens, now))


def move_to_lane(conn: sqlite3.Connection, tasks: Sequence[str], queues: Sequence[str]) -> int:
    """Move these tasks' ready jobs in these queues out of the main claim order into
    their own lanes: a walk of the main order's index (jobs_ready) of the queues."""
    return conn.execute(f"UPDATE jobs SET lane = task WHERE {READY_WHERE} AND lane IS NULL "
                        f"AND eta = 0 AND queue IN ({','.join('?' * len(queues))}) "
                        f"AND task IN ({','.join('?' * len(tasks))})",
                        [*queues, *tasks]).rowcount


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


def release_due(conn: sqlite3.Connection, now: float) -> int:
    return conn.execute(f"UPDATE jobs SET eta = 0 WHERE {READY_WHERE} AND eta > 0 AND "
                        "eta <= ?", (now,)).rowcount


def next_due(conn: sqlite3.Connection, queues: Sequence[str]) -> float | None:
    marks = ",".join("?" * len(queues))
    row = conn.execute(f"SELECT min(eta) FROM jobs WHERE {READY_WHERE} AND eta > 0 "
                       f"AND queue IN ({marks})", list(queues)).fetchone()
    return row[0] if row else None


def running_counts(conn: sqlite3.Connection, tasks: Sequence[str]) -> dict[str, int]:
    marks = ",".join("?" * len(tasks))
    return dict(conn.execute(f"SELECT task, count(*) FROM jobs WHERE state = 'STARTED' "
                             f"AND task IN ({marks}) GROUP BY task", list(tasks)).fetchall())
