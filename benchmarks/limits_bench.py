#!/usr/bin/env python3
"""Time limits: how late the soft and hard limits strike, and how soon the pool is whole.

    python benchmarks/limits_bench.py [--quick] [--runs N] [--json PATH]

Run from the project root; localq is imported from this checkout. Stdlib only.
Everything happens in a fresh temporary folder that is deleted at the end; the
only processes started are the embedded worker's (stopped by its pid when its
block is left). 20 runs of each figure (--quick: 5), one job at a time, on an
embedded worker with 2 children.

Figures (issue 4, item 9):

- soft overshoot: a task with soft_time_limit=0.2 notes time.monotonic() at
  entry and when it catches SoftTimeLimitExceeded; overshoot = caught - entry
  - 0.2. Two variants: the task sleeps 10 s in 10 ms slices, or it spins in
  pure Python.
- hard overshoot: a task with time_limit=0.3 writes time.time() (and its pid)
  to a file at entry and then sleeps 10 s; the client notes time.time() when
  get() raises TimeLimitExceeded; overshoot = raised - entry - 0.3. A second
  variant ignores SIGTERM and spins, so only the supervisor's SIGKILL ends it.
  The "recorded" rows split this: when the supervisor wrote the outcome
  (jobs.done) - entry - 0.3; the rest is the client being told.
- pool whole again, two ways, both from the moment get() raised:
  /proc: polling /proc/<supervisor>/task/<supervisor>/children every 0.5 ms
  until the killed child is gone and 2 other live children are there;
  jobs: two tasks that sleep 50 ms are sent at once; the figure is the later
  of their entry times, and they must have run in 2 distinct children, neither
  the killed one (it includes one enqueue and dispatch, about a millisecond).

Targets (issue 4): hard kill within 250 ms of the limit, soft within 100 ms:
checked against the max of the runs.
"""
from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import time

import _common as c
from _common import BenchError, live_children, percentile

from localq import Localq, SoftTimeLimitExceeded, TimeLimitExceeded  # noqa: E402

SOFT = 0.2
HARD = 0.3
CHILDREN = 2
GET_TIMEOUT = 30.0

app = Localq(os.path.join(tempfile.gettempdir(), "localq-limits-bench-unused.db"))


# ---------------------------------------------------------------- the tasks
# Defined here: the embedded worker is a fork of this process, so it knows them.

@app.task(soft_time_limit=SOFT)
def soft_sleep():
    start = time.monotonic()
    try:
        end = start + 10
        while time.monotonic() < end:
            time.sleep(0.01)
    except SoftTimeLimitExceeded:
        return time.monotonic() - start - SOFT
    return None


@app.task(soft_time_limit=SOFT)
def soft_spin():
    start = time.monotonic()
    try:
        end = start + 10
        while time.monotonic() < end:
            pass
    except SoftTimeLimitExceeded:
        return time.monotonic() - start - SOFT
    return None


def _note_entry(path):
    with open(path, "w") as f:
        f.write(f"{time.time()!r} {os.getpid()}")


@app.task(time_limit=HARD)
def hard_sleep(path):
    _note_entry(path)
    time.sleep(10)


@app.task(time_limit=HARD)
def hard_spin_ignoring_term(path):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _note_entry(path)
    end = time.time() + 10
    while time.time() < end:
        pass


@app.task
def where(seconds):
    entered = time.time()
    time.sleep(seconds)
    return [os.getpid(), entered]


# ---------------------------------------------------------------- helpers

class Bench:
    def __init__(self, runs: int, tmp: str) -> None:
        self.runs = runs
        self.tmp = tmp
        self.samples: dict[str, list[float]] = {}
        self.notes: list[str] = []

    def add(self, key: str, seconds: float) -> None:
        self.samples.setdefault(key, []).append(seconds * 1000)

    def run(self) -> None:
        app.path = os.path.join(self.tmp, "limits.db")
        # CRITICAL: the worker logs every kill at ERROR, which is expected here
        with app.worker(concurrency=CHILDREN, loglevel="CRITICAL") as worker:
            sup = worker.pid
            start = time.monotonic()
            while len(live_children(sup)) < CHILDREN:
                if time.monotonic() - start > 10:
                    raise BenchError("the worker's children never appeared in /proc")
                time.sleep(0.001)
            # warm up: one plain job per child
            self.pool_whole_by_jobs(time.time(), killed=None, record=False)
            for _ in range(self.runs):
                self.soft_run(soft_sleep, "soft_sleep")
            for _ in range(self.runs):
                self.soft_run(soft_spin, "soft_spin")
            for i in range(self.runs):
                self.hard_run(hard_sleep, "hard_sleep", sup, i)
            for i in range(self.runs):
                self.hard_run(hard_spin_ignoring_term, "hard_spin", sup, i)

    def soft_run(self, task, key: str) -> None:
        overshoot = task.delay().get(timeout=GET_TIMEOUT)
        if overshoot is None:
            raise BenchError(f"{task.name}: SoftTimeLimitExceeded was never raised in 10 s")
        self.add(key, overshoot)

    def hard_run(self, task, key: str, sup: int, i: int) -> None:
        path = os.path.join(self.tmp, f"{key}-{i}.entry")
        result = task.delay(path)
        try:
            result.get(timeout=GET_TIMEOUT)
        except TimeLimitExceeded:
            raised = time.time()
        else:
            raise BenchError(f"{task.name} returned instead of being killed")
        with open(path) as f:
            entered_text, pid_text = f.read().split()
        entered, killed = float(entered_text), int(pid_text)
        self.add(key, raised - entered - HARD)
        row = app.store.job(result.id)
        if row and row["done"]:
            self.add(key + "_recorded", row["done"] - entered - HARD)
        # the pool, from /proc
        deadline = time.monotonic() + 10
        while True:
            now = time.time()
            live = live_children(sup)
            if killed not in live and len(live) >= CHILDREN:
                self.add("whole_proc", now - raised)
                break
            if time.monotonic() > deadline:
                raise BenchError(f"the pool was not whole 10 s after a kill: children {live}")
            time.sleep(0.0005)
        # the pool, by running two jobs at once
        self.pool_whole_by_jobs(raised, killed, record=True)

    def pool_whole_by_jobs(self, since: float, killed: int | None, record: bool) -> None:
        results = [where.delay(0.05), where.delay(0.05)]
        got = [r.get(timeout=GET_TIMEOUT) for r in results]
        pids = {pid for pid, _ in got}
        if len(pids) != CHILDREN or killed in pids:
            if record:
                self.notes.append(f"two jobs sent at once ran in children {sorted(pids)} "
                                  f"(killed: {killed}): not 2 distinct new children")
            return
        if record:
            self.add("whole_jobs", max(entered for _, entered in got) - since)


ROWS = [  # key, label
    ("soft_sleep", f"soft overshoot, task sleeping (soft_time_limit={SOFT})"),
    ("soft_spin", "soft overshoot, task spinning in Python"),
    ("hard_sleep", f"hard overshoot, task sleeping (time_limit={HARD})"),
    ("hard_sleep_recorded", "  of which: until the supervisor wrote the outcome"),
    ("hard_spin", "hard overshoot, task ignoring SIGTERM and spinning"),
    ("hard_spin_recorded", "  of which: until the supervisor wrote the outcome"),
    ("whole_proc", "pool whole after get() raised: /proc shows 2 live children"),
    ("whole_jobs", "pool whole after get() raised: 2 jobs running in 2 children"),
]

TARGETS = [  # text, keys, limit in ms (on the max)
    ("soft limit raised within 100 ms", ["soft_sleep", "soft_spin"], 100.0),
    ("hard kill within 250 ms (task sleeping)", ["hard_sleep"], 250.0),
    ("hard kill within 250 ms (task ignoring SIGTERM)", ["hard_spin"], 250.0),
]


def summary(v: list[float]) -> dict[str, float]:
    """n, p50, p90, max and min of a figure's samples (ms)."""
    return {"n": len(v), "p50": statistics.median(v), "p90": percentile(v, 90),
            "max": max(v), "min": min(v)}


def target_results(bench: Bench) -> list[tuple[str, float | None, float | None, bool | None]]:
    """(text, max ms, p50 ms, ok) for each target: the max of its runs against its limit."""
    out = []
    for text, keys, limit in TARGETS:
        values = [x for k in keys for x in bench.samples.get(k, [])]
        if not values:
            out.append((text, None, None, None))
        else:
            out.append((text, max(values), statistics.median(values), max(values) <= limit))
    return out


def report(bench: Bench, quick: bool, wall: float, background: str) -> str:
    rows = [("figure", "n", "p50 ms", "p90 ms", "max ms", "min ms")]
    for key, label in ROWS:
        v = bench.samples.get(key)
        if not v:
            rows.append((label, "0", "n/a", "n/a", "n/a", "n/a"))
            continue
        f = summary(v)
        rows.append((label, str(f["n"]), f"{f['p50']:.1f}", f"{f['p90']:.1f}",
                     f"{f['max']:.1f}", f"{f['min']:.1f}"))
    lines = [f"localq time limits benchmark: {bench.runs} runs per figure"
             f"{' (quick)' if quick else ''}, {CHILDREN} children, "
             f"{c.machine()}, {c.git_commit('commit ')}", ""]
    lines += c.table(rows)
    lines.append("")
    for text, worst, p50, ok in target_results(bench):
        shown = "n/a" if worst is None else f"max {worst:.1f} ms, p50 {p50:.1f} ms"
        lines.append(c.target_line(text, shown, ok))
    lines += c.report_tail(bench.notes, background, wall)
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="5 runs per figure (default 20)")
    parser.add_argument("--runs", type=int, default=None, help="runs per figure")
    c.add_json_option(parser)
    args = parser.parse_args()
    runs = args.runs or (5 if args.quick else 20)
    json_path = c.json_path(args)
    bench, wall, background, code = c.run_embedded(
        "localq-limits-bench-", lambda tmp: Bench(runs, tmp), [app])
    print(report(bench, args.quick, wall, background))
    if json_path:
        c.write_json(json_path, {
            "runs": runs, "quick": args.quick, "children": CHILDREN, **c.run_info(),
            "seconds": wall, "unit": "ms",
            "figures": {key: dict(summary(bench.samples[key]), label=label,
                                  samples=bench.samples[key])
                        for key, label in ROWS if bench.samples.get(key)},
            "targets": [{"text": text, "max": worst, "p50": p50, "limit": limit, "ok": ok}
                        for (text, worst, p50, ok), (_, _, limit)
                        in zip(target_results(bench), TARGETS)],
            "notes": bench.notes, "background": background, "errors": [
                n[len("ERROR "):] for n in bench.notes if n.startswith("ERROR ")]})
    return code


if __name__ == "__main__":
    sys.exit(main())
