"""Job ids: Celery-style UUID strings that carry the job's row number.

A generated id is a UUID (version 8, "custom") whose bits are the job's
``seq``, the table's integer primary key: 42 bits of milliseconds and 21 bits
of a per-process counter, so ids sort by time and new rows append to the
table. Because the id *is* the key, looking a job up by such an id needs no
index, and inserting a job writes one index page fewer (about a fifth of the
cost of ``delay()`` on the machines we measured). Any other id a user passes
(``task_id="invoice-42"``) is stored as text under a unique index of its own.

The counter's top bit splits the numbers in two spaces that never meet. Numbers
drawn with it clear (``new_seq``, ``new_seqs``) are inserted at once and a clash is
detected at insert. Numbers with it set belong to a producer's inbox
(store/inbox.py): the next 10 bits are the inbox's slot, unique among live
inboxes, and the last 10 count within the millisecond (``SlotSeqs``), so no two
processes can draw the same one even though the row reaches ``jobs`` only later.
"""
from __future__ import annotations

import os
import random
import threading
import time

_MARK = 0x0_6C6F_6361_6C71 & ((1 << 53) - 1)    # "localq", in the low 53 bits
_COUNTER_BITS = 21
INBOX_BIT = 1 << (_COUNTER_BITS - 1)   # the counter's top bit: an inbox's number
SLOT_BITS = 10                         # then the inbox's slot
_LOCAL_BITS = _COUNTER_BITS - 1 - SLOT_BITS
SLOTS = 1 << SLOT_BITS
_lock = threading.Lock()
_state = {"ms": -1, "n": 0}
# A random start for each millisecond's counter, from a PRNG: an id is no secret (it
# is the row number), and a clash is detected at insert. ``random`` is seeded from
# the OS, and again in a forked child, so that processes draw different starts.
_start = random.Random().getrandbits


_pid = [os.getpid()]


def current_pid() -> int:
    """os.getpid(), without its system call on every send (kept by the fork hook)."""
    return _pid[0]


def _after_fork() -> None:
    """A forked child must not repeat its parent's numbers: its counter starts anew."""
    global _lock, _start
    _lock = threading.Lock()
    _start = random.Random().getrandbits
    _state["ms"] = -1
    _pid[0] = os.getpid()


os.register_at_fork(after_in_child=_after_fork)


def new_seq() -> int:
    """A fresh row number: time-ordered, and ordered within this process."""
    with _lock:
        return _take(1)


def new_seqs(count: int) -> range:
    """``count`` fresh row numbers in a row, for one lock instead of ``count`` (a map's
    items). A count past the millisecond's counter carries into the next millisecond."""
    if count <= 0:
        return range(0)
    with _lock:
        first = _take(count)
    return range(first, first + count)


def _take(count: int) -> int:
    """The first of ``count`` (1 to INBOX_BIT) numbers after the last one given (under
    _lock), all with the counter's top bit clear."""
    ms = time.time_ns() // 1_000_000
    state = _state
    if ms > state["ms"]:
        state["ms"] = ms
        # A random start in the lower quarter leaves room to count up within one ms
        # and makes two processes unlikely to pick the same number (a clash is
        # detected at insert, and a new number taken).
        n = _start(_COUNTER_BITS - 2)
    else:
        n = state["n"] + 1
    if n + count > INBOX_BIT:                # the inboxes' half: go on in the next ms
        state["ms"] += 1
        n = _start(_COUNTER_BITS - 2) if count <= INBOX_BIT // 2 else 0
    state["n"] = n + count - 1
    return (state["ms"] << _COUNTER_BITS) + n


class SlotSeqs:
    """The row numbers of one inbox (its slot's space): increasing, at most 1,024 per
    millisecond (then the next millisecond's), above ``floor`` (the last number a
    previous holder of the slot gave out, should the clock have gone back since).
    Not thread-safe: the inbox calls it under its lock."""

    __slots__ = ("high", "last")

    def __init__(self, slot: int, floor: int) -> None:
        if not 0 <= slot < SLOTS:
            raise ValueError(f"inbox slot {slot} out of range")
        self.high = INBOX_BIT | (slot << _LOCAL_BITS)
        self.last = floor

    def take(self) -> int:
        # Under the module's lock: this process's numbers, direct and inbox, increase
        # together, so that its jobs run in the order it sent them. An inbox number
        # sorts after every direct one of its millisecond; the next direct one is
        # drawn in a later millisecond.
        with _lock:
            state = _state
            ms = max(time.time_ns() // 1_000_000, state["ms"])
            last_ms = self.last >> _COUNTER_BITS
            if ms > last_ms:
                n = 0
            else:
                ms, n = last_ms, (self.last & ((1 << _LOCAL_BITS) - 1)) + 1
                if n >> _LOCAL_BITS:
                    ms, n = ms + 1, 0
            self.last = seq = (ms << _COUNTER_BITS) | self.high | n
            if ms >= state["ms"]:
                state["ms"], state["n"] = ms, INBOX_BIT - 1
        return seq


def inbox_slot(seq: int) -> int | None:
    """The slot of the inbox a row number was drawn for; None for a direct one."""
    if not seq & INBOX_BIT:
        return None
    return (seq >> _LOCAL_BITS) & (SLOTS - 1)


def _low_hex(low9: int) -> str:
    """The id's last 64 bits as text, "xxxx-xxxxxxxxxxxx": they depend on 9 bits of seq."""
    h = f"{(0b10 << 62) | (low9 << 53) | _MARK:016x}"
    return f"{h[:4]}-{h[4:]}"


_LOW_HEX = [_low_hex(i) for i in range(512)]   # delay() formats one id per call


def format_id(seq: int) -> str:
    ms, n = seq >> _COUNTER_BITS, seq & ((1 << _COUNTER_BITS) - 1)
    h = f"{ms:012x}"
    return f"{h[:8]}-{h[8:]}-8{n >> 9:03x}-{_LOW_HEX[n & 0x1FF]}"


def parse_id(text: str) -> int | None:
    """The row number of an id made by :func:`format_id`; None for any other id."""
    if len(text) != 36 or text[14] != "8":
        return None
    try:
        value = int(text.replace("-", ""), 16)
    except ValueError:
        return None
    if value & ((1 << 53) - 1) != _MARK or (value >> 62) & 0b11 != 0b10:
        return None
    ms = value >> 80
    if ms >> 42:
        return None
    n = (((value >> 64) & 0xFFF) << 9) | ((value >> 53) & 0x1FF)
    return (ms << _COUNTER_BITS) | n


def new_id() -> str:
    return format_id(new_seq())
