"""Doorbells: a ringer reaches whoever holds a bell's name now, and harms no live bell."""
from __future__ import annotations

import os

from localq.wakeup import Doorbell, Ringer


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
