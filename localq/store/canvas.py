"""The store's SQL for the canvas: sending a workflow, and what an outcome sets off.

A workflow (chain, group, chord, callbacks) is sent in one transaction with
every job it may ever run: the jobs that start it are ready, the others wait
(``PENDING`` with ``eta = -1``: in neither the ready nor the delayed index, so
never claimed nor released by time). Each job whose outcome sets something
off has a row in ``canvas``: its ``spec`` says what to do on success
(``ok``) and on failure or revoke (``err``):

- ``["go", seq, splice]``: release a waiting job, its parent's result
  prepended to its arguments when ``splice`` (a chain's next step, a link);
- ``["fail", seq]``: end a waiting job FAILURE with its parent's exception (a
  chain's next step after a failure, as Celery 5 does);
- ``["drop", seq]``: delete a waiting job that will never run, and what it
  would have set off (a link after a failure, a link_error after a success);
- ``["chord", group_id]``: count one header member of a chord; the last one
  releases the body with every header result in header order, and a failure
  ends the body FAILURE with a ChordError instead.

A chord's results list is joined a part at a time while its header runs: each
part of PART members (by ``group_index``) has a counter in ``canvas_parts``, and
the transaction that completes a part stores its results joined. The body's
release then joins the last part and the stored texts, not the whole header.

A chord's ``canvas_groups`` row names its body job (``splice``: 1 when the body
takes the results). A group as the body (``splice`` = GROUP_BODY) has a canvas
row of its own under the negated seq of its first member (no job has a negative
seq, so it never fires as an outcome): ``{"bodies": [[seq, splice], ...]}``,
every member released, failed or dropped together.

``settle`` runs inside the transaction that writes outcomes (``jobs.finish``),
so a follow-up is written exactly when its cause is: a kill -9 at any moment
leaves both or neither. A canvas row is deleted when it fires, so it fires
once; nothing polls while a chord waits.

Results travel as JSON text spliced into the next job's JSON payload
(``[[args...], {kwargs}]``): the canvas checks at the call that a step that
receives a result, and the step that sends it, use JSON.
"""
from __future__ import annotations

import functools
import json
import sqlite3
import time
from collections import Counter
from typing import Any, Iterable, Sequence

from ..ids import format_id
from .records import FINAL_SQL, INSERT_JOB, JobRow, in_list
from .schema import SHORT_RESULT

WAITING = -1.0        # the eta of a job that waits for its parent's outcome
GROUP_BODY = 2        # canvas_groups.splice of a chord whose body is a group
CHORD_ERROR = "localq.exceptions.ChordError"
_CHUNK = 500
# Header members per part of a chord's results list. The body's release joins at most
# one part's results from the jobs; every transaction of the header pays one counter
# update per part it touches, and a part's join when it completes.
PART = 256


class RowClash(Exception):
    """A job of a workflow could not be inserted: its row number or id exists. The
    transaction is rolled back; the sender may build the workflow again."""


# A run of bulk-sent group members (canvas.py's _Run): consecutive row numbers and
# places in the group, one task, JSON payloads given as one JSON array of strings;
# json_each's key numbers them. The other columns are those of a delay()'s row.
INSERT_RUN = (
    "INSERT INTO jobs (state, seq, task, queue, lane, priority, serializer, payload, "
    "options, eta, expires, created, group_id, group_index) SELECT 'PENDING', ?1 + key, "
    "?2, ?3, ?4, ?5, 'json', value, ?6, 0.0, ?7, ?8, ?9, ?10 + key FROM json_each(?11) "
    "WHERE true ON CONFLICT DO NOTHING")


def insert(conn: sqlite3.Connection,
           batches: Iterable[tuple[Sequence[JobRow], Sequence[tuple[int, str]],
                                   Sequence[tuple]]],
           groups: Sequence[tuple]) -> int:
    """Insert a workflow's jobs (rows, and runs of bulk-sent members: see INSERT_RUN)
    and canvas rows, batch by batch (they may be built as they go), then its groups
    (complete once the batches are); returns how many jobs were new."""
    inserted = 0
    for rows, specs, runs in batches:
        added = conn.executemany(INSERT_JOB, map(tuple, rows)).rowcount if rows else 0
        wanted = len(rows)
        for *run, size in runs:
            added += conn.execute(INSERT_RUN, run).rowcount
            wanted += size
        if added != wanted:
            raise RowClash(f"{wanted - added} of the workflow's row numbers or ids are "
                           f"taken (another sender drew the same numbers, or a task_id "
                           f"exists): nothing was stored")
        inserted += added
        conn.executemany("INSERT INTO canvas (seq, spec) VALUES (?, ?)", specs)
    conn.executemany("INSERT INTO canvas_groups (id, total, remaining, body, splice, created) "
                     "VALUES (?, ?, ?, ?, ?, ?)", groups)
    return inserted


_parse = functools.lru_cache(maxsize=1024)(json.loads)   # a chord's members share one spec


def settle(conn: sqlite3.Connection, seqs: Sequence[int],
           members: Iterable[tuple[str, int, int]] = ()) -> int:
    """What outcomes set off, in the caller's transaction: the follow-ups of those of
    ``seqs`` that are final now (their canvas rows), the failure of a chord whose
    bulk-sent member among ``seqs`` failed, and the count of ``members``: (group id,
    part, how many) of the bulk-sent group members (no canvas row, ``root_id`` NULL)
    that succeeded in this transaction (the writer read them under its UPDATE's guard:
    a member counts once). Returns how many jobs became ready: exact for a chain's step and a
    chord's members (the supervisor rings other workers on it), an upper bound after a
    failure. A job of ``seqs`` with no canvas row costs one probe; a chord's members in
    one transaction are counted with one UPDATE (and one per part)."""
    found: list[tuple] = []
    for start in range(0, len(seqs), _CHUNK):
        marks, chunk = in_list(seqs[start:start + _CHUNK])
        found.extend(conn.execute(
            "SELECT j.seq, c.spec, j.state, j.result, j.exc_type, j.traceback, j.id, "
            "j.group_index, j.group_id FROM jobs j LEFT JOIN canvas c ON c.seq = j.seq "
            f"WHERE j.seq IN ({marks}) AND j.state IN {FINAL_SQL} AND "
            "(c.seq IS NOT NULL OR (j.group_id IS NOT NULL AND j.root_id IS NULL AND "
            "j.state <> 'SUCCESS'))", chunk).fetchall())
    counts: dict[str, Counter[int]] = {}
    for group_id, part, succeeded in members:
        counts.setdefault(group_id, Counter())[part] += succeeded
    if not found and not counts:
        return 0
    fired = [(row[0],) for row in found if row[1] is not None]
    if fired:
        conn.executemany("DELETE FROM canvas WHERE seq = ?", fired)
    before = conn.total_changes
    now = time.time()
    for seq, spec, state, result, exc_type, traceback, custom_id, index, group_id in found:
        if spec is None:        # a bulk-sent member failed: its chord, if any, fails
            _chord_failed(conn, group_id,
                          (result, exc_type, traceback, custom_id or format_id(seq)), now)
        else:
            _follow(conn, seq, _parse(spec), state, result, exc_type, traceback, custom_id,
                    index, counts)
    booked = sum(_count(conn, group_id, parts, now) for group_id, parts in counts.items())
    return conn.total_changes - before - booked      # less the counters' own changes


def _fire(conn: sqlite3.Connection, seq: int) -> None:
    """Fire one job's follow-ups, if it is final and they have not fired."""
    row = conn.execute(f"SELECT state, result, exc_type, traceback, id, group_index FROM jobs "
                       f"WHERE seq = ? AND state IN {FINAL_SQL}", (seq,)).fetchone()
    if row is None:
        return
    spec = conn.execute("DELETE FROM canvas WHERE seq = ? RETURNING spec", (seq,)).fetchone()
    if spec is not None:
        state, result, exc_type, traceback, custom_id, index = row
        _follow(conn, seq, _parse(spec[0]), state, result, exc_type, traceback, custom_id,
                index, None)


def _follow(conn: sqlite3.Connection, seq: int, actions: dict, state: str, result: Any,
            exc_type: str | None, traceback: str | None, custom_id: str | None,
            index: int | None, counts: dict[str, Counter[int]] | None) -> None:
    """What a final job sets off (its canvas row already deleted). Successes of a
    chord's members are added to ``counts`` (group id -> part -> how many: counted by
    the caller), or counted now."""
    now = time.time()
    if state == "SUCCESS":
        for action in actions.get("ok", ()):
            kind = action[0]
            if kind == "go":
                # ignore_result stores no result: the next step gets None
                _release(conn, action[1], (result or "null") if action[2] else None)
            elif kind == "chord":
                part = (index or 0) // PART
                if counts is None:
                    _count(conn, action[1], Counter({part: 1}), now)
                else:
                    counts.setdefault(action[1], Counter())[part] += 1
        for action in actions.get("err", ()):
            _drop_target(conn, action)
        return
    failure = (result, exc_type, traceback, custom_id or format_id(seq))
    for action in actions.get("err", ()):
        kind = action[0]
        if kind == "fail":
            _fail(conn, action[1], failure, now)
        elif kind == "go":
            _release(conn, action[1], None)
        elif kind == "chord":
            _chord_failed(conn, action[1], failure, now)
    for action in actions.get("ok", ()):
        _drop_target(conn, action)


def _release(conn: sqlite3.Connection, seq: int, result: Any) -> None:
    """A waiting job becomes ready; ``result`` (JSON text, or None: nothing to prepend)
    goes first in its arguments."""
    if result is None:
        conn.execute("UPDATE jobs SET eta = 0 WHERE seq = ? AND state = 'PENDING' AND eta = ?",
                     (seq, WAITING))
        return
    conn.execute(
        "UPDATE jobs SET eta = 0, payload = '[[' || ? || "
        "CASE WHEN substr(payload, 3, 1) = ']' THEN '' ELSE ',' END || substr(payload, 3) "
        "WHERE seq = ? AND state = 'PENDING' AND eta = ?", (result, seq, WAITING))


def _fail(conn: sqlite3.Connection, seq: int, failure: tuple, now: float) -> None:
    """A waiting job ends as its cause did (FAILURE with the same exception), and its
    own follow-ups fire."""
    result, exc_type, traceback, _ = failure
    changed = conn.execute(
        "UPDATE jobs SET state = 'FAILURE', result = ?, exc_type = ?, traceback = ?, "
        "done = ? WHERE seq = ? AND state = 'PENDING' AND eta = ?",
        (result, exc_type, traceback, now, seq, WAITING)).rowcount
    if changed:
        _fire(conn, seq)


def _drop_target(conn: sqlite3.Connection, action: list) -> None:
    if action[0] in ("go", "fail", "drop"):
        _drop(conn, action[1])


def _drop(conn: sqlite3.Connection, seq: int) -> None:
    """Delete a waiting job that will never run, and everything it would have set off."""
    if not conn.execute("DELETE FROM jobs WHERE seq = ? AND state = 'PENDING' AND eta = ?",
                        (seq, WAITING)).rowcount:
        return
    spec = conn.execute("DELETE FROM canvas WHERE seq = ? RETURNING spec", (seq,)).fetchone()
    if spec is None:
        return
    actions = json.loads(spec[0])
    for action in (*actions.get("ok", ()), *actions.get("err", ())):
        if action[0] == "chord":
            body = conn.execute("DELETE FROM canvas_groups WHERE id = ? RETURNING body, "
                                "splice", (action[1],)).fetchone()
            conn.execute("DELETE FROM canvas_parts WHERE group_id = ?", (action[1],))
            if body is not None and body[0] is not None:
                for seq, _ in _bodies(conn, body[0], body[1]):
                    _drop(conn, seq)
        else:
            _drop(conn, action[1])


def _count(conn: sqlite3.Connection, group_id: str, parts: Counter[int],
           now: float) -> int:
    """Header members of a chord succeeded (how many per part); the last one releases
    the body. (A failed member never counts, so a chord that failed never reaches 0;
    the members of a plain group find no counter.) Returns how many rows it changed
    other than the bodies it released (the counters, the parts)."""
    start = conn.total_changes
    row = conn.execute("UPDATE canvas_groups SET remaining = remaining - ? WHERE id = ? AND "
                       "remaining > 0 RETURNING remaining, body, splice, total",
                       (sum(parts.values()), group_id)).fetchone()
    if row is None or row[1] is None:
        return conn.total_changes - start
    remaining, body, splice, total = row
    # A body that takes no results (splice 0) needs no parts.
    fresh = _count_parts(conn, group_id, parts, total, remaining != 0) if splice else {}
    if remaining != 0:
        return conn.total_changes - start
    bodies = _bodies(conn, body, splice)
    if any(t for _, t in bodies):
        results = _header_results(conn, group_id, total, fresh)
    else:       # a group body whose members all ignore the results
        results = None
        conn.execute("DELETE FROM canvas_parts WHERE group_id = ?", (group_id,))
    booked = conn.total_changes - start
    for seq, takes in bodies:
        _release(conn, seq, results if takes else None)
    return booked


def _count_parts(conn: sqlite3.Connection, group_id: str, parts: Counter[int], total: int,
                 store: bool) -> dict[int, str]:
    """Count the members that succeeded per part; join the results of each part they
    complete: stored in its row (``store``), or returned (the body is released now)."""
    joined: dict[int, str] = {}
    for part, succeeded in parts.items():
        size = min(PART, total - part * PART)
        left = conn.execute(
            "INSERT INTO canvas_parts (group_id, part, remaining) VALUES (?, ?, ?) "
            "ON CONFLICT DO UPDATE SET remaining = remaining - ? RETURNING remaining",
            (group_id, part, size - succeeded, succeeded)).fetchone()[0]
        if left == 0:
            text = _joined(conn, group_id, part * PART, size)
            if store:
                conn.execute("UPDATE canvas_parts SET results = ? WHERE group_id = ? AND "
                             "part = ?", (text, group_id, part))
            else:
                joined[part] = text
    return joined


def _header_results(conn: sqlite3.Connection, group_id: str, total: int,
                    fresh: dict[int, str]) -> str:
    """The header's results as one JSON list in header order: the parts' texts (stored,
    or ``fresh``: joined in this transaction), each part that has none (a chord counted
    before canvas_parts existed) joined now. The parts' rows are deleted."""
    stored = dict(conn.execute("DELETE FROM canvas_parts WHERE group_id = ? RETURNING part, "
                               "results", (group_id,)).fetchall())
    texts = []
    for part in range((total + PART - 1) // PART):
        text = fresh.get(part) or stored.get(part)
        if text is None:
            text = _joined(conn, group_id, part * PART, min(PART, total - part * PART))
        texts.append(text)
    return "[" + ",".join(texts) + "]"


def _joined(conn: sqlite3.Connection, group_id: str, first: int, size: int) -> str:
    """The results of header members ``first`` to ``first + size - 1``, joined by SQLite
    with commas: from ``jobs_group_results`` when every result is short (it covers the
    query: no lookup of the table rows), else from the rows themselves."""
    count, joined = conn.execute(
        "SELECT count(*), group_concat(result, ',') FROM (SELECT result FROM jobs WHERE "
        "group_id = ? AND group_index >= ? AND group_index < ? AND "
        f"length(result) <= {SHORT_RESULT} ORDER BY group_index)",
        (group_id, first, first + size)).fetchone()
    if count == size:
        return joined
    return conn.execute(
        "SELECT coalesce(group_concat(coalesce(result, 'null'), ','), '') FROM (SELECT "
        "result FROM jobs WHERE group_id = ? AND group_index >= ? AND group_index < ? "
        "ORDER BY group_index)", (group_id, first, first + size)).fetchone()[0]


def _bodies(conn: sqlite3.Connection, body: int, splice: int) -> list[tuple[int, int]]:
    """The jobs a chord's body starts with, (seq, takes the results): its one job, or
    each member of a group body (whose list is deleted: it is used once)."""
    if splice != GROUP_BODY:
        return [(body, splice)]
    row = conn.execute("DELETE FROM canvas WHERE seq = ? RETURNING spec", (-body,)).fetchone()
    return [] if row is None else [(seq, takes) for seq, takes in json.loads(row[0])["bodies"]]


def _chord_failed(conn: sqlite3.Connection, group_id: str, failure: tuple,
                  now: float) -> None:
    """A header member failed: the body never runs; it ends FAILURE with a ChordError
    naming the member and its exception (once, for the first failure written)."""
    row = conn.execute("UPDATE canvas_groups SET remaining = -1 WHERE id = ? AND "
                       "remaining > 0 RETURNING body, splice", (group_id,)).fetchone()
    if row is None:
        return
    conn.execute("DELETE FROM canvas_parts WHERE group_id = ?", (group_id,))
    if row[0] is None:
        return
    result, exc_type, _, culprit = failure
    info: dict = {}
    if isinstance(result, str):
        try:
            loaded = json.loads(result)
            info = loaded if isinstance(loaded, dict) else {}
        except ValueError:
            pass
    name = str(info.get("exc_type") or exc_type or "Exception").rsplit(".", 1)[-1]
    message = f"Dependency {culprit} raised {name}({str(info.get('exc_message', ''))!r})"
    error = json.dumps({"exc_type": CHORD_ERROR, "exc_message": message,
                        "exc_args": [message]})
    for seq, _ in _bodies(conn, row[0], row[1]):
        _fail(conn, seq, (error, CHORD_ERROR, None, culprit), now)


# ------------------------------------------------------------------ expiry

def awaited(conn: sqlite3.Connection) -> str:
    """A condition on ``jobs`` that keeps the results a waiting chord's body will read
    (its header's), for result expiry; "" while no chord waits (the common case)."""
    if conn.execute("SELECT 1 FROM canvas_groups WHERE remaining > 0 LIMIT 1").fetchone():
        return (" AND (group_id IS NULL OR group_id NOT IN "
                "(SELECT id FROM canvas_groups WHERE remaining > 0))")
    return ""


def expire_groups(conn: sqlite3.Connection, before: float) -> int:
    """Delete the groups sent before ``before`` that no chord waits on and whose every
    member is gone (expired or forgotten), as Celery's group results expire."""
    deleted = conn.execute(
        "DELETE FROM canvas_groups WHERE created < ? AND (remaining IS NULL OR remaining <= 0) "
        "AND NOT EXISTS (SELECT 1 FROM jobs WHERE group_id = canvas_groups.id)",
        (before,)).rowcount
    if deleted:     # a chord's parts go with its body's release; none should be left
        conn.execute("DELETE FROM canvas_parts WHERE group_id NOT IN "
                     "(SELECT id FROM canvas_groups)")
    return deleted


def forget_group(conn: sqlite3.Connection, group_id: str) -> None:
    """Forget a group (``GroupResult.forget``), unless a chord's body still waits on it."""
    conn.execute("DELETE FROM canvas_groups WHERE id = ? AND (remaining IS NULL OR "
                 "remaining <= 0)", (group_id,))


# ------------------------------------------------------------------ reading

def group(conn: sqlite3.Connection, group_id: str) -> tuple | None:
    """(total, remaining, body seq) of a group or chord; None when unknown."""
    return conn.execute("SELECT total, remaining, body FROM canvas_groups WHERE id = ?",
                        (group_id,)).fetchone()


def members(conn: sqlite3.Connection, group_id: str) -> list[tuple[int, str | None]]:
    """(seq, custom id) of a group's members, in order."""
    return conn.execute("SELECT seq, id FROM jobs WHERE group_id = ? ORDER BY group_index",
                        (group_id,)).fetchall()


def tail(conn: sqlite3.Connection, group_id: str) -> tuple[int, tuple[int, str | None] | None]:
    """(how many members, (seq, custom id) of the last one or None) of a group: two
    probes of the index, where ``members`` reads the whole group."""
    size = conn.execute("SELECT count(*) FROM jobs WHERE group_id = ?", (group_id,)).fetchone()
    last = conn.execute("SELECT seq, id FROM jobs WHERE group_id = ? ORDER BY group_index DESC "
                        "LIMIT 1", (group_id,)).fetchone()
    return size[0], last


def progress(conn: sqlite3.Connection, group_id: str) -> tuple[int, int, int | None]:
    """(finished, succeeded, index of the first member not SUCCESS) of a group."""
    done, ok, first = conn.execute(
        f"SELECT count(*) FILTER (WHERE state IN {FINAL_SQL}), "
        "count(*) FILTER (WHERE state = 'SUCCESS'), "
        "min(group_index) FILTER (WHERE state <> 'SUCCESS') FROM jobs WHERE group_id = ?",
        (group_id,)).fetchone()
    return done, ok, first


def states(conn: sqlite3.Connection, group_id: str) -> dict[str, int]:
    """How many members of a group are in each state."""
    return dict(conn.execute("SELECT state, count(*) FROM jobs WHERE group_id = ? "
                             "GROUP BY state", (group_id,)).fetchall())


def chord_of(conn: sqlite3.Connection, body: int) -> str | None:
    """The header group of the chord whose body is this job."""
    row = conn.execute("SELECT id FROM canvas_groups WHERE body = ?", (body,)).fetchone()
    return None if row is None else row[0]


def results(conn: sqlite3.Connection, group_id: str) -> list[tuple]:
    """(state, serializer, result, exc_type, traceback, task, seq, id) per member, in order."""
    return conn.execute("SELECT state, serializer, result, exc_type, traceback, task, seq, id "
                        "FROM jobs WHERE group_id = ? ORDER BY group_index",
                        (group_id,)).fetchall()


def children(conn: sqlite3.Connection, job_id: str) -> list[tuple[int, str | None]]:
    """(seq, custom id) of the jobs this job's outcome sent."""
    return conn.execute("SELECT seq, id FROM jobs WHERE parent_id = ? AND eta <> ? "
                        "ORDER BY seq", (job_id, WAITING)).fetchall()
