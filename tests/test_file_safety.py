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
