"""The store's SQL for periodic tasks: one row per beat entry, moved by compare-and-set.

``last_due`` is the entry's anchor: the due time last sent, or when the entry was first
seen. A scheduler sends a due run only in the transaction that moves ``last_due`` from
the value it read to the new one (``advance``), so of several schedulers on one file
exactly one sends each due run. Functions over an open connection; the Store facade
opens the transaction."""
from __future__ import annotations

import sqlite3
from typing import Sequence

# A removed entry is forgotten by renaming its row to FORGOTTEN + its name: not deleted,
# so that a scheduler still running with it (another app on the file, an older deploy)
# can put it back where it stood, which also records a run sent meanwhile.
FORGOTTEN = "\x1fforgotten:"


def sync_entries(conn: sqlite3.Connection, names: Sequence[str],
                 now: float) -> dict[str, tuple[float, float | None]]:
    """Make the table hold exactly these entries: a new one (or one forgotten before) is
    anchored at ``now``, a removed one is forgotten. Returns name -> (last_due, last_run)."""
    conn.executemany("INSERT INTO beat_entries (name, last_due) VALUES (?, ?) "
                     "ON CONFLICT DO NOTHING", [(name, now) for name in names])
    conn.executemany("DELETE FROM beat_entries WHERE name = ?",
                     [(FORGOTTEN + name,) for name in names])
    kept = set(names)
    gone = [name for name in entries(conn) if name not in kept]
    conn.executemany("DELETE FROM beat_entries WHERE name = ?",
                     [(FORGOTTEN + name,) for name in gone])
    conn.executemany("UPDATE beat_entries SET name = ? WHERE name = ?",
                     [(FORGOTTEN + name, name) for name in gone])
    return entries(conn, names)


def restore(conn: sqlite3.Connection, name: str, last_due: float,
            last_run: float | None) -> None:
    """Put back an entry that a scheduler with other code forgot: where it stood when
    forgotten, or else at (``last_due``, ``last_run``); an entry still there is left."""
    row = conn.execute("SELECT last_due, last_run FROM beat_entries WHERE name = ?",
                       (FORGOTTEN + name,)).fetchone()
    conn.execute("INSERT INTO beat_entries (name, last_due, last_run) VALUES (?, ?, ?) "
                 "ON CONFLICT DO NOTHING", (name, *(row or (last_due, last_run))))


def entries(conn: sqlite3.Connection,
            names: Sequence[str] | None = None) -> dict[str, tuple[float, float | None]]:
    """name -> (last_due, last_run) of the stored entries (of these names only, if given),
    forgotten ones aside."""
    rows = {r[0]: (r[1], r[2]) for r in conn.execute(
        "SELECT name, last_due, last_run FROM beat_entries WHERE substr(name, 1, ?) != ?",
        (len(FORGOTTEN), FORGOTTEN))}
    return rows if names is None else {n: rows[n] for n in names if n in rows}


def advance(conn: sqlite3.Connection, name: str, expected: float, new: float,
            now: float) -> bool:
    """Move an entry's anchor from ``expected`` to ``new``; False when another scheduler
    moved it first (or the entry is gone)."""
    return conn.execute(
        "UPDATE beat_entries SET last_due = ?, last_run = ? WHERE name = ? AND last_due = ?",
        (new, now, name, expected)).rowcount == 1
