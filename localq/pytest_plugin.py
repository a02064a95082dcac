"""The pytest plugin (entry point ``pytest11``): a real worker per test, no infrastructure.

Fixtures:

- ``localq_app``: the app under test. Override it in your ``conftest.py`` to
  return your own app; by default a fresh ``Localq`` is made.
- ``localq_worker``: points that app at a fresh database in the test's
  temporary folder, starts a real embedded worker (real child processes),
  yields it, and stops it after the test, leaving no process and no file.
  The database path written in your code is never opened.
"""
from __future__ import annotations

from typing import Iterator

import pytest

from .app import Localq
from .embedded import EmbeddedWorker


@pytest.fixture
def localq_app() -> Localq:
    """The app under test; override this fixture to return yours."""
    return Localq()


@pytest.fixture
def localq_worker(localq_app: Localq, tmp_path_factory: pytest.TempPathFactory
                  ) -> Iterator[EmbeddedWorker]:
    folder = tmp_path_factory.mktemp("localq")
    original = localq_app.path
    localq_app.path = str(folder / "localq.db")
    worker = EmbeddedWorker(localq_app, concurrency=2)
    worker.start()
    try:
        yield worker
    finally:
        worker.stop()
        localq_app.path = original
