"""Celery configurations load as written: pre-4.0 uppercase names, Django's namespace,
``config_from_envvar``, ``Localq("proj", broker=..., backend=..., include=...)``; what
takes effect here takes effect (measured through a real worker), and what cannot is said.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pytest
from conftest import ROOT, wait_for
from test_rate_limits_runtime import assert_rate_held

import localq
from localq import ConfigurationError, Localq
from localq.celery_names import OLD_NAMES
from localq.config import DEFAULTS, IGNORED

# The configuration from issue 15 (Superset's), with its modules renamed to a package
# written by the test and a number of seconds for the schedule (crontab comes later).
SUPERSET_CONFIG = """
class CeleryConfig(object):
    BROKER_URL = 'redis://localhost:6379/0'
    CELERY_IMPORTS = ('{pkg}.sql_lab', '{pkg}.email_reports')
    CELERY_RESULT_BACKEND = 'redis://localhost:6379/0'
    CELERYD_LOG_LEVEL = 'DEBUG'
    CELERYD_PREFETCH_MULTIPLIER = 10
    CELERY_ACKS_LATE = True
    CELERY_ANNOTATIONS = {{
        'sql_lab.get_sql_results': {{'rate_limit': '100/s'}},
        'email_reports.send': {{'rate_limit': '1/s', 'time_limit': 120, 'soft_time_limit': 150,
                               'ignore_result': True}},
    }}
    CELERYBEAT_SCHEDULE = {{
        'email_reports.schedule_hourly': {{'task': 'email_reports.schedule_hourly',
                                          'schedule': 3600}},
    }}
"""

APP = """
from localq import Localq
from {pkg}.config import CeleryConfig

app = Localq("{pkg}")
app.config_from_object(CeleryConfig)
"""

EMAIL_REPORTS = """
from {pkg}.celery_app import app

@app.task(name="email_reports.send")
def send(n):
    return n

@app.task(name="email_reports.schedule_hourly")
def schedule_hourly():
    return "scheduled"
"""

SQL_LAB = """
from {pkg}.celery_app import app

@app.task(name="sql_lab.get_sql_results")
def get_sql_results(query):
    return query
"""


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Write a package of modules into tmp_path, importable by this process and by
    workers started from it; its modules are forgotten afterwards."""
    written: list[str] = []

    def write(pkg: str, modules: dict[str, str]) -> Path:
        folder = tmp_path / "src" / pkg
        folder.mkdir(parents=True)
        (folder / "__init__.py").write_text("")
        for name, text in modules.items():
            (folder / f"{name}.py").write_text(textwrap.dedent(text.format(pkg=pkg)))
        written.append(pkg)
        return folder.parent

    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    monkeypatch.delenv("LOCALQ_DB", raising=False)
    yield write
    for name in list(sys.modules):
        if name.split(".")[0] in written:
            del sys.modules[name]


def superset(project, pkg: str) -> Path:
    return project(pkg, {"config": SUPERSET_CONFIG, "celery_app": APP,
                         "email_reports": EMAIL_REPORTS, "sql_lab": SQL_LAB})


def load(obj, **kwargs) -> tuple[Localq, list[str]]:
    app = Localq("unused.db")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        app.config_from_object(obj, **kwargs)
    return app, [str(w.message) for w in caught]


# ---------------------------------------------------------------- the configuration

def test_the_superset_configuration_loads_and_says_what_means_nothing(project):
    superset(project, "cfg_load")
    from cfg_load.config import CeleryConfig
    app, said = load(CeleryConfig)
    assert app.conf.task_annotations["email_reports.send"]["rate_limit"] == "1/s"
    assert app.conf.imports == ("cfg_load.sql_lab", "cfg_load.email_reports")
    assert app.conf.task_acks_late is True
    assert app.conf.beat_schedule["email_reports.schedule_hourly"]["schedule"] == 3600
    text = "\n".join(said)
    for name in ("BROKER_URL", "CELERY_RESULT_BACKEND", "CELERYD_PREFETCH_MULTIPLIER"):
        assert f"localq ignores the Celery setting {name!r}" in text
    assert app.conf.worker_log_level == "DEBUG"       # the worker's -l default (see below)
    assert "beat_schedule" not in text         # it runs now (test_beat.py)
    assert "task_annotations['email_reports.send']: soft_time_limit 150s is above " \
           "time_limit 120s" in text
    assert len(said) == 4, said        # one each, nothing else


def test_the_superset_annotation_throttles_email_reports_on_a_real_worker(project, db_path):
    src = superset(project, "cfg_rate")
    log_path = f"{db_path}.worker.log"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(src), str(ROOT)]))
    with open(log_path, "w") as log:    # as Superset starts it: --app=...celery_app:app
        proc = subprocess.Popen(
            [sys.executable, "-m", "localq", "worker", "--app=cfg_rate.celery_app:app",
             "--db", db_path, "-c", "2", "-l", "info"],
            env=env, stderr=log, stdout=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: "localq worker ready" in Path(log_path).read_text(),
                 what="the worker to be ready")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from cfg_rate.celery_app import app
        app.path = db_path
        since = time.time()
        # by name: this process never imports the task modules, the worker does (imports)
        results = [app.send_task("email_reports.send", (i,)) for i in range(3)]
        quick = app.send_task("sql_lab.get_sql_results", ("select 1",))
        assert quick.get(timeout=30) == "select 1"
        wait_for(lambda: all(r.state == "SUCCESS" for r in results), timeout=30,
                 what="the throttled jobs to finish")
        assert all(r.result is None for r in results)           # ignore_result applied
        assert_rate_held(results, since, burst=1, per_second=1)  # 3 jobs took >= 2 s
        app.close()
    finally:
        proc.terminate()
        proc.wait(30)


def test_imports_are_imported_by_an_embedded_worker(project, db_path):
    project("cfg_imports", {"celery_app": """
        from localq import Localq
        app = Localq("cfg_imports")
        app.config_from_object({{"CELERY_IMPORTS": ["cfg_imports.jobs"]}})
        """, "jobs": """
        from cfg_imports.celery_app import app

        @app.task(name="only.here")
        def only_here():
            return "imported"
        """})
    from cfg_imports.celery_app import app
    app.path = db_path
    assert "cfg_imports.jobs" not in sys.modules
    with app.worker(concurrency=1):
        assert app.send_task("only.here").get(timeout=30) == "imported"
    app.close()


# ---------------------------------------------------------------- old and new names

def test_every_old_name_maps_to_a_setting_localq_knows():
    assert OLD_NAMES["CELERY_ANNOTATIONS"] == "task_annotations"
    assert OLD_NAMES["CELERYD_MAX_TASKS_PER_CHILD"] == "worker_max_tasks_per_child"
    assert OLD_NAMES["CELERYBEAT_SCHEDULE"] == "beat_schedule"
    assert OLD_NAMES["CELERY_TASK_RESULT_EXPIRES"] == "result_expires"
    assert set(OLD_NAMES.values()) <= DEFAULTS.keys() | IGNORED
    app, said = load({"CELERYD_MAX_TASKS_PER_CHILD": 5, "CELERY_ALWAYS_EAGER": True,
                      "CELERY_DEFAULT_QUEUE": "work", "CELERYD_CONCURRENCY": 3})
    assert (app.conf.worker_max_tasks_per_child, app.conf.task_always_eager,
            app.conf.task_default_queue, app.conf.worker_concurrency) == (5, True, "work", 3)
    assert said == []
    app.conf.update(CELERY_IGNORE_RESULT=True)          # conf.update reads them too
    assert app.conf.task_ignore_result is True


def test_mixing_old_and_new_names_is_an_error_naming_both():
    class Mixed:
        CELERY_ANNOTATIONS = {"*": {"rate_limit": "1/s"}}
        task_default_queue = "work"
    with pytest.raises(ConfigurationError) as err:
        load(Mixed)
    assert "CELERY_ANNOTATIONS" in str(err.value) and "task_default_queue" in str(err.value)
    assert "CELERY_ANNOTATIONS -> task_annotations" in str(err.value)
    assert isinstance(err.value, localq.exceptions.ImproperlyConfigured)   # Celery's name

    # the same setting under both names is allowed when they agree, as in Celery
    app, _ = load({"CELERY_DEFAULT_QUEUE": "work", "task_default_queue": "work",
                   "CELERY_ACKS_LATE": False})
    assert (app.conf.task_default_queue, app.conf.task_acks_late) == ("work", False)
    with pytest.raises(ConfigurationError, match="CELERY_DEFAULT_QUEUE and task_default_queue"):
        load({"CELERY_DEFAULT_QUEUE": "a", "task_default_queue": "b"})
    # localq's own names have no old form: they go with either style
    app, _ = load({"CELERY_ACKS_LATE": False, "worker_lost_after": 10.0})
    assert app.conf.worker_lost_after == 10.0


def test_an_unknown_uppercase_name_is_reported_and_a_lowercase_one_refused():
    class Config:
        CELERY_ANOTATIONS = {"*": {"rate_limit": "1/s"}}   # misspelt
        SQLALCHEMY_DATABASE_URI = "sqlite://"
        CELERY_DEFAULT_QUEUE = "work"
    app, said = load(Config)
    assert len(said) == 1
    assert "CELERY_ANOTATIONS (did you mean 'task_annotations'?)" in said[0]
    assert "SQLALCHEMY_DATABASE_URI" in said[0]
    assert app.conf.task_default_queue == "work" and app.conf.task_annotations is None
    with pytest.raises(ConfigurationError, match="unknown setting 'task_anotations'"):
        load({"task_anotations": {}})


def test_namespace_reads_djangos_celery_prefixed_names():
    class DjangoSettings:
        DEBUG = True
        INSTALLED_APPS = ["app"]
        CELERY_TASK_ANNOTATIONS = {"*": {"rate_limit": "5/s"}}
        CELERY_IMPORTS = ["json"]
        CELERY_BROKER_URL = "redis://"
    app, said = load(DjangoSettings, namespace="CELERY")
    assert app.conf.task_annotations == {"*": {"rate_limit": "5/s"}}
    assert app.conf.imports == ("json",)
    assert said == ["localq ignores the Celery setting 'CELERY_BROKER_URL' (broker_url): "
                    "it has no meaning with one SQLite file on one host"]
    with pytest.raises(ConfigurationError, match="write CELERY_TASK_ALWAYS_EAGER"):
        load({"CELERY_ALWAYS_EAGER": True}, namespace="CELERY")    # pre-4.0 name
    with pytest.raises(ConfigurationError, match="CELERY_TASK_NOPE"):
        load({"CELERY_TASK_NOPE": 1}, namespace="CELERY")
    app = Localq("unused.db", namespace="CELERY")     # Celery("proj", namespace=...)
    app.config_from_object({"CELERY_TASK_DEFAULT_QUEUE": "ns"})
    assert app.conf.task_default_queue == "ns"


def test_config_from_a_module_name_and_from_an_environment_variable(project, monkeypatch):
    project("cfg_env", {"settings": """
        CELERY_DEFAULT_QUEUE = "from-module"

        class Other:
            task_default_queue = "from-class"
        """})
    app = Localq("unused.db")
    app.config_from_object("cfg_env.settings")
    assert app.conf.task_default_queue == "from-module"
    for name in ("cfg_env.settings:Other", "cfg_env.settings.Other"):
        app.config_from_object(name)
        assert app.conf.task_default_queue == "from-class"
        app.conf.task_default_queue = "default"
    monkeypatch.setenv("CFG_ENV_MODULE", "cfg_env.settings")
    assert app.config_from_envvar("CFG_ENV_MODULE") is True
    assert app.conf.task_default_queue == "from-module"

    monkeypatch.delenv("CFG_ENV_MODULE")
    with pytest.raises(ConfigurationError, match="CFG_ENV_MODULE is not set"):
        app.config_from_envvar("CFG_ENV_MODULE")
    assert app.config_from_envvar("CFG_ENV_MODULE", silent=True) is False
    monkeypatch.setenv("CFG_ENV_MODULE", "cfg_env.missing")
    with pytest.raises(ConfigurationError, match="cannot import configuration"):
        app.config_from_envvar("CFG_ENV_MODULE")
    assert app.config_from_envvar("CFG_ENV_MODULE", silent=True) is False


def test_beat_schedule_and_timezone_are_stored(tmp_path):
    from localq import crontab
    schedule = {"nightly": {"task": "reports.build", "schedule": 86400.0},
                "hourly": {"task": "reports.build", "schedule": crontab(minute=1)}}
    app, said = load({"CELERYBEAT_SCHEDULE": schedule, "CELERY_TIMEZONE": "Europe/Paris",
                      "CELERY_ENABLE_UTC": False})
    assert app.conf.beat_schedule == schedule
    assert (app.conf.timezone, app.conf.enable_utc) == ("Europe/Paris", False)
    assert said == []
    with pytest.raises(ConfigurationError, match="not a time zone"):
        app.conf.timezone = "Mars/Olympus"
    with pytest.raises(ConfigurationError, match="beat_schedule must be"):
        app.conf.beat_schedule = {"x": "reports.build"}
    with pytest.raises(ConfigurationError, match="entry 'x'.* not a schedule"):
        app.conf.beat_schedule = {"x": {"task": "reports.build", "schedule": "hourly"}}


# ---------------------------------------------------------------- limits

def test_a_soft_limit_above_the_hard_limit_warns_once_per_task(tmp_path):
    app = Localq(str(tmp_path / "x.db"))

    def said(action) -> list[str]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            action()
        return [str(w.message) for w in caught if "can never fire" in str(w.message)]

    assert said(lambda: app.conf.update(task_time_limit=10, task_soft_time_limit=20)) == [
        "settings: soft_time_limit 20s is above time_limit 10s, so the soft limit can never "
        "fire (the job is killed at 10s first): make soft_time_limit smaller than time_limit"]
    app.conf.update(task_time_limit=None, task_soft_time_limit=None)

    @app.task(time_limit=5, soft_time_limit=9)
    def declared():
        pass

    @app.task
    def per_call():
        pass

    @app.task
    def fine():
        pass

    first = said(lambda: [declared.delay(), declared.delay()])
    assert len(first) == 1 and f"task {declared.name!r}" in first[0]
    calls = said(lambda: [per_call.apply_async(time_limit=3, soft_time_limit=4)
                          for _ in range(2)])
    assert len(calls) == 1 and f"apply_async of {per_call.name!r}" in calls[0]
    assert said(lambda: fine.apply_async(time_limit=4, soft_time_limit=3)) == []

    annotated = said(lambda: app.conf.update(
        task_annotations={"*": {"time_limit": 2}, fine.name: {"soft_time_limit": 3}}))
    assert len(annotated) == 1 and f"task_annotations[{fine.name!r}]" in annotated[0]
    assert said(fine.delay) == []        # the settings already said it for this pair


# ---------------------------------------------------------------- the constructor

def test_celery_style_constructor(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LOCALQ_DB", raising=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        app = Localq("proj", broker="redis://localhost:6379/0", backend="redis://",
                     include=["json"])
        app.config_from_object({"BROKER_URL": "redis://", "CELERY_RESULT_BACKEND": "redis://"})
    assert [str(w.message) for w in caught] == [
        "localq ignores the Celery setting 'broker' (broker_url): it has no meaning with one "
        "SQLite file on one host",
        "localq ignores the Celery setting 'backend' (result_backend): it has no meaning with "
        "one SQLite file on one host"]
    assert (app.main_name, app.path) == ("proj", str(tmp_path / "localq.db"))
    assert app.conf.include == ("json",)
    assert not os.path.exists("proj") and not os.path.exists("localq.db")   # nothing opened

    assert Localq("jobs.db").path == str(tmp_path / "jobs.db")
    assert Localq("sub/jobs").path == str(tmp_path / "sub" / "jobs")
    assert Localq("jobs").path == str(tmp_path / "jobs")    # no Celery argument: a file
    app = Localq(main="proj", path="other.db")
    assert (app.main_name, app.path) == ("proj", str(tmp_path / "other.db"))
