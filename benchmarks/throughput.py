#!/usr/bin/env python3
"""Throughput and latency of localq, beside multiprocessing.Pool(2) in the same run.

    python benchmarks/throughput.py [--quick] [--n N] [--json PATH]

Run from the project root; localq is imported from this checkout. Everything
happens in a fresh temporary folder that is deleted at the end, and every
process started here is stopped by its pid. See benchmarks/README.md for what
each figure means. Stdlib only.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import sqlite3
import statistics
import subprocess
import sys
import time

import _common as c
from _common import WORKERS, BenchError, Worker, percentile

import localq  # noqa: E402  (after _common put this checkout first on sys.path)

POLL = 0.020            # the "cheap count" is polled this often

# The task module: written into the temporary folder so that the CLI worker
# (`python -m localq worker --app benchtasks:app`) can import it.
BENCHTASKS = '''\
"""Written by benchmarks/throughput.py into its temporary folder."""
import os

from localq import Localq

app = Localq(os.environ.get("LOCALQ_BENCH_DB")
             or os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench.db"))


@app.task
def add(x, y):
    return x + y


def plain_add(x, y):          # the same work, for multiprocessing.Pool
    return x + y


_gate = None


def gate_init(event):         # Pool initializer: keep the gate for gate_wait
    global _gate
    _gate = event


def gate_wait():              # holds a Pool worker until the gate opens
    _gate.wait(120)
    return 0
'''

# A client with no threads, blocked in AsyncResult.get() on a job no worker
# will run; it measures its own CPU with getrusage over the wait.
IDLE_CLIENT = '''\
import json, resource, sys, threading, time
import benchtasks
from localq import TimeoutError as LocalqTimeout
window = float(sys.argv[1])
result = benchtasks.add.delay(1, 1)
print("start", flush=True)
u0 = resource.getrusage(resource.RUSAGE_SELF)
t0 = time.perf_counter()
try:
    result.get(timeout=window)
    outcome = "finished?!"
except LocalqTimeout:
    outcome = "timed out"
t1 = time.perf_counter()
u1 = resource.getrusage(resource.RUSAGE_SELF)
cpu = (u1.ru_utime - u0.ru_utime) + (u1.ru_stime - u0.ru_stime)
print(json.dumps({"cpu": cpu, "wall": t1 - t0, "threads": threading.active_count(),
                  "outcome": outcome}), flush=True)
'''


def count_success(ro: sqlite3.Connection) -> int:
    return ro.execute("SELECT count(*) FROM jobs WHERE state='SUCCESS'").fetchone()[0]


def wait_success(ro: sqlite3.Connection, target: int, timeout: float,
                 worker: Worker | None = None) -> float:
    """Poll the cheap count every POLL seconds until `target` jobs are SUCCESS."""
    deadline = time.perf_counter() + timeout
    while True:
        n = count_success(ro)
        now = time.perf_counter()
        if n >= target:
            return now
        if worker is not None:
            worker.check_alive()
        if now > deadline:
            raise BenchError(f"only {n:,} of {target:,} jobs SUCCESS after {timeout}s")
        time.sleep(POLL)


# ---------------------------------------------------------------- the benchmark

class Bench(c.TempBench):
    def __init__(self, n: int, quick: bool) -> None:
        super().__init__("lqbench-", {"benchtasks.py": BENCHTASKS,
                                      "idle_client.py": IDLE_CLIENT})
        self.n = n
        self.quick = quick
        self.idle_window = 1.0 if quick else 3.0
        self.figures: dict[str, dict] = {}

    def fig(self, key: str, label: str, unit: str, localq_value=None, pool_value=None,
            note: str = "") -> None:
        entry = self.figures.setdefault(key, {"label": label, "unit": unit, "localq": None,
                                              "pool": None, "note": ""})
        if localq_value is not None:
            entry["localq"] = localq_value
        if pool_value is not None:
            entry["pool"] = pool_value
        if note:
            entry["note"] = note

    def run(self) -> None:
        self.run_phases([("multiprocessing.Pool", self.pool_phase),
                         ("localq: delay, drain, streaming, round trip, idle CPU",
                          self.localq_phase),
                         ("localq: CLI worker start", self.cli_start_phase),
                         ("localq: embedded worker start", self.embedded_start_phase)])

    # -------------------------------------------------------------- Pool(2)

    def pool_phase(self) -> None:
        n, tasks = self.n, self.tasks
        plain_add = tasks.plain_add
        gate = multiprocessing.Event()
        pool = multiprocessing.Pool(WORKERS, initializer=tasks.gate_init, initargs=(gate,))
        self.pools.append(pool)
        try:
            pool.apply_async(plain_add, (0, 0)).get(timeout=10)       # warm
            # 1. apply_async rate (the pool consumes meanwhile)
            t0 = time.perf_counter()
            results = [pool.apply_async(plain_add, (i, i)) for i in range(n)]
            t1 = time.perf_counter()
            for r in results:
                r.wait(60)
            self.fig("enqueue", "enqueue: delay() / apply_async", "rate", pool_value=n / (t1 - t0))
            # 2. drain of N pre-submitted tasks: both workers held at a gate meanwhile
            gates = [pool.apply_async(tasks.gate_wait) for _ in range(WORKERS)]
            results = [pool.apply_async(plain_add, (i, i)) for i in range(n)]
            time.sleep(0.2)                    # let the task handler queue them up
            t0 = time.perf_counter()
            gate.set()
            for r in results:
                r.wait(60)
            t1 = time.perf_counter()
            for g in gates:
                g.wait(10)
            assert all(r.get(0) == 2 * i for i, r in enumerate(results))
            self.fig("drain", "backlog drain", "rate", pool_value=n / (t1 - t0))
            # 3. streaming: submit N to an idle pool, until all are done
            t0 = time.perf_counter()
            results = [pool.apply_async(plain_add, (i, i)) for i in range(n)]
            for r in results:
                r.wait(60)
            t1 = time.perf_counter()
            self.fig("stream", "streaming end to end", "rate", pool_value=n / (t1 - t0))
            # 4. round trip
            for i in range(20):
                pool.apply_async(plain_add, (i, i)).get(timeout=10)
            rtts = []
            for i in range(200):
                t0 = time.perf_counter()
                pool.apply_async(plain_add, (i, i)).get(timeout=10)
                rtts.append(time.perf_counter() - t0)
            p50, p95 = percentile(rtts, 50), percentile(rtts, 95)
            self.fig("rtt_p50", "round trip p50", "ms", pool_value=p50 * 1000)
            self.fig("rtt_p95", "round trip p95", "ms", pool_value=p95 * 1000)
        finally:
            pool.terminate()
            pool.join()
        # 5. start to first result
        starts = []
        for _ in range(3):
            t0 = time.perf_counter()
            pool = multiprocessing.Pool(WORKERS)
            self.pools.append(pool)
            try:
                pool.apply_async(plain_add, (1, 1)).get(timeout=30)
                starts.append(time.perf_counter() - t0)
            finally:
                pool.terminate()
                pool.join()
        start = statistics.median(starts)
        self.fig("start_cli", "start to first result, CLI worker", "s", pool_value=start)
        self.fig("start_embedded", "start to first result, embedded", "s", pool_value=start)

    # -------------------------------------------------------------- localq

    def localq_phase(self) -> None:
        n, add = self.n, self.add
        # 1. delay() with no worker running: N jobs from one producer
        db = self.use_db("queue.db")
        t0 = time.perf_counter()
        for i in range(n):
            add.delay(i, i)
        t1 = time.perf_counter()
        self.fig("enqueue", "enqueue: delay() / apply_async", "rate", localq_value=n / (t1 - t0),
                 note="no worker running")
        # 2. backlog drain: a CLI worker on those N jobs
        ro = c.read_only(db)
        worker = None
        try:
            worker = Worker(self, db)
            ready = worker.wait_registered(ro)
            done = wait_success(ro, n, timeout=120, worker=worker)
            self.fig("drain", "backlog drain", "rate", localq_value=n / (done - ready),
                     note=f"from the workers row; launch to row {ready - worker.launched:.2f}s")
            self.fig("launch_ready", "CLI launch to registered (info)", "s",
                     localq_value=ready - worker.launched)
            # 3. streaming: worker idle; enqueue N while the pool works
            base = count_success(ro)
            time.sleep(0.3)                 # let it go idle
            t0 = time.perf_counter()
            for i in range(n):
                add.delay(i, i)
            t1 = time.perf_counter()
            done = wait_success(ro, base + n, timeout=120, worker=worker)
            self.fig("stream", "streaming end to end", "rate", localq_value=n / (done - t0))
            self.fig("stream_enqueue", "delay() while a worker runs (info)", "rate",
                     localq_value=n / (t1 - t0), note="the producer side of streaming")
            # 4. round trip
            for i in range(20):
                add.delay(i, i).get(timeout=10)
            rtts = []
            for i in range(200):
                t0 = time.perf_counter()
                value = add.delay(i, i).get(timeout=10)
                rtts.append(time.perf_counter() - t0)
                if value != 2 * i:
                    raise BenchError(f"add({i}, {i}) returned {value!r}")
            self.fig("rtt_p50", "round trip p50", "ms", localq_value=percentile(rtts, 50) * 1000)
            self.fig("rtt_p95", "round trip p95", "ms", localq_value=percentile(rtts, 95) * 1000)
            self.fig("rtt_max", "round trip max (info)", "ms", localq_value=max(rtts) * 1000)
            # 6. idle CPU: the idle worker, and a client blocked in get() elsewhere
            self.idle_cpu(worker)
            worker.check_alive()
            total = ro.execute("SELECT count(*) FROM jobs").fetchone()[0]
            bad = ro.execute("SELECT state, count(*) FROM jobs WHERE state <> 'SUCCESS' "
                             "GROUP BY state").fetchall()
            wrong = c.count_wrong(ro)
            if bad or wrong:
                self.errors.append(f"queue.db: {total} jobs, not SUCCESS: {bad}, "
                                   f"wrong result: {wrong}")
            else:
                self.notes.append(f"check: all {total:,} jobs in queue.db ended SUCCESS with "
                                  f"the right result")
        finally:
            ro.close()
            for w in self.workers:
                w.stop()
            self.app.close()
        if worker is not None:
            self.check_log(worker)

    def idle_cpu(self, worker: Worker) -> None:
        window = self.idle_window
        client = subprocess.Popen([sys.executable, "idle_client.py", str(window)], cwd=self.tmp,
                                  env=c.bench_env(self.tmp, self.db("noworker.db")),
                                  stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
        try:
            time.sleep(0.5)                  # settle after the round trips
            line = client.stdout.readline().strip()
            if line != "start":
                raise BenchError(f"the idle client said {line!r}")
            c0, t0 = worker.cpu_ticks(), time.perf_counter()
            time.sleep(window)
            c1, t1 = worker.cpu_ticks(), time.perf_counter()
            out, _ = client.communicate(timeout=window + 30)
        finally:
            if client.poll() is None:
                client.kill()
                client.wait()
        pct = (c1 - c0) / c.CLK_TCK / (t1 - t0) * 100
        step = 100 / c.CLK_TCK / (t1 - t0)
        self.fig("idle_worker", "idle CPU: worker (supervisor+children)", "pct",
                 localq_value=pct, note=f"/proc/PID/stat over {t1 - t0:.1f}s, "
                 f"resolution {step:.2f} %")
        data = json.loads(out.strip().splitlines()[-1])
        self.fig("idle_client", "idle CPU: client blocked in get()", "pct",
                 localq_value=data["cpu"] / data["wall"] * 100,
                 note=f"getrusage, {data['threads']} thread(s), {data['outcome']}")

    def cli_start_phase(self) -> None:
        """Launch the CLI worker, delay(1, 1).get(): launch to result, median of 3."""
        self.use_db("start.db")
        times: list[float] = []
        for _ in range(3):
            t0 = time.perf_counter()
            worker = Worker(self, self.app.path)
            try:
                self.first_result(t0, times)
            finally:
                worker.stop()
            self.check_log(worker)
        self.start_figure("start_cli", "start to first result, CLI worker", times)

    def embedded_start_phase(self) -> None:
        """`with app.worker(concurrency=2)`: entering the block to the first result."""
        self.use_db("embedded.db")
        times: list[float] = []
        for _ in range(3):
            w = self.app.worker(concurrency=WORKERS)
            t0 = time.perf_counter()
            w.start()
            try:
                self.first_result(t0, times)
            finally:
                w.stop()
        self.start_figure("start_embedded", "start to first result, embedded", times)

    def first_result(self, t0: float, times: list[float]) -> None:
        """delay(1, 1).get(): note the time since t0 in ``times``, check the result."""
        value = self.add.delay(1, 1).get(timeout=30)
        times.append(time.perf_counter() - t0)
        if value != 2:
            raise BenchError(f"add(1, 1) returned {value!r}")

    def start_figure(self, key: str, label: str, times: list[float]) -> None:
        self.fig(key, label, "s", localq_value=statistics.median(times),
                 note="runs: " + ", ".join(f"{t:.3f}" for t in times))
        self.app.close()


# ---------------------------------------------------------------- report

show = c.show       # rate, ms, s, pct


ORDER = ["enqueue", "stream_enqueue", "drain", "stream", "rtt_p50", "rtt_p95", "rtt_max",
         "start_cli", "start_embedded", "launch_ready", "idle_worker", "idle_client"]

TARGETS = [  # key, text, test, shown limit
    ("enqueue", "delay() >= 15,000/s", lambda v: v >= 15000),
    ("stream", "streaming >= 5,000/s", lambda v: v >= 5000),
    ("rtt_p50", "round trip p50 <= 2 ms", lambda v: v <= 2.0),
    ("start_cli", "start to first result <= 0.3 s", lambda v: v <= 0.3),
    ("idle_worker", "idle worker < 1 % CPU", lambda v: v < 1.0),
]


def report(bench: Bench, wall: float) -> str:
    figs = bench.figures
    rows = [("figure", "localq", "Pool(2)", "localq/Pool", "note")]
    for key in ORDER + [k for k in figs if k not in ORDER]:
        if key not in figs:
            continue
        f = figs[key]
        ratio = "n/a"
        if f["localq"] is not None and f["pool"]:
            ratio = f"{f['localq'] / f['pool']:.2f}x"
        rows.append((f["label"], show(f["localq"], f["unit"]), show(f["pool"], f["unit"]),
                     ratio, f["note"]))
    lines = [f"localq throughput benchmark: N={bench.n:,}{' (quick)' if bench.quick else ''}, "
             f"{WORKERS} worker children, {c.machine()}, "
             f"localq {localq.__version__} ({c.git_commit()})", ""]
    lines += c.table(rows, note=True)
    lines.append("")
    for key, text, ok in TARGETS:
        f = figs.get(key)
        value = f["localq"] if f else None
        lines.append(c.target_line(text, show(value, f["unit"] if f else ""),
                                   None if value is None else ok(value)))
    lines.append("")
    lines.extend(bench.notes)
    lines.extend(f"ERROR {e}" for e in bench.errors)
    lines.append(f"total {wall:.1f}s")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="N=2,000 and a 1 s idle window (default N=10,000, 3 s)")
    parser.add_argument("--n", type=int, default=None, help="jobs per throughput figure")
    c.add_json_option(parser)
    args = parser.parse_args()
    n = args.n or (2000 if args.quick else 10000)
    json_path = c.json_path(args)
    started = time.perf_counter()
    ticks = c.all_cpu_ticks()
    bench = Bench(n, args.quick)
    try:
        bench.run()
    finally:
        bench.cleanup()
    wall = time.perf_counter() - started
    bench.notes.append(c.background_load_by_process(ticks, wall))
    print(report(bench, wall))
    if json_path:
        targets = {}
        for key, text, ok in TARGETS:
            value = bench.figures.get(key, {}).get("localq")
            targets[text] = {"value": value, "ok": None if value is None else ok(value)}
        info = c.run_info()
        c.write_json(json_path, {
            "n": n, "quick": args.quick, "workers": WORKERS, "python": info["python"],
            "cpus": info["cpus"], "localq": localq.__version__, "commit": info["commit"],
            "time": info["time"], "seconds": wall, "figures": bench.figures,
            "targets": targets, "notes": bench.notes, "errors": bench.errors})
    return 1 if bench.errors else 0


if __name__ == "__main__":
    sys.exit(main())
