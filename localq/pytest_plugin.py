"""The pytest plugin (entry point ``pytest11``, installed with localq): a real worker per test.

Fixtures:

- ``localq_app``: the app under test. Override it in your ``conftest.py`` to
  return your own app (``return myproject.app``). By default it is the one
  Localq app your code made at import (module level, conftest included); with
  none, a fresh ``Localq``; with several, the test fails with a message saying
  to override it.
- ``localq_worker``: points that app at a fresh database in a temporary
  folder, starts a real embedded worker (a supervisor and real child
  processes, ``concurrency=2`` unless the ini option
  ``localq_worker_concurrency`` says otherwise), yields it, and after the test
  stops it and deletes the folder: no process and no file is left.

The database path written in your code is never opened while the tests run:
every Localq app that exists when collection ends (those your modules make at
import) is pointed at a temporary database before each test and its fixtures,
and pointed back afterwards, whether or not the test uses these fixtures; apps
that share a path in the code share one temporary database. And whichever
fixture defines ``localq_app`` (this one or yours), the app it returns is
pointed at a fresh temporary database for the duration of the fixture.

How: ``pytest_collection_finish`` notes the apps that exist (a weak set that
``Localq`` keeps of its instances); an autouse fixture redirects them; a
``pytest_fixture_setup`` hook wrapper sees the value of any fixture named
``localq_app`` as soon as it is made (a fixture of this module could not,
since a user's override replaces it). The temporary folders come from
``tempfile.mkdtemp`` (short paths, so the wake-up sockets fit beside the
database) and are removed at teardown.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
import weakref
from contextlib import contextmanager
from typing import Any, Iterable, Iterator

import pytest

from .app import Localq
from .result import close_bells
from .wakeup import wake_folder
from .worker.embedded import EmbeddedWorker

STOP_TIMEOUT = 10.0      # seconds of warm shutdown before the worker is stopped cold
DEFAULT_CONCURRENCY = 2

_code_apps: weakref.WeakSet[Localq] = weakref.WeakSet()   # the apps made at import


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini("localq_worker_concurrency",
                  "child processes of the worker started by the localq_worker fixture",
                  default=str(DEFAULT_CONCURRENCY))


def pytest_collection_finish(session: pytest.Session) -> None:
    _code_apps.update(Localq._instances)


@pytest.fixture(autouse=True)
def _localq_temporary_databases() -> Iterator[None]:
    """Every app made at import points at a temporary database during each test."""
    apps = list(_code_apps)
    if not apps:
        yield
        return
    with _temporary_databases(apps):
        yield


@pytest.fixture
def localq_app() -> Localq:
    """The app under test: the one your code made at import, else a fresh one; override
    this fixture in your conftest.py to return yours."""
    apps = list(_code_apps)
    if len(apps) > 1:
        names = sorted(_where(a) for a in apps)
        pytest.fail(f"{len(apps)} Localq apps exist ({', '.join(names)}): say which one "
                    f"the tests use, in conftest.py:\n\n"
                    f"    import {names[0].split(':')[0]}\n\n"
                    f"    @pytest.fixture\n    def localq_app():\n"
                    f"        return {names[0].replace(':', '.')}\n", pytrace=False)
    return apps[0] if apps else Localq(main="localq-tests")


def _where(app: Localq) -> str:
    """``module:name`` of a module-level app, for messages."""
    for name, module in list(sys.modules.items()):
        for attr, value in list(getattr(module, "__dict__", {}).items()):
            if value is app:
                return f"{name}:{attr}"
    return repr(app)


@pytest.fixture
def localq_worker(localq_app: Localq, request: pytest.FixtureRequest
                  ) -> Iterator[EmbeddedWorker]:
    """A real worker for ``localq_app`` on a fresh database, stopped after the test."""
    try:
        concurrency = int(request.config.getini("localq_worker_concurrency")
                          or DEFAULT_CONCURRENCY)
    except ValueError:      # the fixture imported into a test module, the plugin not loaded
        concurrency = DEFAULT_CONCURRENCY
    with _temporary_database(localq_app):
        worker = EmbeddedWorker(localq_app, concurrency=concurrency)
        worker.start()
        try:
            yield worker
        finally:
            worker.stop(timeout=STOP_TIMEOUT)


@pytest.hookimpl(hookwrapper=True)
def pytest_fixture_setup(fixturedef: Any, request: Any) -> Iterator[None]:
    outcome: Any = yield
    if fixturedef.argname != "localq_app" or outcome.excinfo is not None:
        return
    app = outcome.get_result()
    if isinstance(app, Localq):
        database = _temporary_database(app)
        database.__enter__()
        fixturedef.addfinalizer(lambda: database.__exit__(None, None, None))


@contextmanager
def _temporary_database(app: Localq) -> Iterator[str]:
    """Point ``app`` at a database in a new temporary folder; undo and delete on exit."""
    with _temporary_databases([app]):
        yield app.path


@contextmanager
def _temporary_databases(apps: Iterable[Localq]) -> Iterator[None]:
    """Point apps at databases in a new temporary folder (one per path they had); undo
    and delete on exit."""
    folder = tempfile.mkdtemp(prefix="localq-test-")
    originals = [(app, app.path) for app in apps]
    paths: dict[str, str] = {}
    for app, original in originals:
        if original not in paths:
            paths[original] = os.path.join(folder, f"{len(paths)}-{os.path.basename(original)}")
        app.path = paths[original]
    try:
        yield
    finally:
        try:
            for app, original in originals:
                app.path = original             # closes the connection to the temporary one
            for path in paths.values():
                wake = wake_folder(path)
                close_bells(wake)               # this process's wake-up sockets for it
                if not wake.startswith(folder + os.sep):
                    shutil.rmtree(wake, ignore_errors=True)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
