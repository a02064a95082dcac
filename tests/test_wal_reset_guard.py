"""localq's guard against SQLite's WAL-reset bug (https://sqlite.org/wal.html#walresetbug),
on this machine's real SQLite: with an affected version no localq connection checkpoints
on its own, every checkpoint waits for the write lock, the -wal file is cut back to
WAL_FILE_KEPT only (its size still says when to checkpoint), and the WAL stays bounded.
On a fixed SQLite the same tests check that SQLite's own checkpoints are kept."""
from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading

import pytest
from conftest import wait_for

from localq.store import Store
from localq.store.connection import WAL_CHECKPOINT_BYTES
from localq.store.schema import PAGE_SIZE, WAL_FILE_KEPT, WAL_RESET_BUG, has_wal_reset_bug


def test_which_sqlite_versions_have_the_wal_reset_bug():
    assert has_wal_reset_bug((3, 40, 1)) and has_wal_reset_bug((3, 51, 2))
    assert has_wal_reset_bug((3, 44, 5)) and has_wal_reset_bug((3, 50, 6))
    assert not has_wal_reset_bug((3, 44, 6)) and not has_wal_reset_bug((3, 50, 7))
    assert not has_wal_reset_bug((3, 51, 3)) and not has_wal_reset_bug((3, 53, 0))
    assert not has_wal_reset_bug((3, 6, 23))           # before WAL existed
    assert WAL_RESET_BUG == has_wal_reset_bug(sqlite3.sqlite_version_info)


def test_no_localq_connection_checkpoints_on_its_own_with_the_bug(app):
    from sample_tasks import add

    add.delay(1, 2)                                   # the app's connections, opened
    other = Store(app.path)                           # and those of a Store of its own
    try:
        other.checkpoint()
        expected = 0 if WAL_RESET_BUG else WAL_CHECKPOINT_BYTES // PAGE_SIZE
        kept = WAL_FILE_KEPT if WAL_RESET_BUG else -1     # -1: SQLite's default
        for db in (app.store.db, other.db):
            with db.read() as conn:
                assert conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == expected
                assert conn.execute("PRAGMA journal_size_limit").fetchone()[0] == kept
            with db.transaction() as conn:
                assert conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == expected
                assert conn.execute("PRAGMA journal_size_limit").fetchone()[0] == kept
    finally:
        other.close()


def test_a_checkpoint_waits_for_another_process_holding_the_write_lock(app):
    from sample_tasks import add

    for i in range(500):                              # frames in the WAL, not in the file
        add.delay(i, i)
    size_before = os.path.getsize(app.path)
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sqlite3, sys\n"
         f"c = sqlite3.connect({app.path!r}, isolation_level=None)\n"
         "c.execute('BEGIN IMMEDIATE'); print('locked', flush=True)\n"
         "sys.stdin.readline(); c.execute('ROLLBACK')\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdin is not None
        assert holder.stdout.readline() == "locked\n"
        done = threading.Event()
        errors: list[BaseException] = []

        def checkpoint() -> None:
            try:
                app.store.checkpoint()
            except BaseException as exc:              # reported by the test, below
                errors.append(exc)
            done.set()

        thread = threading.Thread(target=checkpoint)
        thread.start()
        # While the other process holds the lock, the checkpoint waits (without the
        # guard, a PASSIVE checkpoint would copy the frames into the file at once).
        if WAL_RESET_BUG:
            assert not done.wait(1.0), "the checkpoint did not wait for the write lock"
            assert os.path.getsize(app.path) == size_before
        holder.stdin.write("\n")
        holder.stdin.flush()
        thread.join(30)
        assert done.is_set() and not errors, errors
        assert os.path.getsize(app.path) > size_before   # then it copied the frames
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.wait(10)


@pytest.mark.skipif(not WAL_RESET_BUG, reason="SQLite checkpoints on its own: no sizes to read")
def test_the_wal_file_is_cut_back_to_its_kept_size_only_so_its_size_says_when_to_checkpoint(app):
    from sample_tasks import add

    wal = app.path + "-wal"
    add.delay(0, 0)
    while os.path.getsize(wal) <= WAL_FILE_KEPT:      # content past the kept size
        for i in range(100):
            add.delay(i, i)
    size_before = os.path.getsize(app.path)
    app.store.checkpoint(past=WAL_FILE_KEPT)          # due: the file says so
    assert os.path.getsize(app.path) > size_before
    add.delay(1, 1)                   # the WAL restarts from its start: the file is cut
    assert os.path.getsize(wal) == WAL_FILE_KEPT      # back to the kept size, not to 0
    with app.store.db.read() as conn:
        assert conn.execute("SELECT count(*) FROM jobs").fetchone()[0] > 1000
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


def test_streaming_with_a_worker_keeps_the_wal_bounded_and_the_file_sound(app, start_worker):
    from sample_tasks import add

    n = 10_000                                        # ~30 MB through the WAL
    worker = start_worker("-c", "2").ready()
    results = [add.delay(i, i) for i in range(n)]
    wait_for(lambda: dict(((s, c) for _, _, s, c in app.store.counts())) == {"SUCCESS": n},
             timeout=120, what="every job to succeed")
    assert results[-1].get(timeout=10) == 2 * (n - 1)
    assert os.path.getsize(app.path + "-wal") < 1.5 * WAL_CHECKPOINT_BYTES
    with app.store.db.read() as conn:
        # Each job ended once: none was retried or recovered (no earlier attempt kept).
        assert conn.execute("SELECT count(*) FROM attempts").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM jobs WHERE state = 'SUCCESS' AND "
                            "done IS NOT NULL").fetchone() == (n,)
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    assert "malformed" not in worker.stderr()


def test_a_producer_on_a_symlink_keeps_the_wal_bounded(tmp_path):
    """SQLite keeps the WAL beside the file a symlink leads to: that is the -wal file
    whose size says when to checkpoint, and the one flushed before a checkpoint."""
    import sample_tasks

    from localq import Localq

    real = tmp_path / "real" / "jobs.db"
    real.parent.mkdir()
    link = tmp_path / "link.db"
    link.symlink_to(real)
    real.touch(mode=0o600)                            # an empty file: localq's to fill
    app = Localq(str(link))
    add = app.task(sample_tasks.add.run, name="sample_tasks.add")
    try:
        for i in range(6_000):                        # ~17 MB written to the WAL
            add.delay(i, i)
        assert not os.path.exists(str(link) + "-wal")
        assert os.path.getsize(str(real) + "-wal") < 1.5 * WAL_CHECKPOINT_BYTES
        assert os.path.getsize(real) > 512 << 10     # the rows went into the file
    finally:
        app.close()
