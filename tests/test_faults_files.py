"""The file system as an adversary sees it: the database file and its wake-up folder.

Another local user must not be able to read a new database, nor make localq delete
or write anything outside files it made; a file that is not a localq database is
refused before SQLite writes a byte to it (or to its -wal or -journal); waiting
works in a process with many descriptors and costs none once the wait is over.
Tests that play another user run as root and switch a forked child to uid
``nobody``; without root they are skipped.
"""
from __future__ import annotations

import hashlib
import logging
import os
import random
import resource
import shutil
import sqlite3
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest
from conftest import wait_for

import localq
from localq import Localq
from localq.wakeup import wake_folder

NOBODY = 65534
as_root = pytest.mark.skipif(os.geteuid() != 0,
                             reason="plays another local user: needs root to switch uid")


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A world-writable sticky folder, like /tmp, that uid nobody can reach."""
    folder = Path(tempfile.mkdtemp(prefix="localq-shared-"))
    os.chmod(folder, 0o1777)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def as_nobody(body: Callable[[], str | None]) -> int:
    """Fork a child that becomes uid/gid nobody and runs ``body``; return its pid.
    Its output (or its exception) goes to the pipe read by :func:`outcome`."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            os.write(w, (body() or "").encode())
            code = 0
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            os.write(w, f"{type(exc).__name__}: {exc}".encode())
        finally:
            os._exit(code)
    os.close(w)
    _pipes[pid] = r
    return pid


_pipes: dict[int, int] = {}


def outcome(pid: int) -> str:
    """Wait for an :func:`as_nobody` child; its output, or an AssertionError."""
    r = _pipes.pop(pid)
    with os.fdopen(r, "rb") as f:
        data = f.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, data
    return data


def digests(path: Path) -> dict[str, str]:
    """The bytes of a database and of its -wal and -journal, by name."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.parent.glob(path.name + "*")) if not p.name.endswith("-shm")}


def run(code: str, cwd: Path) -> None:
    subprocess.run([sys.executable, "-c", code], cwd=cwd, check=True, timeout=60)


def said_on_opening(path: Path) -> str:
    """What localq says when it opens ``path``; "opened" if it says nothing."""
    try:
        Localq(str(path)).AsyncResult("x").state
    except localq.DatabaseError as exc:
        return str(exc)
    return "opened"


def open_it(path: Path) -> str:
    """The one message localq refuses ``path`` with."""
    message = said_on_opening(path)
    assert message != "opened", f"{path} was used"
    return message


# ------------------------------------------------------- files that are not ours

def crashed_program(folder: Path, *statements: str) -> Path:
    """Another program's database ``other.db``: it ran ``statements`` and died."""
    run("import sqlite3, os\n"
        "c = sqlite3.connect('other.db', isolation_level=None)\n"
        + "".join(f"{line}\n" for line in statements) + "os._exit(0)\n", folder)
    return folder / "other.db"


def refused_untouched(path: Path, *words: str) -> None:
    """Opening ``path`` raises one message holding ``words``; no byte changed (an
    empty -wal that SQLite leaves beside a database in WAL mode holds none)."""
    before = digests(path)
    message = open_it(path)
    assert all(w in message for w in words), message
    after = {name: digest for name, digest in digests(path).items()
             if name in before or (path.parent / name).stat().st_size}
    assert after == before


def test_a_crashed_wal_database_of_another_program_is_refused_and_its_wal_kept(tmp_path):
    path = crashed_program(tmp_path, "c.execute('PRAGMA journal_mode=WAL')",
                           "c.execute('PRAGMA wal_autocheckpoint=0')",
                           "c.execute('CREATE TABLE ledger (amount)')",
                           "c.execute('INSERT INTO ledger VALUES (42)')")
    assert (tmp_path / "other.db-wal").stat().st_size      # everything is in its WAL
    refused_untouched(path, "another program", "ledger", "untouched")
    con = sqlite3.connect(path)        # and its owner still finds its row
    assert con.execute("SELECT amount FROM ledger").fetchall() == [(42,)]
    con.close()


def test_a_database_with_a_hot_journal_is_refused_and_not_rolled_back(tmp_path):
    path = crashed_program(  # died mid-transaction with pages spilled: a hot journal
        tmp_path, "c.execute('CREATE TABLE files (data)')",
        "c.execute('PRAGMA cache_size=2'); c.execute('BEGIN')",
        "for _ in range(200): c.execute('INSERT INTO files VALUES (randomblob(3000))')")
    assert (tmp_path / "other.db-journal").stat().st_size
    refused_untouched(path, "another program", "untouched")


def test_a_sqlite_file_holding_only_a_view_is_refused_untouched(tmp_path):
    path = tmp_path / "view.db"
    con = sqlite3.connect(path)
    con.execute("CREATE VIEW answer AS SELECT 42")
    con.close()
    refused_untouched(path, "another program", "answer")


@pytest.mark.parametrize("damage, says", [("random", "not a SQLite database"),
                                          ("pages", "may be corrupt")])
def test_a_corrupt_file_gets_one_clear_message_and_is_left_as_it_was(tmp_path, damage, says):
    path = tmp_path / "jobs.db"
    if damage == "random":
        path.write_bytes(random.Random(11).randbytes(64 * 1024))
    else:   # a localq database with pages past the first overwritten
        app = Localq(str(path))
        app.task(lambda: 1, name="t").delay()
        app.close()
        data = bytearray(path.read_bytes())
        data[3000:9000] = random.Random(12).randbytes(6000)
        path.write_bytes(bytes(data))
    refused_untouched(path, str(path), says, "another path")


def test_an_empty_file_is_adopted_and_made_owner_only(tmp_path):
    path = tmp_path / "empty.db"
    path.touch()
    os.chmod(path, 0o644)
    app = Localq(str(path))
    try:
        result = app.task(lambda: 1, name="t").delay()
        assert result.state == "PENDING"
    finally:
        app.close()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_a_localq_database_whose_schema_is_still_in_its_wal_is_opened(tmp_path):
    root = str(Path(localq.__file__).parent.parent)
    run(f"import sys, os, sqlite3; sys.path.insert(0, {root!r})\n"
        f"from localq.store.schema import DDL, SCHEMA_VERSION\n"
        f"c = sqlite3.connect('jobs.db', isolation_level=None)\n"
        f"c.execute('PRAGMA journal_mode=WAL'); c.execute('PRAGMA wal_autocheckpoint=0')\n"
        f"c.executescript('BEGIN;' + DDL + 'COMMIT;')\n"
        f"c.execute(\"INSERT INTO localq_meta VALUES ('schema_version', ?)\", "
        f"(str(SCHEMA_VERSION),))\n"
        f"os._exit(0)   # crashed before any checkpoint\n", tmp_path)
    assert (tmp_path / "jobs.db-wal").stat().st_size
    app = Localq(str(tmp_path / "jobs.db"))
    try:
        assert app.task(lambda: 1, name="t").delay().state == "PENDING"
    finally:
        app.close()


# ------------------------------------------------------- permissions

@as_root
@pytest.mark.filterwarnings("ignore:no localq worker is running")   # no worker, on purpose
def test_another_user_never_opens_a_new_database(shared_dir):
    paths = [shared_dir / f"new{i}.db" for i in range(30)]

    def spy() -> str:      # another user opening each file as soon as it appears
        opened = 0
        deadline = time.monotonic() + 120
        for p in paths:
            while time.monotonic() < deadline:
                try:
                    os.close(os.open(p, os.O_RDONLY))
                    opened += 1
                    break
                except PermissionError:
                    break
                except FileNotFoundError:
                    continue
        return str(opened)

    spy_pid = as_nobody(spy)
    old_umask = os.umask(0)     # the worst case: nothing masked
    try:
        for p in paths:
            app = Localq(str(p))
            job = app.task(lambda: 1, name="t").delay()
            for name in (p.name, p.name + "-wal", p.name + "-shm"):
                assert stat.S_IMODE(os.stat(shared_dir / name).st_mode) == 0o600, name
            with pytest.raises(localq.TimeoutError):
                job.get(timeout=0.001)         # a waiter makes the wake-up folder
            assert stat.S_IMODE(os.lstat(wake_folder(str(p))).st_mode) == 0o700
            app.close()
    finally:
        os.umask(old_umask)
    assert outcome(spy_pid) == "0"


@as_root
def test_a_database_in_a_read_only_folder_says_so(shared_dir):
    folder = shared_dir / "readonly"
    folder.mkdir(mode=0o755)             # root's: uid nobody cannot create -wal/-shm in it
    path = folder / "jobs.db"
    app = Localq(str(path))
    app.task(lambda: 1, name="t").delay()
    app.close()
    os.chown(path, NOBODY, NOBODY)
    before = digests(path)

    message = outcome(as_nobody(lambda: said_on_opening(path)))
    assert "read-only" in message and str(folder) in message and "-wal" in message, message
    assert "corrupt" not in message
    assert digests(path) == before


@as_root
def test_a_database_of_another_user_says_it_cannot_be_read(shared_dir):
    path = shared_dir / "jobs.db"
    app = Localq(str(path))
    app.task(lambda: 1, name="t").delay()
    app.close()
    before = digests(path)

    message = outcome(as_nobody(lambda: said_on_opening(path)))
    assert "cannot read" in message and str(path) in message, message
    assert digests(path) == before


# ------------------------------------------------------- the wake-up folder

def _victim(shared_dir: Path) -> Path:
    victim = shared_dir / "victim"
    victim.mkdir(mode=0o755)
    for name in ("grades.txt", "wallet.txt", "g1.2", "w3.4"):
        (victim / name).write_text("precious")
    return victim


def _use_a_worker_and_wait(path: Path, caplog) -> None:
    app = Localq(str(path))
    add = app.task(lambda x, y: x + y, name="add")
    try:
        with caplog.at_level(logging.WARNING, logger="localq"), app.worker(concurrency=1):
            for i in range(5):
                assert add.delay(i, i).get(timeout=60) == 2 * i
    finally:
        app.close()


@as_root
def test_another_user_cannot_redirect_the_temp_wake_folder_to_delete_files(
        shared_dir, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(tempfile, "tempdir", str(shared_dir))   # the fallback's parent
    path = tmp_path / ("deep" * 30) / "jobs.db"
    path.parent.mkdir()
    folder = Path(wake_folder(str(path)))
    assert folder.parent.parent == shared_dir      # a long path: the per-user temp folder
    victim = _victim(shared_dir)

    def plant() -> None:
        folder.parent.mkdir(mode=0o777)
        os.chmod(folder.parent, 0o777)
        folder.symlink_to(victim)

    outcome(as_nobody(plant))
    _use_a_worker_and_wait(path, caplog)
    assert sorted(os.listdir(victim)) == ["g1.2", "grades.txt", "w3.4", "wallet.txt"]
    warnings = [r for r in caplog.records if str(folder.parent) in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in caplog.records]


@as_root
def test_another_user_cannot_plant_a_symlink_as_the_wake_folder(shared_dir, caplog):
    path = shared_dir / "jobs.db"
    victim = _victim(shared_dir)
    folder = Path(wake_folder(str(path)))
    assert folder == shared_dir / "jobs.db.d"
    outcome(as_nobody(lambda: folder.symlink_to(victim)))
    _use_a_worker_and_wait(path, caplog)
    assert sorted(os.listdir(victim)) == ["g1.2", "grades.txt", "w3.4", "wallet.txt"]
    assert folder.is_symlink()
    warnings = [r for r in caplog.records if str(folder) in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in caplog.records]


@as_root
def test_a_wake_folder_made_by_another_user_is_not_used(shared_dir, caplog):
    path = shared_dir / "jobs.db"
    folder = Path(wake_folder(str(path)))
    outcome(as_nobody(lambda: folder.mkdir(mode=0o777)))
    _use_a_worker_and_wait(path, caplog)
    assert os.listdir(folder) == []       # no socket of ours in another user's folder


def test_a_database_reached_through_a_symlink_shares_the_workers_wake_folder(
        tmp_path, start_worker):
    real = tmp_path / "real" / "jobs.db"
    real.parent.mkdir()
    link = tmp_path / "link.db"
    link.symlink_to(real)
    assert wake_folder(str(link)) == wake_folder(str(real))
    Localq(str(real)).close()
    worker = start_worker(db=str(real)).ready()
    # the worker's bell is where a producer on the symlink rings
    wait_for(lambda: any(n.startswith("w") for n in os.listdir(wake_folder(str(link)))),
             what="the worker's bell in the producer's wake-up folder")
    import sample_tasks
    app = Localq(str(link))
    add = app.task(sample_tasks.add.run, name="sample_tasks.add")
    try:
        assert add.delay(2, 3).get(timeout=60) == 5
    finally:
        app.close()
        worker.kill_all()


# ------------------------------------------------------- descriptors

def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_waiting_works_with_more_than_1024_descriptors_open(tmp_path):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2048:
        pytest.skip(f"the hard limit on open files ({hard}) is too low to open 1,100")
    if soft != resource.RLIM_INFINITY and soft < 2048:
        resource.setrlimit(resource.RLIMIT_NOFILE, (2048, hard))
    r, w = os.pipe()
    extra = [os.dup(r) for _ in range(1100)]
    app = Localq(str(tmp_path / "jobs.db"))
    double = app.task(lambda x: 2 * x, name="double")
    try:
        with app.worker(concurrency=1):
            assert double.delay(1).get(timeout=60) == 2
            assert app.map(double, range(20), timeout=60) == [2 * i for i in range(20)]
    finally:
        app.close()
        for fd in (*extra, r, w):
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_threads_that_call_get_and_end_leave_no_descriptor_behind(tmp_path):
    app = Localq(str(tmp_path / "jobs.db"))
    add = app.task(lambda x, y: x + y, name="add")
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            assert add.delay(i, 1).get(timeout=60) == i + 1
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    try:
        with app.worker(concurrency=2):
            one(0)                         # the app's own connections and bells
            before = _fd_count()
            for batch in range(30):        # 300 short-lived threads, 10 at a time
                threads = [threading.Thread(target=one, args=(batch * 10 + i,))
                           for i in range(10)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
            after = _fd_count()
    finally:
        app.close()
    assert not errors, errors[0]
    assert after - before <= 12, (before, after)


def test_an_sqlite_too_old_for_localqs_sql_is_refused_with_one_clear_message():
    from localq.store.schema import MIN_SQLITE, check_sqlite_version
    with pytest.raises(localq.DatabaseError) as info:
        check_sqlite_version((3, 31, 1))      # Ubuntu 20.04's: no RETURNING
    message = str(info.value)
    assert "SQLite 3.35.0 or newer" in message and "SQLite 3.31.1" in message
    check_sqlite_version(MIN_SQLITE)
    check_sqlite_version(sqlite3.sqlite_version_info)    # this machine's is new enough
