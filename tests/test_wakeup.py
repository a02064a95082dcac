"""Doorbells: a ringer reaches whoever holds a bell's name now, and harms no live bell."""
from __future__ import annotations

import os

from localq.wakeup import CARRY_MAX, Doorbell, Ringer, carried_outcomes, outcomes_message


def test_a_bell_bound_again_under_the_same_name_is_rung_and_kept(tmp_path):
    """A bell's name is reused (a new process with a recycled pid): the ringer, which
    reached the old bell before, must ring the new one and not remove it as dead."""
    folder = str(tmp_path / "q.db.d")
    first = Doorbell(folder, "w1.0")
    keeper = Doorbell(folder, "w1.1")         # keeps the folder while "w1.0" is remade
    ringer = Ringer(folder, "w")
    try:
        ringer.ring()
        assert first.drain_messages() == [b"!"]
        first.close()
        second = Doorbell(folder, "w1.0")
        try:
            ringer.ring()
            assert second.drain_messages() == [b"!"]
            assert os.path.exists(second.path)
            ringer.ring()
            assert second.drain_messages() == [b"!"]
        finally:
            second.close()
    finally:
        ringer.close()
        keeper.close()
    assert not os.path.exists(folder)


def test_a_dead_bell_is_removed_and_the_others_still_rung(tmp_path):
    folder = str(tmp_path / "q.db.d")
    bells = [Doorbell(folder, f"w{i}.0") for i in range(6)]    # more than are connected
    ringer = Ringer(folder, "w")
    try:
        ringer.ring()
        assert all(b.drain_messages() == [b"!"] for b in bells)
        dead = bells.pop(2)
        dead.sock.close()                     # died uncleanly: its socket file is left
        ringer.ring()
        assert not os.path.exists(dead.path)
        assert all(b.drain_messages() for b in bells)       # (some twice: harmless)
    finally:
        ringer.close()
        for b in bells:
            b.close()


def test_a_ring_carries_outcomes_that_fit_and_a_waiter_reads_them_back():
    outcomes = [(7, "tasks.add", "json", "5"), (2**40, "tasks.é", "json", '"ü\\n"')]
    message = outcomes_message(outcomes)
    assert list(carried_outcomes(message)) == outcomes
    # Too big for one ring: those that fit are carried, the rest is left to the file.
    big = [(i, "t", "json", "x" * 600) for i in range(8)]
    assert [o[0] for o in carried_outcomes(outcomes_message(big))] == [0, 1, 2]
    assert outcomes_message([(1, "t", "json", "x" * CARRY_MAX)]) == b"!"
    assert outcomes_message([(1, "t", "json", "\udce9")]) == b"!"    # not storable text
    # A plain ring, or one cut short or garbled, carries nothing (it still wakes).
    for junk in (b"!", b"", b"S", message[:-1], message[:5], b"S" + b"\xff" * 40):
        assert [o for o in carried_outcomes(junk) if o not in outcomes] == []
    assert list(carried_outcomes(message[:-1])) == outcomes[:1]


def test_a_bell_reads_a_carrying_ring_whole(tmp_path):
    folder = str(tmp_path / "q.db.d")
    bell = Doorbell(folder, "g1.0")
    ringer = Ringer(folder, "g")
    try:
        outcomes = [(i, "t", "json", "y" * 200) for i in range(CARRY_MAX // 230)]
        ringer.ring(outcomes_message(outcomes))
        [message] = bell.drain_messages()
        assert list(carried_outcomes(message)) == outcomes
    finally:
        ringer.close()
        bell.close()
