"""The pytest plugin (entry point ``pytest11``, installed with localq): a real worker per test.

Fixtures:

- ``localq_app``: the app under test. Override it in your ``conftest.py`` to
  return your own app (``return myproject.app``); by default a fresh
  ``Localq`` is made.
- ``localq_worker``: points that app at a fresh database in a temporary
  folder, starts a real embedded worker (a supervisor and real child
  processes, ``concurrency=2`` unless the ini option
  ``localq_worker_concurrency`` says otherwise), yields it, and after the test
  stops it and deletes the folder: no process and no file is left.

The database path written in your code is never opened while the tests run:
whichever fixture defines ``localq_app`` (this one or yours), the app it
returns is pointed at a temporary database for the duration of the fixture,
before the test or any other fixture can use it, and pointed back afterwards.
So keep the override to returning the app; use it in the test or in fixtures
that request ``localq_app``.

How: a ``pytest_fixture_setup`` hook wrapper sees the value of any fixture
named ``localq_app`` as soon as it is made; a fixture of this module could
not, since a user's override replaces it. The temporary folders come from
``tempfile.mkdtemp`` (short paths, so the wake-up sockets fit beside the
database) and are removed at teardown.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from typing import Any, Iterator

import pytest

from .app import Localq
from .embedded import EmbeddedWorker
from .result import close_bells
from .wakeup import wake_folder

STOP_TIMEOUT = 10.0      # seconds of warm shutdown before the worker is stopped cold
DEFAULT_CONCURRENCY = 2


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini("localq_worker_concurrency",
                  "child processes of the worker started by the localq_worker fixture",
                  default=str(DEFAULT_CONCURRENCY))


@pytest.fixture
def localq_app() -> Localq:
    """The app under test; override this fixture in your conftest.py to return yours."""
    return Localq(main="localq-tests")


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
    folder = tempfile.mkdtemp(prefix="localq-test-")
    original = app.path
    app.path = os.path.join(folder, "localq.db")
    try:
        yield app.path
    finally:
        try:
            wake = wake_folder(app.path)
            app.path = original             # closes the connection to the temporary one
            close_bells(wake)               # this process's wake-up sockets for it
            if not wake.startswith(folder + os.sep):
                shutil.rmtree(wake, ignore_errors=True)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
