"""Job ids: Celery-style UUID strings that carry the job's row number.

A generated id is a UUID (version 8, "custom") whose bits are the job's
``seq``, the table's integer primary key: 42 bits of milliseconds and 21 bits
of a per-process counter, so ids sort by time and new rows append to the
table. Because the id *is* the key, looking a job up by such an id needs no
index, and inserting a job writes one index page fewer (about a fifth of the
cost of ``delay()`` on the machines we measured). Any other id a user passes
(``task_id="invoice-42"``) is stored as text under a unique index of its own.
"""
from __future__ import annotations

import os
import random
import threading
import time

_MARK = 0x0_6C6F_6361_6C71 & ((1 << 53) - 1)    # "localq", in the low 53 bits
_COUNTER_BITS = 21
_lock = threading.Lock()
_state = {"ms": -1, "n": 0}
# A random start for each millisecond's counter, from a PRNG: an id is no secret (it
# is the row number), and a clash is detected at insert. ``random`` is seeded from
# the OS, and again in a forked child, so that processes draw different starts.
_start = random.Random().getrandbits


def _after_fork() -> None:
    """A forked child must not repeat its parent's numbers: its counter starts anew."""
    global _lock, _start
    _lock = threading.Lock()
    _start = random.Random().getrandbits
    _state["ms"] = -1


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
    """The first of ``count`` (>= 1) numbers after the last one given (under _lock)."""
    ms = time.time_ns() // 1_000_000
    state = _state
    if ms > state["ms"]:
        state["ms"] = ms
        # A random start in the lower half leaves room to count up within one ms
        # and makes two processes unlikely to pick the same number (a clash is
        # detected at insert, and a new number taken).
        state["n"] = _start(_COUNTER_BITS - 1)
    else:
        state["n"] += 1
    first = (state["ms"] << _COUNTER_BITS) + state["n"]
    last = first + count - 1                 # past the counter's bits: the next ms
    state["ms"], state["n"] = last >> _COUNTER_BITS, last & ((1 << _COUNTER_BITS) - 1)
    return first


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
