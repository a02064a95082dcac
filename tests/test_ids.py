"""Job ids: generated ids carry the row number; any other id is stored as text."""
from __future__ import annotations

import uuid

from hypothesis import given
from hypothesis import strategies as st

from localq.ids import format_id, new_id, new_seq, parse_id


@given(st.integers(0, (1 << 63) - 1))
def test_format_and_parse_round_trip(seq):
    text = format_id(seq)
    assert uuid.UUID(text).version == 8
    assert parse_id(text) == seq


@given(st.uuids())
def test_other_uuids_are_not_mistaken_for_generated_ids(value):
    assert parse_id(str(value)) is None


def test_generated_ids_sort_by_time_and_never_repeat_in_a_process():
    seqs = [new_seq() for _ in range(50_000)]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert parse_id(new_id()) is not None


def test_custom_and_generated_ids_are_both_found_and_idempotent(app):
    from sample_tasks import add
    mine = add.apply_async((1, 2), task_id="invoice-42")
    generated = add.delay(3, 4)
    reused = add.apply_async((9, 9), task_id=generated.id)     # a generated id, sent again
    assert reused.id == generated.id
    assert app.store.job("invoice-42")["id"] == "invoice-42"
    assert app.store.job(generated.id)["id"] == generated.id
    assert app.store.states([mine.id, generated.id, "nope"]) == {
        mine.id: "PENDING", generated.id: "PENDING"}
    assert sum(c for *_, c in app.store.counts()) == 2
    with app.worker(concurrency=1):
        assert mine.get(timeout=10) == 3 and generated.get(timeout=10) == 7


def _draw_from(ms: int) -> set[int]:
    """Wait (spinning) for millisecond ``ms`` to begin, then draw 20 row numbers."""
    import time
    while time.time_ns() // 1_000_000 < ms:
        pass
    return {new_seq() for _ in range(20)}


def test_a_forked_child_does_not_repeat_its_parents_row_numbers():
    """Parent and child draw at the start of the same millisecond after a fork: a child
    that went on with its parent's random state draws the very same numbers. Two
    independent draws are equal about once in 500,000 (and overlap, which an insert
    detects and draws again for, about once in 13,000): three equal in a row is the bug."""
    import os
    import time
    repeated = []
    for _ in range(3):
        new_seq()                                 # the parent's counter is under way
        start = time.time_ns() // 1_000_000 + 20  # after the fork, in both
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:                              # the child: its numbers, then exit
            try:
                os.write(write, ",".join(map(str, _draw_from(start))).encode())
            finally:
                os._exit(0)
        parent = _draw_from(start)
        os.close(write)
        with os.fdopen(read, "rb") as f:
            child = {int(s) for s in f.read().decode().split(",")}
        assert os.waitpid(pid, 0)[1] == 0
        assert len(child) == 20
        repeated.append(parent == child)
    assert not all(repeated)
