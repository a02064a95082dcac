"""Every row layout that crosses a module or a process, and its one builder.

A layout read or written by position in two places is a silent corruption
waiting for a reordered field, so each has one owner here:

- ``JobRow``: a new job, as ``app.new_job`` makes it and the INSERT takes it
  (``INSERT_JOB``'s columns are its fields; ``split_id`` says how an id is stored);
- ``Claimed``: a claimed job, in the order of the claim's RETURNING clause
  (``CLAIM_RETURNING`` is made from its fields);
- ``Outcome``: a finished attempt as a child reports it and the store writes it,
  with one builder per kind (``succeeded``, ``failed``, ``retrying``,
  ``revoked``, ``put_back``);
- the job options JSON (``encode_options``/``decode_options``/``acks_late``).

Also what a row means to Python: states, the ready predicate, rows as dicts.
The store's modules are the only ones that speak SQL; the layouts here are
shared with the worker (protocol.py sends ``Claimed`` and ``Outcome``).
"""
from __future__ import annotations

import json
import sqlite3
from typing import Any, NamedTuple, Sequence

from ..ids import format_id, parse_id

FINAL_STATES = ("SUCCESS", "FAILURE", "REVOKED")
FINAL_SQL = "('SUCCESS', 'FAILURE', 'REVOKED')"     # FINAL_STATES as an SQL list
WAITING_STATES = ("PENDING", "RETRY")
READY_WHERE = "state IN ('PENDING', 'RETRY')"

JOB_COLUMNS = ("seq, id, task, queue, priority, state, serializer, payload, options, eta, "
               "expires, retries, owner, pid, created, started, done, result, exc_type, "
               "traceback, revoke, group_id, group_index, parent_id, root_id")


# ------------------------------------------------------------------ new jobs

def _columns(fields: tuple[str, ...]) -> str:
    """The columns of a layout's fields, in order (``custom_id`` is the ``id`` column)."""
    return ", ".join("id" if f == "custom_id" else f for f in fields)


def split_id(job_id: str) -> tuple[int | None, str | None]:
    """How a public id is stored: (seq, None) for a generated id, which carries its row
    number; (None, id) for an id a user chose."""
    seq = parse_id(job_id)
    return (seq, None) if seq is not None else (None, job_id)


class JobRow(NamedTuple):
    """A new job, encoded and checked, as the jobs table's INSERT takes it (INSERT_JOB
    names these fields as its columns, in this order)."""
    seq: int | None              # the row number of a generated id; None for a chosen id
    custom_id: str | None        # a chosen id; None for a generated one
    task: str
    queue: str
    lane: str | None
    priority: int
    serializer: str
    payload: Any
    options: str | None
    eta: float
    expires: float | None
    created: float
    group_id: str | None = None
    group_index: int | None = None
    parent_id: str | None = None     # the canvas: the job whose outcome sends this one
    root_id: str | None = None       # the first job of its workflow

    @property
    def id(self) -> str:
        """The job's public id."""
        return self.custom_id or format_id(self.seq or 0)


def in_list(values: Sequence[Any]) -> tuple[str, list[Any]]:
    """The placeholders of ``IN (...)`` for ``values`` and the values to bind, padded
    by repeating the last to a power of two: a statement is compiled and cached per
    distinct text, each with one program step per value, so lists of every length from
    1 to 500 kept hundreds of large statements in a connection's cache (megabytes of the
    supervisor's memory); padded, a handful. A repeated value changes no IN."""
    size = 1 << max(0, len(values) - 1).bit_length()
    padded = list(values)
    if padded:
        padded.extend([padded[-1]] * (size - len(padded)))
    return ",".join("?" * len(padded)), padded


INSERT_JOB = (f"INSERT INTO jobs (state, {_columns(JobRow._fields)}) "
              f"VALUES ('PENDING', {', '.join('?' * len(JobRow._fields))}) "
              "ON CONFLICT DO NOTHING")


# ------------------------------------------------------------------ claimed jobs

class Claimed(NamedTuple):
    """A claimed job, as the claim returns it (CLAIM_RETURNING is made from these
    fields: ``custom_id`` is the ``id`` column)."""
    seq: int
    custom_id: str | None        # the id a user chose; None for a generated one
    task: str
    serializer: str
    payload: Any
    options: str | None
    retries: int
    expires: float | None
    revoke: int

    @property
    def id(self) -> str:
        """The job's public id (formatted here, not in the claim: only logs need it)."""
        return self.custom_id or format_id(self.seq)


CLAIM_RETURNING = _columns(Claimed._fields)


# ------------------------------------------------------------------ outcomes

class Outcome(NamedTuple):
    """A finished attempt as a worker reports it (over the wire: see worker/protocol.py)."""
    seq: int
    state: str                   # SUCCESS, FAILURE, RETRY, REVOKED, or PENDING (put back)
    result: Any = None           # encoded value, or exception; RETRY: None or
                                 # (payload, options) of the next attempt, each None: same
    exc_type: str | None = None
    traceback: str | None = None
    started: float | None = None
    ended: float = 0.0
    pid: int | None = None
    eta: float = 0.0             # RETRY: when to run again
    exc_message: str | None = None


# The builders below fill the tuple directly: succeeded() runs once per job in a
# child, where the NamedTuple constructor's keyword handling would cost more.
_make = tuple.__new__


def succeeded(seq: int, result: Any, started: float, ended: float, pid: int) -> Outcome:
    return _make(Outcome, (seq, "SUCCESS", result, None, None, started, ended, pid, 0.0, None))


def failed(seq: int, result: Any, exc_type: str, traceback: str | None,
           started: float | None, ended: float, pid: int | None,
           exc_message: str | None) -> Outcome:
    """A FAILURE: ``result`` is the encoded exception."""
    return _make(Outcome, (seq, "FAILURE", result, exc_type, traceback, started, ended, pid,
                           0.0, exc_message))


def retrying(seq: int, exc_type: str, traceback: str | None, started: float, ended: float,
             pid: int, eta: float, exc_message: str | None, payload: Any = None,
             options: str | None = None) -> Outcome:
    """A RETRY: ``payload`` is the next attempt's encoded arguments and ``options`` its
    options column (None: the same)."""
    return _make(Outcome, (seq, "RETRY", (payload, options), exc_type, traceback, started,
                           ended, pid, eta, exc_message))


def revoked(seq: int, result: Any, ended: float, pid: int | None,
            exc_message: str | None, started: float | None = None) -> Outcome:
    """A REVOKED: ``result`` is the encoded TaskRevokedError. ``started``: None for a job
    stopped from outside (revoked, expired, terminated); the time it started for a job
    that ended itself so (it raised Ignore or Reject)."""
    return _make(Outcome, (seq, "REVOKED", result, "localq.exceptions.TaskRevokedError", None,
                           started, ended, pid, 0.0, exc_message))


def put_back(seq: int) -> Outcome:
    """Not run (or run, but its outcome lost, or rejected with ``Reject(requeue=True)``):
    the job goes back to PENDING, its retries unchanged."""
    return _make(Outcome, (seq, "PENDING", None, None, None, None, 0.0, None, 0.0, None))


# ------------------------------------------------------------------ job options

def encode_options(time_limit: float | None, soft_time_limit: float | None,
                   acks_late: bool) -> str | None:
    """The options that travel with a job (its ``options`` column): per-call limits, and
    acks_late when False. None when there are none (the common case)."""
    opts: dict[str, Any] = {}
    if time_limit is not None:
        opts["time_limit"] = float(time_limit)
    if soft_time_limit is not None:
        opts["soft_time_limit"] = float(soft_time_limit)
    if not acks_late:
        opts["acks_late"] = False
    return json.dumps(opts, separators=(",", ":")) if opts else None


def with_eta(options: str | None, eta: float) -> str:
    """A job's options with the time it was sent to run at (``self.request.eta``)."""
    return encode_with_eta(decode_options(options), eta)


def encode_with_eta(options: dict, eta: float) -> str:
    """Decoded options, with an ETA, as the options column."""
    return json.dumps({**options, "eta": eta}, separators=(",", ":"))


def decode_options(text: str | None) -> dict:
    """A job's ``options`` column as a dict ({} for none)."""
    return json.loads(text) if text else {}


def acks_late(text: str | None) -> bool:
    """Does this job's ``options`` column leave acks_late on (the default)? Unreadable
    options count as the default: recovery puts the job back rather than fail it."""
    try:
        opts = decode_options(text)
    except ValueError:
        return True
    return not (isinstance(opts, dict) and opts.get("acks_late") is False)


# ------------------------------------------------------------------ reading rows

def job_dict(names: list[str], row: tuple) -> dict:
    """A job row as a dict, with its public id (generated ids are not stored)."""
    job = dict(zip(names, row))
    if job["id"] is None:
        job["id"] = format_id(job["seq"])
    return job


def column_names(cur: sqlite3.Cursor) -> list[str]:
    return [d[0] for d in cur.description]
