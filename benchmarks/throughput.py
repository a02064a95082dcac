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
import os
import platform
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from urllib.request import pathname2url

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import localq  # noqa: E402  (after the sys.path insertion, on purpose)

WORKERS = 2
CLK_TCK = os.sysconf("SC_CLK_TCK")
POLL = 0.020            # the "cheap count" is polled this often
READY_POLL = 0.001      # the workers table is polled this often while a worker starts

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


class BenchError(Exception):
    pass


# ---------------------------------------------------------------- processes

def proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (index 0 is the state)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    return data[data.rindex(b")") + 2:].decode().split()


def proc_children(pid: int) -> list[int]:
    kids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            fields = proc_stat(int(name))
            if fields and int(fields[1]) == pid:
                kids.append(int(name))
    return kids


def all_cpu_ticks() -> dict[tuple[int, str], int]:
    """(pid, start time) -> user+sys ticks, for every process we can see."""
    out = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            fields = proc_stat(int(name))
            if fields:
                out[(int(name), fields[19])] = int(fields[11]) + int(fields[12])
    return out


def background_load(before: dict[tuple[int, str], int], seconds: float) -> str:
    """CPU used meanwhile by processes that are not this one (ours are all stopped by
    now): other load on the machine makes every figure noisier."""
    me = os.getpid()
    used = sum(ticks - before.get(key, 0) for key, ticks in all_cpu_ticks().items()
               if key[0] != me)
    cpus = os.cpu_count() or 1
    share = used / CLK_TCK / (seconds * cpus) * 100
    return (f"background: other processes used {used / CLK_TCK:.1f} CPU-s of "
            f"{seconds * cpus:.0f} ({share:.0f} % of the machine) during the run"
            + ("; figures are noisy, run again on a quiet machine" if share > 5 else ""))


def proc_cpu_ticks(pid: int) -> int:
    fields = proc_stat(pid)
    return int(fields[11]) + int(fields[12]) if fields else 0


def proc_start(pid: int) -> str | None:
    """The kernel's start time of a live process (None when gone or a zombie)."""
    fields = proc_stat(pid)
    return fields[19] if fields and fields[0] not in ("Z", "X") else None


class Worker:
    """A CLI worker subprocess: `python -m localq worker --app benchtasks:app -c 2`."""

    def __init__(self, bench: Bench, db: str, extra_env: dict[str, str] | None = None) -> None:
        """``bench`` needs only ``tmp`` (the folder with benchtasks.py) and ``workers`` (a
        list this worker joins); benchmarks/scale.py starts its workers here too."""
        self.db = db
        self.log_path = os.path.join(bench.tmp, f"worker-{len(bench.workers)}.log")
        self.log = open(self.log_path, "wb")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([bench.tmp, ROOT])
        env["LOCALQ_BENCH_DB"] = db
        env.update(extra_env or {})
        self.launched = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "localq", "worker", "--app", "benchtasks:app",
             "-c", str(WORKERS), "--loglevel", "WARNING"],
            cwd=bench.tmp, env=env, stdin=subprocess.DEVNULL, stdout=self.log,
            stderr=subprocess.STDOUT)
        self.pid = self.proc.pid
        self.leftovers: list[int] = []    # children we had to kill ourselves
        bench.workers.append(self)

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise BenchError(f"the worker (pid {self.pid}) exited with code "
                             f"{self.proc.returncode}: {self.log_tail()}")

    def wait_registered(self, ro: sqlite3.Connection, timeout: float = 30.0) -> float:
        """Poll the workers table (read-only) until this worker's row is there."""
        deadline = time.perf_counter() + timeout
        while True:
            row = ro.execute("SELECT 1 FROM workers WHERE pid = ?", (self.pid,)).fetchone()
            now = time.perf_counter()
            if row:
                return now
            self.check_alive()
            if now > deadline:
                raise BenchError(f"the worker did not register within {timeout}s")
            time.sleep(READY_POLL)

    def cpu_ticks(self) -> int:
        """user+sys clock ticks of the supervisor and its live children."""
        return proc_cpu_ticks(self.pid) + sum(proc_cpu_ticks(k) for k in proc_children(self.pid))

    def stop(self) -> None:
        """Warm shutdown (SIGTERM), then by force; children are checked by pid."""
        if self.proc.returncode is None:
            kids = [(k, proc_start(k)) for k in proc_children(self.pid)]
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(15)
                except subprocess.TimeoutExpired:
                    self.proc.send_signal(signal.SIGKILL)
                    self.proc.wait(15)
            deadline = time.monotonic() + 5
            for pid, start in kids:        # children die with it; check, by pid
                while start is not None and proc_start(pid) == start:
                    if time.monotonic() > deadline:
                        os.kill(pid, signal.SIGKILL)
                        self.leftovers.append(pid)
                        break
                    time.sleep(0.01)
        if not self.log.closed:
            self.log.close()

    def log_tail(self, lines: int = 20) -> str:
        self.log.flush()
        text = Path(self.log_path).read_text(errors="replace").strip().splitlines()
        return "\n".join(text[-lines:]) or "(no output)"

    def log_lines(self) -> list[str]:
        return Path(self.log_path).read_text(errors="replace").strip().splitlines()


def read_only(path: str) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{pathname2url(path)}?mode=ro", uri=True, timeout=30,
                           isolation_level=None, check_same_thread=False)


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

class Bench:
    def __init__(self, n: int, quick: bool) -> None:
        self.n = n
        self.quick = quick
        self.idle_window = 1.0 if quick else 3.0
        self.tmp = tempfile.mkdtemp(prefix="lqbench-")
        if len(self.tmp) > 60:        # keep <db>.d/ bells inside it (sun_path is short)
            shutil.rmtree(self.tmp)
            self.tmp = tempfile.mkdtemp(prefix="lqbench-", dir="/tmp")
        self.workers: list[Worker] = []
        self.pools: list = []
        self.figures: dict[str, dict] = {}
        self.notes: list[str] = []
        self.errors: list[str] = []
        Path(self.tmp, "benchtasks.py").write_text(BENCHTASKS)
        Path(self.tmp, "idle_client.py").write_text(IDLE_CLIENT)
        sys.path.insert(0, self.tmp)
        import benchtasks
        self.tasks = benchtasks
        self.app = benchtasks.app
        self.add = benchtasks.add

    def db(self, name: str) -> str:
        return os.path.join(self.tmp, name)

    def use_db(self, name: str) -> str:
        """Point the app at a fresh database file and create it (not timed)."""
        path = self.db(name)
        self.app.path = path
        self.app.store.data_version()
        return path

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
        for name, phase in [("multiprocessing.Pool", self.pool_phase),
                            ("localq: delay, drain, streaming, round trip, idle CPU",
                             self.localq_phase),
                            ("localq: CLI worker start", self.cli_start_phase),
                            ("localq: embedded worker start", self.embedded_start_phase)]:
            t0 = time.perf_counter()
            print(f"... {name}", file=sys.stderr, flush=True)
            try:
                phase()
            except Exception as exc:      # report, keep going, clean up at the end
                self.errors.append(f"{name}: {type(exc).__name__}: {exc}")
                traceback.print_exc()
            finally:
                for w in list(self.workers):
                    w.stop()
            print(f"    {time.perf_counter() - t0:.1f}s", file=sys.stderr, flush=True)

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
        ro = read_only(db)
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
            wrong = ro.execute("SELECT count(*) FROM jobs WHERE state = 'SUCCESS' AND "
                               "CAST(result AS INTEGER) <> 2 * json_extract(payload, '$[0][0]')"
                               ).fetchone()[0]
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
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([self.tmp, ROOT])
        env["LOCALQ_BENCH_DB"] = self.db("noworker.db")
        client = subprocess.Popen([sys.executable, "idle_client.py", str(window)], cwd=self.tmp,
                                  env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  text=True)
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
        pct = (c1 - c0) / CLK_TCK / (t1 - t0) * 100
        step = 100 / CLK_TCK / (t1 - t0)
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
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            worker = Worker(self, self.app.path)
            try:
                value = self.add.delay(1, 1).get(timeout=30)
                times.append(time.perf_counter() - t0)
                if value != 2:
                    raise BenchError(f"add(1, 1) returned {value!r}")
            finally:
                worker.stop()
            self.check_log(worker)
        self.fig("start_cli", "start to first result, CLI worker", "s",
                 localq_value=statistics.median(times),
                 note="runs: " + ", ".join(f"{t:.3f}" for t in times))
        self.app.close()

    def embedded_start_phase(self) -> None:
        """`with app.worker(concurrency=2)`: entering the block to the first result."""
        self.use_db("embedded.db")
        times = []
        for _ in range(3):
            w = self.app.worker(concurrency=WORKERS)
            t0 = time.perf_counter()
            w.start()
            try:
                value = self.add.delay(1, 1).get(timeout=30)
                times.append(time.perf_counter() - t0)
                if value != 2:
                    raise BenchError(f"add(1, 1) returned {value!r}")
            finally:
                w.stop()
        self.fig("start_embedded", "start to first result, embedded", "s",
                 localq_value=statistics.median(times),
                 note="runs: " + ", ".join(f"{t:.3f}" for t in times))
        self.app.close()

    def check_log(self, worker: Worker) -> None:
        lines = worker.log_lines()
        if lines:
            self.notes.append(f"worker pid {worker.pid} logged {len(lines)} line(s) at WARNING "
                              f"or above; first: {lines[0][:160]}")

    # -------------------------------------------------------------- cleanup

    def cleanup(self) -> None:
        for w in self.workers:
            try:
                w.stop()
            except Exception as exc:
                self.errors.append(f"stopping worker {w.pid}: {exc}")
        for pool in self.pools:
            pool.terminate()
            pool.join()
        self.app.close()
        try:
            from localq.result import close_bells   # this process's get() doorbells
            close_bells()
        except Exception:
            pass
        sys.path.remove(self.tmp)
        shutil.rmtree(self.tmp)


# ---------------------------------------------------------------- report

def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def show(value, unit: str) -> str:
    if value is None:
        return "n/a"
    if unit == "rate":
        return f"{value:,.0f}/s"
    if unit == "ms":
        return f"{value:.2f} ms"
    if unit == "s":
        return f"{value:.3f} s"
    if unit == "pct":
        return f"{value:.2f} %"
    return f"{value}"


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
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [f"localq throughput benchmark: N={bench.n:,}{' (quick)' if bench.quick else ''}, "
             f"{WORKERS} worker children, Python {platform.python_version()}, "
             f"{os.cpu_count()} CPUs, localq {localq.__version__} ({git_commit()})", ""]
    for i, r in enumerate(rows):
        lines.append("  ".join(r[c].ljust(widths[c]) if c == 0 else r[c].rjust(widths[c])
                               for c in range(4)) + ("  " + r[4] if r[4] else ""))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append("")
    for key, text, ok in TARGETS:
        f = figs.get(key)
        value = f["localq"] if f else None
        if value is None:
            lines.append(f"target {text}: n/a FAILED TO MEASURE")
        else:
            lines.append(f"target {text}: {show(value, f['unit'])} {'OK' if ok(value) else 'MISS'}")
    lines.append("")
    lines.extend(bench.notes)
    lines.extend(f"ERROR {e}" for e in bench.errors)
    lines.append(f"total {wall:.1f}s")
    return "\n".join(lines)


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--", "localq"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("+dirty localq/" if dirty else "")
    except Exception:
        return "unknown commit"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="N=2,000 and a 1 s idle window (default N=10,000, 3 s)")
    parser.add_argument("--n", type=int, default=None, help="jobs per throughput figure")
    parser.add_argument("--json", metavar="PATH", help="also save the figures as JSON here")
    args = parser.parse_args()
    n = args.n or (2000 if args.quick else 10000)
    json_path = os.path.abspath(args.json) if args.json else None
    started = time.perf_counter()
    ticks = all_cpu_ticks()
    bench = Bench(n, args.quick)
    try:
        bench.run()
    finally:
        bench.cleanup()
    wall = time.perf_counter() - started
    bench.notes.append(background_load(ticks, wall))
    print(report(bench, wall))
    if json_path:
        targets = {}
        for key, text, ok in TARGETS:
            value = bench.figures.get(key, {}).get("localq")
            targets[text] = {"value": value, "ok": None if value is None else ok(value)}
        with open(json_path, "w") as f:
            json.dump({"n": n, "quick": args.quick, "workers": WORKERS,
                       "python": platform.python_version(), "cpus": os.cpu_count(),
                       "localq": localq.__version__, "commit": git_commit(),
                       "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "seconds": wall,
                       "figures": bench.figures, "targets": targets, "notes": bench.notes,
                       "errors": bench.errors}, f, indent=2)
            f.write("\n")
    return 1 if bench.errors else 0


if __name__ == "__main__":
    sys.exit(main())
