"""The worker's log: the banner, a line per job at INFO, and the tasks' own records.

Through real workers: ``python -m localq worker`` in a subprocess (its stderr
in a file), and the embedded worker (its stderr is the test's, read with capfd).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Iterator

import pytest
import sample_tasks
from conftest import ROOT, wait_for

from localq import Localq, get_task_logger

TASKS = """
    import logging

    from localq import Localq, get_task_logger

    app = Localq()
    log = logging.getLogger(__name__)
    task_log = get_task_logger(__name__)

    @app.task
    def add(x, y):
        return x + y

    @app.task
    def chatty(word):
        log.info("plain logger says %s", word)
        task_log.warning("task logger says %s", word)
        return word

    @app.task(bind=True, max_retries=1, default_retry_delay=0.01)
    def flaky(self):
        raise self.retry(exc=ConnectionError("boom"))
"""


class Worker:
    def __init__(self, folder: Path, *args: str) -> None:
        (folder / "lqlog.py").write_text(textwrap.dedent(TASKS))
        self.log = folder / f"worker-{time.monotonic_ns()}.log"
        self.db = str(folder / "jobs.db")
        env = dict(os.environ, LOCALQ_DB=self.db,
                   PYTHONPATH=os.pathsep.join([str(folder), str(ROOT)]))
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "localq", "worker", "-A",
                                         "lqlog:app", "-c", "1", *args], cwd=folder, env=env,
                                        stderr=log, stdout=subprocess.DEVNULL,
                                        start_new_session=True)

    def text(self) -> str:
        return self.log.read_text()

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)
        return self.text()


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[list[Worker]]:
    started: list[Worker] = []
    yield started
    for w in started:
        if w.proc.poll() is None:
            w.proc.kill()
            w.proc.wait(30)


def run_jobs(tmp_path: Path, workers: list[Worker], *args: str) -> tuple[str, dict[str, str]]:
    worker = Worker(tmp_path, *args)
    workers.append(worker)
    wait_for(lambda: "[tasks]" in worker.text() or worker.proc.poll() is not None,
             what="the banner")
    app = Localq(worker.db)
    ids = {"add": app.send_task("lqlog.add", (2, 2)).id,
           "chatty": app.send_task("lqlog.chatty", ("hi",)).id,
           "flaky": app.send_task("lqlog.flaky").id}
    assert app.AsyncResult(ids["add"]).get(timeout=30) == 4
    assert app.AsyncResult(ids["chatty"]).get(timeout=30) == "hi"
    with pytest.raises(ConnectionError):
        app.AsyncResult(ids["flaky"]).get(timeout=30)
    app.close()
    return worker.stop(), ids


def test_info_logs_the_banner_every_job_and_the_tasks_own_records(tmp_path, workers):
    log, ids = run_jobs(tmp_path, workers, "-l", "info")
    assert re.search(r"database:\s+" + re.escape(str(tmp_path / "jobs.db")), log)
    assert "[tasks]\n  . lqlog.add\n  . lqlog.chatty\n  . lqlog.flaky\n" in log
    add = ids["add"]
    assert f"Task lqlog.add[{add}] received" in log
    assert re.search(rf"Task lqlog\.add\[{add}\] succeeded in \d+\.\d{{3}}s: 4\n", log)
    chatty = ids["chatty"]
    assert re.search(rf"INFO/Child \d+\] lqlog\.chatty\[{chatty}\]: plain logger says hi\n",
                     log), log
    assert re.search(rf"WARNING/Child \d+\] lqlog\.chatty\[{chatty}\]: task logger says hi\n",
                     log), log
    assert f"Task lqlog.flaky[{ids['flaky']}] retry: Retry in 0s: ConnectionError('boom')" \
        in log
    assert f"Task lqlog.flaky[{ids['flaky']}] raised: boom" in log     # the failure, as before


def test_the_default_level_logs_the_banner_and_failures_only(tmp_path, workers):
    log, ids = run_jobs(tmp_path, workers)
    assert "[tasks]" in log
    assert "received" not in log and "succeeded" not in log and "retry:" not in log
    assert "plain logger says" not in log
    assert f"lqlog.chatty[{ids['chatty']}]: task logger says hi" in log       # a WARNING
    assert f"Task lqlog.flaky[{ids['flaky']}] raised: boom" in log


def test_the_embedded_worker_passes_task_records_through(app, capfd):
    logger = get_task_logger("sample_tasks")
    assert logger.name == "sample_tasks"
    with app.worker(concurrency=1, loglevel="INFO"):
        r = sample_tasks.add.delay(20, 22)
        assert r.get(timeout=20) == 42
    err = capfd.readouterr().err
    assert re.search(rf"Task sample_tasks\.add\[{r.id}\] succeeded in [\d.]+s: 42", err), err


def test_an_unknown_embedded_loglevel_is_refused(app):
    with pytest.raises(ValueError, match="unknown log level 'LOUD'"):
        app.worker(loglevel="LOUD")
