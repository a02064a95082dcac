#!/usr/bin/env python3
"""How late an idle worker with ``-B`` sends a periodic task's due runs.

    python benchmarks/beat_bench.py [--runs N] [--every SECONDS] [--idle SECONDS]

One CLI worker (``python -m localq worker -B -c 1 -l info``) on a fresh database in a
temporary folder runs one entry every ``--every`` seconds (default 0.1) until N runs
(default 50) were sent. For each run: the due time (from the worker's log line, which
names the job) and when the job was sent (the job row's ``created``, written in the
transaction that records the run) and started. Prints p50 and max of sent - due and
started - due, in ms, against the issue's target (sent within 50 ms). The worker is
stopped by its pid and the folder deleted at the end.

Then what the scheduler costs between due times: the CPU time of an idle worker over
``--idle`` seconds (default 5) with ``-B`` and an entry due in an hour, beside one
without ``-B``. Stdlib only.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from localq import Localq  # noqa: E402

TASKS = '''
from localq import Localq
app = Localq()

@app.task
def tick():
    return None

app.conf.beat_schedule = {{"tick": {{"task": "beatbench.tick", "schedule": {every}}}}}
'''
CLK_TCK = os.sysconf("SC_CLK_TCK")
SENT = re.compile(r"Sending due task tick \(beatbench\.tick\) due (\S+ \S+): job (\S+)")
TARGET_MS = 50.0


def start_worker(folder: str, every: float, *flags: str) -> tuple[subprocess.Popen, str, str]:
    """A CLI worker (-c 1, -l info) on a fresh database: (process, database, log path)."""
    with open(os.path.join(folder, "beatbench.py"), "w") as f:
        f.write(TASKS.format(every=every))
    db = os.path.join(folder, f"beat-{time.monotonic_ns()}.db")
    log_path = db + ".log"
    env = dict(os.environ, LOCALQ_DB=db, PYTHONPATH=os.pathsep.join([folder, ROOT]))
    with open(log_path, "w") as log:
        worker = subprocess.Popen([sys.executable, "-m", "localq", "worker", *flags, "-c", "1",
                                   "-l", "info", "-A", "beatbench:app"], cwd=folder, env=env,
                                  stderr=log, stdout=subprocess.DEVNULL)
    return worker, db, log_path


def stop(worker: subprocess.Popen) -> None:
    worker.send_signal(signal.SIGTERM)
    try:
        worker.wait(30)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait()


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK      # utime + stime


def idle_cpu(folder: str, seconds: float, *flags: str) -> float:
    """CPU seconds a ready, idle worker's supervisor uses over ``seconds``."""
    worker, _, log_path = start_worker(folder, 3600.0, *flags)
    try:
        deadline = time.monotonic() + 60
        while "localq worker ready" not in open(log_path).read():
            if time.monotonic() > deadline or worker.poll() is not None:
                raise SystemExit(f"beat_bench: the worker did not start; see {log_path}")
            time.sleep(0.05)
        before = cpu_seconds(worker.pid)
        time.sleep(seconds)
        return cpu_seconds(worker.pid) - before
    finally:
        stop(worker)


def measure(folder: str, runs: int, every: float) -> list[tuple[float, float]]:
    """(sent - due, started - due) in seconds, per run."""
    worker, db, log_path = start_worker(folder, every, "-B")
    app = Localq(db)
    try:
        deadline = time.monotonic() + runs * every * 4 + 60
        found: list[tuple[str, str]] = []
        while len(found) < runs + 1:      # the first may meet a worker still starting
            if time.monotonic() > deadline or worker.poll() is not None:
                raise SystemExit(f"beat_bench: only {len(found)} runs were sent; see "
                                 f"{log_path}:\n{open(log_path).read()[-2000:]}")
            time.sleep(every)
            with open(log_path) as f:
                found = SENT.findall(f.read())
        figures = []
        for due_text, job_id in found[1:runs + 1]:
            due = datetime.fromisoformat(due_text).timestamp()
            result = app.AsyncResult(job_id)
            result.get(timeout=30)
            row = app.store.job(job_id)
            assert row is not None
            figures.append((row["created"] - due, row["started"] - due))
        return figures
    finally:
        stop(worker)
        app.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--every", type=float, default=0.1)
    parser.add_argument("--idle", type=float, default=5.0)
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="localq-beat-bench-")
    try:
        figures = measure(folder, args.runs, args.every)
        idle = {"with -B": idle_cpu(folder, args.idle, "-B"),
                "without -B": idle_cpu(folder, args.idle)}
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(f"beat: {len(figures)} due runs every {args.every}s, idle worker with -B")
    for label, values in (("sent - due", [f[0] for f in figures]),
                          ("started - due", [f[1] for f in figures])):
        ms = [v * 1000 for v in values]
        print(f"  {label:<14} p50 {statistics.median(ms):7.2f} ms   max {max(ms):7.2f} ms"
              f"   min {min(ms):7.2f} ms")
    worst = max(f[0] for f in figures) * 1000
    print(f"  target: sent within {TARGET_MS:.0f} ms of the due time (max): "
          f"{'OK' if worst <= TARGET_MS else 'MISS'}")
    print(f"idle supervisor, {args.idle:.0f} s, next due run in an hour: CPU "
          + ", ".join(f"{label} {cpu * 1000:.0f} ms ({cpu / args.idle:.2%} of a core)"
                      for label, cpu in idle.items()))


if __name__ == "__main__":
    main()
