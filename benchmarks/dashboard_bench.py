#!/usr/bin/env python3
"""What an open dashboard costs the worker, and how fast its pages answer on a big file.

    python benchmarks/dashboard_bench.py [--quick] [--n N] [--rounds R] [--big JOBS]

1. Streaming with and without a page refreshing: one CLI worker (-c 2) runs
   ``add`` as this process streams N ``delay()`` calls and waits for the last
   result; rounds alternate "no dashboard" and "a dashboard with a page
   refreshing", so that the VM's drift hits both alike. The page is played by an
   HTTP client in a process of its own that asks, once a second, what the open
   Tasks page asks (the newest 50 tasks; the heaviest page), without a browser's
   own CPU on these 2 cores; ``--all-pages`` asks for every page's data and
   /metrics each second instead (five tabs open). Target: the median with a page
   >= 0.95x the median without.
2. Page latency with ``--big`` jobs in the file (1,000,000 by default; 0 skips):
   the jobs are sent and run to the end (one in 1,000 fails), then every API path
   is asked 20 times; the median and the worst are printed. Target: < 100 ms.

Run from the project root; localq comes from this checkout. Everything happens in
a fresh temporary folder deleted at the end; every process is stopped by its pid.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
import urllib.request

import _common as c
from _common import BenchError, Worker

BENCHTASKS = '''\
"""Written by benchmarks/dashboard_bench.py into its temporary folder."""
import os

from localq import Localq

app = Localq(os.environ.get("LOCALQ_BENCH_DB"))


@app.task
def add(x, y):
    return x + y


@app.task
def fail(x):
    raise ValueError(x)
'''

PAGE_PATHS = ["/api/workers", "/api/tasks?limit=50", "/api/queues", "/api/throughput",
              "/metrics"]
TASKS_PAGE = ["/api/tasks?limit=50"]


class Dashboard:
    """``python -m localq dashboard --port 0`` as a subprocess."""

    def __init__(self, bench: c.TempBench, db: str) -> None:
        self.log_path = bench.db("dashboard.log")
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "localq", "dashboard", "--app", "benchtasks:app",
             "--db", db, "--port", "0", "--readonly"], cwd=bench.tmp,
            env=c.bench_env(bench.tmp, db), stdout=subprocess.DEVNULL, stderr=self.log)
        deadline = time.monotonic() + 30
        while True:
            with open(self.log_path) as f:
                found = re.search(r"dashboard on (http://\S+)/", f.read())
            if found:
                self.url = found.group(1)
                return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise BenchError(f"the dashboard did not start: {open(self.log_path).read()}")
            time.sleep(0.01)

    def get(self, path: str) -> tuple[float, bytes]:
        t0 = time.perf_counter()
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            body = r.read()
            self.next = r.headers.get("X-Localq-Next")     # the next page's cursor
        return time.perf_counter() - t0, body

    def stop(self) -> None:
        c.stop_by_pid(self.proc, [])
        self.log.close()


# The page left open, in a process of its own as a browser tab would be (a thread here
# would take the producer's GIL): every second, what the pages ask for. It prints how
# many requests it made when it is stopped (SIGTERM).
REFRESHER = '''\
import signal, sys, time, urllib.request
url, paths = sys.argv[1], sys.argv[2:]
count = 0
def stop(*_):
    print(count, flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
while True:
    t0 = time.monotonic()
    for path in paths:
        with urllib.request.urlopen(url + path, timeout=30) as r:
            r.read()
        count += 1
    time.sleep(max(0.0, 1.0 - (time.monotonic() - t0)))
'''


class Refresher:
    """The page, open for the whole comparison (a browser tab is not reopened for each
    run): it runs during the "with" runs and is stopped (SIGSTOP) between them, so
    that its interpreter's start is never inside a run."""

    def __init__(self, dash: Dashboard, paths: list[str]) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", REFRESHER, dash.url, *paths],
                                     stdout=subprocess.PIPE, text=True)
        time.sleep(1.5)                    # started, and its first requests made
        self.pause()

    def pause(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self) -> int:
        """Stop it by its pid; how many requests it made."""
        self.resume()
        self.proc.terminate()
        out, _ = self.proc.communicate(timeout=30)
        return int(out.strip() or 0)


def stream(bench: c.TempBench, n: int) -> float:
    add = bench.add
    t0 = time.perf_counter()
    last = None
    for i in range(n):
        last = add.delay(i, i)
    assert last is not None
    if last.get(timeout=120) != 2 * (n - 1):
        raise BenchError("wrong result")
    return n / (time.perf_counter() - t0)


def overhead(bench: c.TempBench, n: int, rounds: int, paths: list[str],
             out: list[str]) -> float:
    db = bench.use_db("stream.db")
    worker = Worker(bench, db)
    dash = Dashboard(bench, db)
    ro = c.read_only(db)
    try:
        worker.wait_registered(ro)
        stream(bench, min(n, 2000))                           # warm
        without: list[float] = []
        with_page: list[float] = []
        page = Refresher(dash, paths)
        ticks = 0                      # CPU of the dashboard and the page, in clock ticks
        try:
            for r in range(rounds):
                for mode in (("without", "with") if r % 2 == 0 else ("with", "without")):
                    if mode == "without":
                        without.append(stream(bench, n))
                        continue
                    t0 = c.proc_cpu_ticks(dash.proc.pid) + c.proc_cpu_ticks(page.proc.pid)
                    page.resume()
                    try:
                        with_page.append(stream(bench, n))
                    finally:
                        page.pause()
                        ticks += (c.proc_cpu_ticks(dash.proc.pid) +
                                  c.proc_cpu_ticks(page.proc.pid) - t0)
        finally:
            requests = page.stop()
        a, b = statistics.median(without), statistics.median(with_page)
        paired = statistics.median(w / o for w, o in zip(with_page, without))
        seconds = sum(n / x for x in with_page)
        out += c.table([("streaming end to end, 2 children", "median", "runs"),
                        ("no dashboard", f"{a:,.0f}/s",
                         " ".join(f"{x:,.0f}" for x in without)),
                        ("a page refreshing each second", f"{b:,.0f}/s",
                         " ".join(f"{x:,.0f}" for x in with_page))])
        out.append(f"the page asks each second for: {' '.join(paths)}")
        out.append(f"{requests} page requests in all ({seconds:.1f}s of 'with' runs); the "
                   f"dashboard and the page used {ticks / c.CLK_TCK:.2f} CPU-s "
                   f"({100 * ticks / c.CLK_TCK / seconds:.1f} % of one core)")
        out.append(f"median of the paired ratios (each 'with' run over the 'without' run "
                   f"beside it): {paired:.3f}x")
        out.append(c.target_line(">= 0.95x (medians)", f"{b / a:.3f}x", b / a >= 0.95))
        bench.check_log(worker)
        return b / a
    finally:
        ro.close()
        dash.stop()
        worker.stop()


def latency(bench: c.TempBench, jobs: int, out: list[str]) -> None:
    db = bench.use_db("big.db")
    add, fail = bench.add, bench.tasks.fail
    t0 = time.perf_counter()
    for i in range(jobs):
        if i % 1000 == 999:
            fail.delay(i)
        else:
            add.delay(i, i)
    print(f"    sent {jobs:,} jobs in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    worker = Worker(bench, db)
    ro = c.read_only(db)
    try:
        deadline = time.monotonic() + 600
        while ro.execute("SELECT count(*) FROM jobs WHERE state IN ('PENDING', 'STARTED')"
                         ).fetchone()[0]:
            worker.check_alive()
            if time.monotonic() > deadline:
                raise BenchError("the big file was not drained in 10 minutes")
            time.sleep(0.5)
        print(f"    ran them in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
        dash = Dashboard(bench, db)
        try:
            _, body = dash.get("/api/tasks?limit=50")
            some = list(json.loads(body))[-1]
            paths = PAGE_PATHS + [
                f"/api/tasks?limit=50&before={dash.next}",
                "/api/tasks?limit=50&state=FAILURE",
                "/api/tasks?limit=50&taskname=benchtasks.fail",
                "/api/tasks?limit=50&state=REVOKED",
                f"/api/tasks?search={some}", f"/api/task/info/{some}",
                "/api/queues/length", "/"]
            rows = [("path", "median", "worst of 20")]
            worst_all = 0.0
            for path in paths:
                times = [dash.get(path)[0] for _ in range(20)]
                worst_all = max(worst_all, max(times))
                rows.append((path[:60], f"{statistics.median(times) * 1000:.1f} ms",
                             f"{max(times) * 1000:.1f} ms"))
            n = ro.execute("SELECT count(*) FROM jobs").fetchone()[0]
            out.append("")
            out += c.table([(f"page latency, {n:,} jobs in the file", *rows[0][1:]),
                            *rows[1:]])
            out.append(c.target_line("< 100 ms", f"worst {worst_all * 1000:.1f} ms",
                                     worst_all < 0.1))
        finally:
            dash.stop()
    finally:
        ro.close()
        worker.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="N=30,000, 5 rounds, 100,000 jobs")
    parser.add_argument("--n", type=int, default=None, help="jobs per streaming run")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--big", type=int, default=None, help="jobs in the big file (0: skip)")
    parser.add_argument("--all-pages", action="store_true",
                        help="the page asks for every page's data and /metrics each second")
    args = parser.parse_args()
    # A run lasts seconds, so that a page asking once a second asks several times in it.
    n = args.n or (30_000 if args.quick else 50_000)
    rounds = args.rounds or (5 if args.quick else 8)
    big = args.big if args.big is not None else (100_000 if args.quick else 1_000_000)
    bench = c.TempBench("lqdash-", {"benchtasks.py": BENCHTASKS})
    before = c.all_cpu_ticks()
    t0 = time.perf_counter()
    out = [f"dashboard_bench: {c.machine()}, {c.git_commit()}"]
    try:
        paths = PAGE_PATHS if args.all_pages else TASKS_PAGE
        phases = [("streaming with and without a page",
                   lambda: overhead(bench, n, rounds, paths, out))]
        if big:
            phases.append(("page latency on a big file", lambda: latency(bench, big, out)))
        bench.run_phases(phases)
    finally:
        bench.cleanup()
    wall = time.perf_counter() - t0
    out += c.report_tail(bench.notes + [f"ERROR {e}" for e in bench.errors],
                         c.background_load_by_process(before, wall), wall)
    print("\n".join(out))
    return 1 if bench.errors else 0


if __name__ == "__main__":
    sys.exit(main())
