#!/usr/bin/env python3
"""Rate limits: does a limited task run at its rate, and does a throttled backlog cost others?

    python benchmarks/rate_bench.py [--quick] [--profile DIR] [--json PATH]

Run from the project root; localq is imported from this checkout. Stdlib only.
Everything happens in a fresh temporary folder that is deleted at the end; the
only processes started are the embedded workers' (2 children each), stopped by
pid when their block is left. Each measurement runs on a fresh database (in
its own folder, deleted after the run) and a fresh worker, several times,
interleaved and in rotating order (the machine is noisy), and the median is
the figure.

(a) steady rate: N jobs (10,000; --quick 3,000) of a no-op task declared with
    rate_limit="1000/s" are enqueued, then a worker is started. The rate is
    read from the jobs' own completion times (jobs.done, written from the
    child's clock) through a read-only connection, between the completion of
    job #1,000 and the last one, so the initial burst (the bucket starts full)
    is left out. Also shown: the same from start times, the overall rate, and
    the most jobs started in any one-second window (the bucket allows N plus a
    burst of N/10).
(b) throughput beside a throttled backlog, streaming: a worker runs; N no-op
    jobs (20,000; --quick 5,000) are sent by delay() from this process while
    it works; throughput = N / (first delay() -> the last job's jobs.done).
    Four cases, interleaved: "no limited task" (a second app that declares no
    rate-limited task: flow control has nothing to do); "none waiting" (this
    app, whose rate-limited tasks are declared but have no job); "backlog"
    (10,000 jobs of a task declared rate_limit="1/s" waiting, enqueued before
    the worker started); and, for information, the same backlog of a task sent
    without a limit and limited only at run time by app.control.rate_limit
    (those jobs sit in the main lane, which localq/worker/throttle.py documents as
    slower). On 2 cores this figure is bound by the producer's delay() rate
    (shown too), so it hides some supervisor cost; hence (c).
(c) the same four cases, worker-bound: N no-op jobs are enqueued (after the
    backlog) before the worker starts; throughput = N / (first no-op start ->
    last no-op done), from the jobs' own times. For information.

With --profile DIR, every supervisor (and child) dumps a cProfile file in
DIR/<run>/ (through LOCALQ_PROFILE_DIR), for `python -m pstats`.

Targets (issue 5): (a) within 5 % of 1,000/s; (b) with the backlog, within 10 %
of the throughput with none waiting (same app, same declared tasks).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time

import _common as c
from _common import BenchError

from localq import Localq  # noqa: E402
from localq.result import close_bells  # noqa: E402  (this process's get() doorbells)

CHILDREN = 2
RATE = 1000
SKIP = 1000              # (a): jobs left out at the start (the burst)
BACKLOG = 10_000         # (b): throttled jobs waiting

app = Localq(os.path.join(tempfile.gettempdir(), "localq-rate-bench-unused.db"))


# ---------------------------------------------------------------- the tasks
# Defined here: the embedded worker is a fork of this process, so it knows them.

@app.task(rate_limit=f"{RATE}/s")
def limited():
    return None


@app.task
def noop():
    return None


@app.task(rate_limit="1/s")
def slow():
    return None


@app.task
def plain_slow():        # limited only at run time, by app.control.rate_limit
    return None


# A second app with the same no-op task and no limited task at all: the baseline
# with no flow-control work in the claim (localq/worker/throttle.py returns early).
bare = Localq(os.path.join(tempfile.gettempdir(), "localq-rate-bench-unused-bare.db"))
bare_noop = bare.task(name=noop.name)(noop.run)


# ---------------------------------------------------------------- helpers

def readonly(path: str) -> sqlite3.Connection:
    return c.read_only(path, timeout=60)


def count_done(db: sqlite3.Connection, task: str) -> int:
    return db.execute("SELECT count(*) FROM jobs WHERE task = ? AND state IN "
                      "('SUCCESS', 'FAILURE', 'REVOKED')", (task,)).fetchone()[0]


def wait_all(db: sqlite3.Connection, task: str, n: int, timeout: float,
             poll: float) -> None:
    deadline = time.monotonic() + timeout
    while count_done(db, task) < n:
        if time.monotonic() > deadline:
            raise BenchError(f"{task}: only {count_done(db, task)} of {n} jobs finished "
                             f"in {timeout:.0f} s")
        time.sleep(poll)
    bad = db.execute("SELECT count(*) FROM jobs WHERE task = ? AND state <> 'SUCCESS'",
                     (task,)).fetchone()[0]
    if bad:
        raise BenchError(f"{task}: {bad} jobs did not end SUCCESS")


def worker_cpu() -> float:
    """CPU seconds of this process's reaped descendants: an embedded worker's
    supervisor, once stopped, and through it its children."""
    t = os.times()
    return t.children_user + t.children_system


def max_in_window(times: list[float], window: float = 1.0) -> int:
    times = sorted(times)
    best = lo = 0
    for hi, t in enumerate(times):
        while t - times[lo] >= window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


class Bench:
    def __init__(self, quick: bool, tmp: str, profile_dir: str | None) -> None:
        self.quick = quick
        self.tmp = tmp
        self.profile_dir = profile_dir
        self.runs = 2 if quick else 3
        self.runs_b = 2 if quick else 5
        self.n_rate = 3000 if quick else 10_000
        self.n_stream = 5000 if quick else 20_000
        self.values: dict[str, list[float]] = {}
        self.notes: list[str] = []
        self.counter = 0
        self.previous: tuple[Localq, str] | None = None

    def add(self, key: str, value: float) -> None:
        self.values.setdefault(key, []).append(value)

    def fresh_db(self, name: str, the_app: Localq = app) -> str:
        """Point the app at a new database in its own folder (the previous run's
        folder is deleted first, so that every run starts from the same disk state)."""
        self.drop_previous()
        self.counter += 1
        folder = os.path.join(self.tmp, f"{name}-{self.counter}")
        os.mkdir(folder)
        the_app.path = os.path.join(folder, "bench.db")
        self.previous = (the_app, folder)
        if self.profile_dir:     # the supervisor dumps a cProfile file here at exit
            folder = os.path.join(self.profile_dir, f"{name}-{self.counter}")
            os.makedirs(folder, exist_ok=True)
            os.environ["LOCALQ_PROFILE_DIR"] = folder
        return the_app.path

    def drop_previous(self) -> None:
        if self.previous is None:
            return
        the_app, folder = self.previous
        the_app.close()
        close_bells()
        shutil.rmtree(folder, ignore_errors=True)
        self.previous = None

    # ------------------------------------------------------------ (a)

    def steady_rate(self) -> None:
        path = self.fresh_db("rate")
        n = self.n_rate
        for _ in range(n):
            limited.delay()
        with app.worker(concurrency=CHILDREN) as worker:
            db = readonly(path)
            try:
                wait_all(db, limited.name, n, timeout=n / RATE * 3 + 30, poll=0.1)
                rows = db.execute("SELECT started, done FROM jobs WHERE task = ?",
                                  (limited.name,)).fetchall()
            finally:
                db.close()
            self.check_alive(worker)
        done = sorted(r[1] for r in rows)
        started = sorted(r[0] for r in rows)
        self.add("a_done", (n - SKIP) / (done[-1] - done[SKIP - 1]))
        self.add("a_started", (n - SKIP) / (started[-1] - started[SKIP - 1]))
        self.add("a_overall", n / (done[-1] - started[0]))
        self.add("a_window", max_in_window(started))

    # ------------------------------------------------------------ (b) and (c)

    def setup(self, case: str, kind: str) -> tuple[Localq, object, object, str]:
        """A fresh database for one case, with its backlog (if any) enqueued:
        (app, no-op task, throttled task or None, database path)."""
        the_app, task = (bare, bare_noop) if case == "bare" else (app, noop)
        path = self.fresh_db(f"{kind}-{case}", the_app)
        throttled = {"declared": slow, "runtime": plain_slow}.get(case)
        if throttled is not None:
            if case == "runtime":
                app.control.rate_limit(throttled.name, "1/s")
            for _ in range(BACKLOG):
                throttled.delay()
        return the_app, task, throttled, path

    def check_backlog(self, db: sqlite3.Connection, case: str, throttled) -> None:
        """The backlog is still waiting, and its 1/s limit held."""
        if throttled is None:
            return
        waiting = db.execute("SELECT count(*) FROM jobs WHERE task = ? AND state = 'PENDING'",
                             (throttled.name,)).fetchone()[0]
        if waiting < BACKLOG - 100:
            raise BenchError(f"only {waiting} {throttled.name} jobs still waiting")
        started = [r[0] for r in db.execute("SELECT started FROM jobs WHERE task = ? AND "
                                            "state = 'SUCCESS'", (throttled.name,))]
        window = max_in_window(started)
        if window > 2:
            self.notes.append(f"{case}: {window} jobs of the 1/s task started in one second "
                              f"(1 + a burst of 1 allowed)")

    def stream(self, case: str) -> None:
        """(b): the worker runs; this process sends N no-op jobs while it works."""
        the_app, task, throttled, path = self.setup(case, "stream")
        n = self.n_stream
        cpu0 = worker_cpu()
        with the_app.worker(concurrency=CHILDREN) as worker:
            task.delay().get(timeout=30)            # warm: children up, first claim done
            db = readonly(path)
            try:
                t0 = time.time()
                results = [task.delay() for _ in range(n)]
                t_sent = time.time()
                results[-1].get(timeout=n / 100 + 30)
                wait_all(db, task.name, n + 1, timeout=60, poll=0.005)
                end = db.execute("SELECT max(done) FROM jobs WHERE task = ?",
                                 (task.name,)).fetchone()[0]
                self.check_backlog(db, case, throttled)
            finally:
                db.close()
            self.check_alive(worker)
        self.add(f"stream_{case}", n / (end - t0))
        self.add(f"send_{case}", n / (t_sent - t0))
        self.add(f"streamcpu_{case}", (worker_cpu() - cpu0) / (n + 1) * 1e6)

    def drain(self, case: str) -> None:
        """(c): N no-op jobs wait (after the backlog) before the worker starts."""
        the_app, task, throttled, path = self.setup(case, "drain")
        n = self.n_stream
        for _ in range(n):
            task.delay()
        cpu0 = worker_cpu()
        with the_app.worker(concurrency=CHILDREN) as worker:
            db = readonly(path)
            try:
                wait_all(db, task.name, n, timeout=n / 100 + 30, poll=0.02)
                first, last = db.execute("SELECT min(started), max(done) FROM jobs WHERE "
                                         "task = ?", (task.name,)).fetchone()
                self.check_backlog(db, case, throttled)
            finally:
                db.close()
            self.check_alive(worker)
        self.add(f"drain_{case}", n / (last - first))
        self.add(f"draincpu_{case}", (worker_cpu() - cpu0) / n * 1e6)

    def check_alive(self, worker) -> None:
        if not worker.alive:
            raise BenchError("the embedded worker died during the run")

    def run(self) -> None:
        for _ in range(self.runs):
            self.steady_rate()
        cases = list(CASES)
        # interleaved, and rotated each round, so that drift and order hit all alike
        for r in range(self.runs_b):
            for case in cases[r % 4:] + cases[:r % 4]:
                self.stream(case)
        for r in range(self.runs):
            for case in cases[r % 4:] + cases[:r % 4]:
                self.drain(case)
        self.drop_previous()


CASES = {  # (b) and (c): key -> label
    "bare": "no limited task in the app",
    "alone": "limited tasks declared, none waiting",
    "declared": f"{BACKLOG:,} jobs of a 1/s task waiting",
    "runtime": f"{BACKLOG:,} waiting, 1/s set at run time (info)",
}
A_ROWS = [  # key, label, unit
    ("a_done", f"steady rate, completions #{SKIP:,}..last", "rate1"),
    ("a_started", f"steady rate, starts #{SKIP:,}..last", "rate1"),
    ("a_overall", "overall, first start..last completion (with the burst)", "rate"),
    ("a_window", "most child start times in any 1 s window (bucket: 1,000 + burst 100)",
     "count"),
]
B_COLUMNS = [  # key prefix, heading, unit
    ("stream", "(b) streaming", "rate"),
    ("send", "(b) delay() rate", "rate"),
    ("streamcpu", "(b) worker CPU/job", "us"),
    ("drain", "(c) drain", "rate"),
    ("draincpu", "(c) worker CPU/job", "us"),
]


UNITS = {"rate1": "{:,.1f}/s", "us": "{:,.1f} us", "count": "{:,.0f}"}


def show(value: float | None, unit: str) -> str:
    return c.show(value, unit, UNITS)


def medians(bench: Bench) -> dict[str, float]:
    return {k: statistics.median(x) for k, x in bench.values.items() if x}


def targets(med: dict[str, float]) -> list[tuple[str, str, float | None, bool | None, str]]:
    """(key, text, value, ok, shown value) for each target, from the medians."""
    out = []
    if "a_done" in med:
        dev = (med["a_done"] - RATE) / RATE * 100
        out.append(("rate", f"{RATE:,}/s task within 5 % of {RATE:,}/s", med["a_done"],
                    abs(dev) <= 5, f"{med['a_done']:,.1f}/s, {dev:+.2f} %"))
    else:
        out.append(("rate", f"{RATE:,}/s task within 5 %", None, None, "n/a"))
    if "stream_alone" in med and "stream_declared" in med:
        ratio = med["stream_declared"] / med["stream_alone"]
        out.append(("backlog", f"no-op throughput with {BACKLOG:,} throttled jobs waiting "
                    f"within 10 % of none waiting", ratio, ratio >= 0.9,
                    f"{med['stream_declared']:,.0f}/s vs {med['stream_alone']:,.0f}/s, "
                    f"ratio {ratio:.2f}"))
    else:
        out.append(("backlog", "throughput with a throttled backlog", None, None, "n/a"))
    return out


def report(bench: Bench, wall: float, background: str) -> str:
    v = bench.values
    med = medians(bench)
    lines = [f"localq rate limit benchmark{' (quick)' if bench.quick else ''}: "
             f"{CHILDREN} children, {c.machine()}, {c.git_commit('commit ')}", "",
             f"(a) a task limited to {RATE:,}/s, {bench.n_rate:,} jobs enqueued then run, "
             f"median of {bench.runs} runs"]
    rows = [("figure", "median", "runs")]
    for key, label, unit in A_ROWS:
        rows.append((label, show(med.get(key), unit),
                     ", ".join(show(x, unit) for x in v.get(key, []))))
    lines += c.table(rows)
    lines += ["", f"(b) a no-op task, {bench.n_stream:,} jobs streamed by delay() while the "
              f"worker runs, median of {bench.runs_b} runs;",
              f"(c) the same {bench.n_stream:,} jobs enqueued first, then drained, median of "
              f"{bench.runs} runs. Worker CPU = supervisor + children, per no-op job."]
    rows = [("case",) + tuple(h for _, h, _ in B_COLUMNS)]
    for case, label in CASES.items():
        rows.append((label,) + tuple(show(med.get(f"{p}_{case}"), u) for p, _, u in B_COLUMNS))
    lines += c.table(rows)
    lines += ["", "runs:"]
    for p, h, u in B_COLUMNS:
        for case in CASES:
            if v.get(f"{p}_{case}"):
                lines.append(f"  {h} [{case}]: " + ", ".join(show(x, u) for x in v[f"{p}_{case}"]))
    lines.append("")
    for _, text, _, ok, shown in targets(med):
        lines.append(c.target_line(text, shown, ok))
    for p, h, u in B_COLUMNS:
        base = med.get(f"{p}_alone")
        if not base or p == "send":
            continue
        parts = [f"{case} {med[f'{p}_{case}'] / base:.2f}" for case in CASES
                 if case != "alone" and f"{p}_{case}" in med]
        lines.append(f"info: {h} against none waiting: " + ", ".join(parts))
    lines += c.report_tail(bench.notes, background, wall)
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="(a) 3,000 jobs, (b) and (c) 5,000 jobs, 2 runs each (default: "
                             "10,000 jobs x 3 runs, 20,000 x 5 runs, 20,000 x 3 runs)")
    parser.add_argument("--profile", metavar="DIR",
                        help="keep a cProfile dump of every supervisor in DIR/<run>/")
    c.add_json_option(parser)
    args = parser.parse_args()
    profile_dir = os.path.abspath(args.profile) if args.profile else None
    json_path = c.json_path(args)
    bench, wall, background, code = c.run_embedded(
        "localq-rate-bench-", lambda tmp: Bench(args.quick, tmp, profile_dir), [app, bare])
    print(report(bench, wall, background))
    if json_path:
        c.write_json(json_path, {
            "quick": args.quick, "children": CHILDREN, "rate": RATE, "backlog": BACKLOG,
            "n_rate": bench.n_rate, "n_stream": bench.n_stream, **c.run_info(),
            "seconds": wall, "runs": bench.values, "medians": medians(bench),
            "targets": [{"key": key, "text": text, "value": value, "ok": ok, "shown": shown}
                        for key, text, value, ok, shown in targets(medians(bench))],
            "notes": bench.notes, "background": background, "errors": [
                n[len("ERROR "):] for n in bench.notes if n.startswith("ERROR ")]})
    return code


if __name__ == "__main__":
    sys.exit(main())
