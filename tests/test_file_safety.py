"""The database file stays sound when many connections come and go at once.

Regression test: localq once read the file's header through a file descriptor of
its own. Closing that descriptor dropped every POSIX lock the process held on the
file, including those of another thread's open connection, so a process that
closed its last connection meanwhile could checkpoint and reset the WAL under it:
"disk I/O error", then a corrupt file.
"""
from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading

from conftest import ROOT

from localq import Localq


def test_threads_opening_apps_while_processes_come_and_go_keep_the_file_sound(tmp_path):
    path = str(tmp_path / "busy.db")
    keep = Localq(path)
    steady_task = keep.task(lambda: 1, name="t")
    steady_task.delay()
    stop = threading.Event()
    errors: list[BaseException] = []

    def guarded(body):
        def run():
            try:
                while not stop.is_set():
                    body()
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)
        return run

    def open_send_close():
        app = Localq(path)
        app.task(lambda: 1, name="t").delay()
        app.close()

    threads = [threading.Thread(target=guarded(open_send_close)) for _ in range(2)]
    threads.append(threading.Thread(target=guarded(steady_task.delay)))
    for t in threads:
        t.start()
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r})\nfrom localq import Localq\n"
            f"a = Localq({path!r}); t = a.task(lambda: 1, name='t')\n"
            f"for _ in range(20): t.delay()\n")
    try:
        for _ in range(30):                  # each opens, writes and closes its connection
            subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    finally:
        stop.set()
        for t in threads:
            t.join()
    keep.close()
    assert not errors, errors[0]
    con = sqlite3.connect(path)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert con.execute("SELECT count(*) FROM jobs").fetchone()[0] > 600
    finally:
        con.close()


def test_a_send_waits_out_a_write_lock_held_elsewhere_and_then_lands(tmp_path):
    # Writes fail fast on a taken lock and retry in localq (not in SQLite's busy
    # wait); a send that meets the lock must neither raise nor be lost.
    path = str(tmp_path / "locked.db")
    app = Localq(path)
    echo = app.task(lambda x: x, name="echo")
    echo.delay(0)                                  # the file exists, with its schema
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")              # another writer holds the lock
    outcome: dict[str, object] = {}

    def send():
        try:
            outcome["id"] = echo.delay(1).id
        except BaseException as exc:  # noqa: BLE001
            outcome["error"] = exc

    sender = threading.Thread(target=send)
    sender.start()
    sender.join(0.3)                               # long enough to meet the lock many times
    assert sender.is_alive() and not outcome, "the send did not wait for the lock"
    holder.execute("COMMIT")
    sender.join(30)
    holder.close()
    assert "error" not in outcome, outcome.get("error")
    assert app.AsyncResult(str(outcome["id"])).state == "PENDING"
    assert app.store.job(str(outcome["id"]))["task"] == "echo"
    app.close()
