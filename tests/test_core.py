"""The app, tasks, encoding, configuration and the database file, without workers."""
from __future__ import annotations

import os
import sqlite3
import stat
import warnings

import pytest

import localq
from localq import Localq


def test_creating_an_app_touches_no_file(tmp_path):
    app = Localq(str(tmp_path / "jobs.db"))

    @app.task
    def f():
        return 1

    assert os.listdir(tmp_path) == []


def test_default_path_from_env_then_cwd(tmp_path, monkeypatch):
    monkeypatch.setenv("LOCALQ_DB", str(tmp_path / "env.db"))
    assert Localq().path == str(tmp_path / "env.db")
    monkeypatch.delenv("LOCALQ_DB")
    monkeypatch.chdir(tmp_path)
    assert Localq().path == str(tmp_path / "localq.db")


def test_database_is_owner_only_wal_with_schema_version(app, db_path):
    app.tasks["sample_tasks.add"].delay(1, 2)
    assert stat.S_IMODE(os.stat(db_path).st_mode) == 0o600
    con = sqlite3.connect(db_path)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert con.execute("SELECT value FROM localq_meta WHERE key='schema_version'").fetchone()
    con.close()


@pytest.mark.parametrize("content", [b"hello, not a database" * 10, b"\x00" * 4096],
                         ids=["text", "zeros"])
def test_refuses_a_file_that_is_not_sqlite_and_leaves_it(tmp_path, content):
    path = tmp_path / "notes.db"
    path.write_bytes(content)
    app = Localq(str(path))
    add = app.task(lambda x: x, name="ident")
    with pytest.raises(localq.DatabaseError) as err:
        add.delay(1)
    assert str(path) in str(err.value)
    assert path.read_bytes() == content


def test_refuses_a_sqlite_file_of_another_program(tmp_path):
    path = tmp_path / "other.db"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE customers (name TEXT)")
    con.execute("INSERT INTO customers VALUES ('ada')")
    con.commit()
    con.close()
    before = path.read_bytes()
    app = Localq(str(path))
    with pytest.raises(localq.DatabaseError, match="another program"):
        app.AsyncResult("x").state
    assert path.read_bytes() == before


def test_refuses_a_newer_schema(app, db_path):
    app.tasks["sample_tasks.add"].delay(1, 2)
    app.close()
    con = sqlite3.connect(db_path)
    con.execute("UPDATE localq_meta SET value='999' WHERE key='schema_version'")
    con.commit()
    con.close()
    other = Localq(db_path)
    with pytest.raises(localq.DatabaseError, match="newer localq"):
        other.AsyncResult("x").state


def test_argument_that_cannot_be_encoded_names_task_and_argument_and_stores_nothing(app):
    add = app.tasks["sample_tasks.add"]
    add.delay(1, 1)
    with pytest.raises(TypeError) as err:
        add.delay(1, object())
    message = str(err.value)
    assert "sample_tasks.add" in message and "positional argument 1" in message
    with pytest.raises(TypeError, match="keyword argument 'y'"):
        add.delay(x=1, y={1, 2})
    assert sum(c for *_, c in app.store.counts()) == 1


def test_pickle_is_an_opt_in(app):
    from sample_tasks import pickled
    result = pickled.delay({1, 2})       # a set: JSON would refuse it
    assert result.state == "PENDING"


def test_task_names_and_inline_calls():
    from sample_tasks import add, whoami
    assert add.name == "sample_tasks.add"
    assert add(2, 3) == 5
    assert whoami()["id"] is None   # called directly: no request


def test_idempotent_task_id(app):
    add = app.tasks["sample_tasks.add"]
    a = add.apply_async((1, 2), task_id="fixed-id")
    b = add.apply_async((5, 5), task_id="fixed-id")
    assert a.id == b.id == "fixed-id"
    assert sum(c for *_, c in app.store.counts()) == 1


def test_priority_must_be_0_to_9(app):
    with pytest.raises(localq.ConfigurationError, match="0 to 9"):
        app.tasks["sample_tasks.add"].apply_async((1, 2), priority=10)


def test_unknown_setting_is_named_and_celery_settings_warn(tmp_path):
    app = Localq(str(tmp_path / "x.db"))
    with pytest.raises(localq.ConfigurationError, match="task_default_queu"):
        app.conf.update(task_default_queu="x")
    with pytest.warns(UserWarning, match="broker_url"):
        app.conf.update(broker_url="redis://localhost")
    app.conf.task_default_queue = "fast"
    assert app.conf["task_default_queue"] == "fast"


def test_config_from_object_loads_a_celery_config_module(tmp_path, monkeypatch):
    (tmp_path / "celeryconfig.py").write_text(
        "broker_url = 'redis://x'\nresult_backend = 'redis://y'\n"
        "task_serializer = 'json'\ntask_acks_late = True\nworker_prefetch_multiplier = 1\n"
        "task_default_queue = 'work'\nimports = ['json']\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    app = Localq(str(tmp_path / "x.db"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        app.config_from_object("celeryconfig")
    assert {str(w.message).split("'")[1] for w in caught} == {
        "broker_url", "result_backend", "worker_prefetch_multiplier"}
    assert app.conf.task_default_queue == "work"
    assert app.conf.imports == ("json",)


def test_config_from_object_with_a_namespace(tmp_path):
    class Settings:
        CELERY_TASK_DEFAULT_QUEUE = "ns"
        DEBUG = True
    app = Localq(str(tmp_path / "x.db"))
    app.config_from_object(Settings, namespace="CELERY")
    assert app.conf.task_default_queue == "ns"


def test_bad_rate_limit_is_refused_where_written(tmp_path):
    app = Localq(str(tmp_path / "x.db"))
    with pytest.raises(localq.ConfigurationError, match="N/s"):
        @app.task(rate_limit="10/fortnight")
        def f():
            pass
    with pytest.raises(localq.ConfigurationError, match="N/s"):
        app.conf.task_default_rate_limit = "fast"


def test_timeout_error_is_also_the_builtin():
    assert issubclass(localq.TimeoutError, TimeoutError)
    assert issubclass(localq.TimeoutError, localq.LocalqError)


def test_revoke_of_a_pending_job(app):
    r = app.tasks["sample_tasks.add"].delay(1, 2)
    r.revoke()
    assert r.state == "REVOKED"
    with pytest.raises(localq.TaskRevokedError):
        r.get(timeout=1)


def test_revoke_of_an_unknown_id_holds_when_it_is_sent_later(app):
    app.control.revoke("later-id")
    r = app.tasks["sample_tasks.add"].apply_async((1, 2), task_id="later-id")
    assert r.state == "REVOKED"


@pytest.mark.filterwarnings("ignore:no localq worker is running")   # no worker, on purpose
def test_get_times_out_with_localq_timeout_error(app):
    r = app.tasks["sample_tasks.add"].delay(1, 2)
    with pytest.raises(localq.TimeoutError):
        r.get(timeout=0.05)
    with pytest.raises(TimeoutError):
        r.get(timeout=0.01)


def test_a_producer_with_no_worker_keeps_the_wal_bounded(app):
    """With no worker (whose thread checkpoints), producers still checkpoint the WAL
    into the file when it grows past WAL_CHECKPOINT_BYTES, so it never grows for ever."""
    from sample_tasks import add

    from localq.store.connection import WAL_CHECKPOINT_BYTES
    for i in range(10_000):                    # ~28 MB written to the WAL
        add.delay(i, i)
    assert os.path.getsize(app.path + "-wal") < 1.5 * WAL_CHECKPOINT_BYTES
    assert os.path.getsize(app.path) > 1 << 20       # the rows went into the file
    assert app.store.counts() and sum(c for *_, c in app.store.counts()) == 10_000
