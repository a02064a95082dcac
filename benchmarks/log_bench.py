#!/usr/bin/env python3
"""What ``--loglevel INFO`` (a line per job received and succeeded) costs a stream of jobs.

    python benchmarks/log_bench.py [--n N] [--rounds R]

A CLI worker (``-c 2``) logs to a file at WARNING (the default: no per-job line)
or at INFO; this process sends N trivial jobs one ``delay()`` at a time and
waits until all have succeeded. The two levels run interleaved, R rounds each
(the machine may be noisy); each run gets a fresh database in a temporary
folder, deleted at the end. Stdlib only.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from localq import Localq  # noqa: E402

TASKS = '''
from localq import Localq
app = Localq()

@app.task
def add(x, y):
    return x + y
'''


def one_run(folder: str, level: str, n: int) -> tuple[float, int]:
    """(jobs per second, bytes of log) for one worker at ``level``."""
    db = os.path.join(folder, f"{level}-{time.monotonic_ns()}.db")
    log_path = db + ".log"
    env = dict(os.environ, LOCALQ_DB=db, PYTHONPATH=os.pathsep.join([folder, ROOT]))
    with open(log_path, "w") as log:
        worker = subprocess.Popen([sys.executable, "-m", "localq", "worker", "-A", "benchlog:app",
                                   "-c", "2", "-l", level], cwd=folder, env=env, stderr=log,
                                  stdout=subprocess.DEVNULL)
    try:
        app = Localq(db)
        sys.path.insert(0, folder)
        import benchlog
        benchlog.app.path = db
        deadline = time.monotonic() + 60
        while not (os.path.exists(db) and app.store.workers()):
            if time.monotonic() > deadline or worker.poll() is not None:
                raise SystemExit(f"the worker did not start: {open(log_path).read()}")
            time.sleep(0.01)
        t0 = time.perf_counter()
        last = None
        for i in range(n):
            last = benchlog.add.delay(i, i)
        assert last is not None and last.get(timeout=300) == 2 * (n - 1)
        while sum(c for _, _, s, c in app.store.counts() if s == "SUCCESS") < n:
            time.sleep(0.001)
        elapsed = time.perf_counter() - t0
        app.close()
        benchlog.app.close()
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(60)
    return n / elapsed, os.path.getsize(log_path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="lq-logbench-")
    try:
        with open(os.path.join(folder, "benchlog.py"), "w") as f:
            f.write(TASKS)
        rates: dict[str, list[float]] = {"WARNING": [], "INFO": []}
        sizes: dict[str, int] = {}
        for r in range(args.rounds):
            for level in (("WARNING", "INFO") if r % 2 == 0 else ("INFO", "WARNING")):
                rate, size = one_run(folder, level, args.n)
                rates[level].append(rate)
                sizes[level] = size
                print(f"round {r + 1} {level:<7} {rate:8.0f} jobs/s  log {size} bytes",
                      flush=True)
        for level, values in rates.items():
            print(f"{level:<7} median {statistics.median(values):8.0f} jobs/s  "
                  f"(min {min(values):.0f}, max {max(values):.0f}; {args.n} jobs x "
                  f"{args.rounds}; log {sizes[level]} bytes per run)")
        w, i = statistics.median(rates["WARNING"]), statistics.median(rates["INFO"])
        print(f"INFO costs {100 * (w - i) / w:.1f}% of the stream's rate "
              f"({1e6 / i - 1e6 / w:.1f} us per job)")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
