"""The supervisor/child wire: the one owner of what travels over a child's channel.

Down (supervisor -> child), one message per batch:

- ``jobs_message(claimed)``: a list of ``ChildJob`` tuples, the leading fields of
  ``Claimed`` (made by slicing: the import-time check below keeps the two in step);
- ``STOP`` (None): warm shutdown, nothing more is coming.

Up (child -> supervisor):

- ``outcomes_message(outcomes)``: ``("o", [Outcome, ...])``;
- ``state_message(seq, state, meta)``: ``("s", seq, state, meta)``, a running job's
  custom state (``update_state``), its meta already encoded;
- ``exit_message(reason, not_started, outcomes)``: ``("x", reason, [seq, ...],
  [Outcome, ...])``, sent once before a child exits on its own (recycling), so
  that the supervisor learns of its last outcomes and of its exit together and
  never hands it more work in between.

Plain tuples and lists, the cheapest things to pickle: an outcome travels as a
plain tuple in ``Outcome``'s field order (a NamedTuple pickles at about three
times the cost, and most messages carry one outcome while jobs stream in);
``read`` gives the supervisor ``Outcome``s again and, for an exit, an ``Exit``.
``send`` pickles with the plain pickler (multiprocessing's ``Connection.send`` builds a
``ForkingPickler`` per message, several times the cost, for reductions of sockets and
the like that these messages never hold); the other end reads them with ``recv()``.

Beside the channel, each child shares one page of memory with its supervisor, its
slot, mapped before the fork (``new_slot``) and read as 8-byte words
(``slot_words``): ``RUNNING`` holds the seq of the job the child is running (0
between jobs), so that a crash is blamed on that job alone; ``SKIPS`` counts the
seqs from ``FIRST_SKIP`` on: jobs revoked after they were handed over, which the
child reports REVOKED instead of starting. The supervisor writes a seq before the
count that covers it. ``STOP_ASKED`` is set by the supervisor before it sends the
child SIGTERM: a SIGTERM without it was sent to the whole process group (systemd's
default KillMode, ``timeout``), is meant for the supervisor, and the child ignores it.
"""
from __future__ import annotations

import mmap
import pickle
from typing import TYPE_CHECKING, Any, Iterable, NamedTuple

from ..store.records import Claimed, Outcome

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

STOP = None
_OUTCOMES, _EXIT, _STATE = "o", "x", "s"
RUNNING, SKIPS, STOP_ASKED, FIRST_SKIP = 0, 1, 2, 3     # the slot's words
SKIP_MAX = mmap.PAGESIZE // 8 - FIRST_SKIP


def new_slot() -> mmap.mmap:
    """A child's slot: anonymous memory, shared with the child forked after it."""
    return mmap.mmap(-1, mmap.PAGESIZE)


def slot_words(slot: mmap.mmap) -> memoryview:
    """The slot as 8-byte words (release the view before closing the slot)."""
    return memoryview(slot).cast("q")


class ChildJob(NamedTuple):
    """A job as a child receives it: what it needs to run it, no more."""
    seq: int
    custom_id: str | None
    task: str
    serializer: str
    payload: Any
    options: str | None
    retries: int


_WIDTH = len(ChildJob._fields)
if Claimed._fields[:_WIDTH] != ChildJob._fields:     # a reordered Claimed must fail loudly
    raise ImportError("ChildJob's fields must be the leading fields of Claimed")


class Exit(NamedTuple):
    """A child's notice that it leaves on its own."""
    reason: str
    not_started: list[int]       # seqs of the jobs it was handed but did not start


def send(conn: Connection, message: Any) -> None:
    """Send one message of this module over a child's channel (see the docstring)."""
    conn.send_bytes(pickle.dumps(message, pickle.HIGHEST_PROTOCOL))


def jobs_message(jobs: Iterable[Claimed]) -> list[tuple]:
    return [job[:_WIDTH] for job in jobs]


def outcomes_message(outcomes: list[Outcome]) -> tuple:
    return (_OUTCOMES, [tuple(o) for o in outcomes])


def exit_message(reason: str, not_started: list[int], outcomes: list[Outcome]) -> tuple:
    return (_EXIT, reason, not_started, [tuple(o) for o in outcomes])


def state_message(seq: int, state: str, meta: Any) -> tuple:
    return (_STATE, seq, state, meta)


def task_state(message: tuple) -> tuple[int, str, Any] | None:
    """(seq, state, meta) if the message is a state_message, else None."""
    return (message[1], message[2], message[3]) if message[0] == _STATE else None


_make = tuple.__new__


def read(message: tuple) -> tuple[list[Outcome], Exit | None]:
    """A child's message: its outcomes, and its exit notice if it is one."""
    if message[0] == _OUTCOMES:
        return [_make(Outcome, t) for t in message[1]], None
    return [_make(Outcome, t) for t in message[3]], Exit(message[1], message[2])
