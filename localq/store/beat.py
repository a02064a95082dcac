"""The store's SQL for periodic tasks: one row per beat entry, moved by compare-and-set.

``last_due`` is the entry's anchor: the due time last sent, or when the entry was first
seen. A scheduler sends a due run only in the transaction that moves ``last_due`` from
the value it read to the new one (``advance``), so of several schedulers on one file
exactly one sends each due run. Functions over an open connection; the Store facade
opens the transaction."""
from __future__ import annotations

import sqlite3
from typing import Sequence


def sync_entries(conn: sqlite3.Connection, names: Sequence[str],
                 now: float) -> dict[str, tuple[float, float | None]]:
    """Make the table hold exactly these entries: a new one is anchored at ``now``, a
    removed one is forgotten. Returns name -> (last_due, last_run)."""
    conn.executemany("INSERT INTO beat_entries (name, last_due) VALUES (?, ?) "
                     "ON CONFLICT DO NOTHING", [(name, now) for name in names])
    kept = set(names)
    gone = [r[0] for r in conn.execute("SELECT name FROM beat_entries") if r[0] not in kept]
    conn.executemany("DELETE FROM beat_entries WHERE name = ?", [(name,) for name in gone])
    return entries(conn, names)


def entries(conn: sqlite3.Connection,
            names: Sequence[str] | None = None) -> dict[str, tuple[float, float | None]]:
    """name -> (last_due, last_run) of the stored entries (of these names only, if given)."""
    rows = {r[0]: (r[1], r[2]) for r in conn.execute(
        "SELECT name, last_due, last_run FROM beat_entries")}
    return rows if names is None else {n: rows[n] for n in names if n in rows}


def advance(conn: sqlite3.Connection, name: str, expected: float, new: float,
            now: float) -> bool:
    """Move an entry's anchor from ``expected`` to ``new``; False when another scheduler
    moved it first (or the entry is gone)."""
    return conn.execute(
        "UPDATE beat_entries SET last_due = ?, last_run = ? WHERE name = ? AND last_due = ?",
        (new, now, name, expected)).rowcount == 1
