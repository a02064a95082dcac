"""The canvas: bulk send of a group, streaming groups, a chord's body latency, a long chain.

    python benchmarks/canvas_bench.py [--quick] [--jobs 100000] [--json PATH]

Prints, beside multiprocessing.Pool(2) measured in the same run:

- ``group(...).apply_async()`` of N small jobs (no worker running): jobs sent per
  second, and Pool(2).apply_async's submission rate (the pool running);
- streaming end to end: N jobs sent as groups of 1,000 to a running worker (2
  children), every result read back, against Pool(2).apply_async of N calls and
  every ``get()``;
- a chord of 10,000 no-op header tasks: send to the body's result, and the body's
  latency after the last header task (its start and its end, from the file's own
  timestamps; target <= 5 ms);
- a chain of 1,000 steps: seconds per step, send to the last result (target <= 1 ms).
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import sqlite3
import sys
import tempfile
import time

import _common as c

from localq import Localq, chain, chord, group  # noqa: E402  (after _common's sys.path)

app = Localq(main="canvas_bench")


@app.task
def add(x, y):
    return x + y


@app.task
def noop():
    return None


@app.task
def inc(x):
    return x + 1


@app.task
def count(results):
    return len(results)


def pool_add(x, y):
    return x + y


def bench_send(jobs: int) -> tuple[float, float]:
    """(localq group send jobs/s, Pool(2).apply_async submissions/s)."""
    t0 = time.perf_counter()
    res = group(add.s(i, i) for i in range(jobs)).apply_async()
    ours = jobs / (time.perf_counter() - t0)
    assert len(res) == jobs
    with multiprocessing.Pool(2) as pool:
        t0 = time.perf_counter()
        handles = [pool.apply_async(pool_add, (i, i)) for i in range(jobs)]
        theirs = jobs / (time.perf_counter() - t0)
        handles[-1].get()
    return ours, theirs


def bench_stream(jobs: int, size: int = 1000) -> tuple[float, float]:
    """(localq jobs/s end to end in groups of ``size``, Pool(2) jobs/s end to end)."""
    with app.worker(concurrency=2):
        add.delay(0, 0).get(timeout=30)
        t0 = time.perf_counter()
        groups = [group(add.s(i, i) for i in range(start, min(start + size, jobs)))
                  .apply_async() for start in range(0, jobs, size)]
        total = 0
        for g in groups:
            total += len(g.get(timeout=600))
        ours = jobs / (time.perf_counter() - t0)
        assert total == jobs
    with multiprocessing.Pool(2) as pool:
        pool.apply(pool_add, (0, 0))
        t0 = time.perf_counter()
        handles = [pool.apply_async(pool_add, (i, i)) for i in range(jobs)]
        for h in handles:
            h.get()
        theirs = jobs / (time.perf_counter() - t0)
    return ours, theirs


def bench_chord(headers: int) -> tuple[float, float, float]:
    """(send to body result s, body start after last header s, body end after it s)."""
    with app.worker(concurrency=2):
        noop.delay().get(timeout=30)
        t0 = time.perf_counter()
        res = chord((noop.s() for _ in range(headers)), count.s()).apply_async()
        assert res.get(timeout=600) == headers
        total = time.perf_counter() - t0
    conn = sqlite3.connect(f"file:{app.path}?mode=ro", uri=True)
    try:
        last = conn.execute("SELECT max(done) FROM jobs WHERE group_id = ?",
                            (res.parent.id,)).fetchone()[0]
    finally:
        conn.close()
    row = app.store.job(res.id)
    assert row is not None
    return total, row["started"] - last, row["done"] - last


def bench_chain(steps: int) -> float:
    """Seconds per step of a chain of ``steps`` (send to the last result)."""
    with app.worker(concurrency=2):
        inc.delay(0).get(timeout=30)
        t0 = time.perf_counter()
        res = chain(inc.s(0), *(inc.s() for _ in range(steps - 1))).apply_async()
        assert res.get(timeout=600) == steps
        return (time.perf_counter() - t0) / steps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes")
    parser.add_argument("--jobs", type=int, default=100_000)
    c.add_json_option(parser)
    args = parser.parse_args()
    jobs = 20_000 if args.quick else args.jobs
    headers = 2_000 if args.quick else 10_000
    steps = 200 if args.quick else 1_000
    load, started = c.cpu_now(), time.perf_counter()
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="localq-canvas-bench-") as folder:
        def fresh(name: str) -> None:
            app.path = os.path.join(folder, name)

        fresh("send.db")
        ours, theirs = bench_send(jobs)
        figures.update(group_send=ours, pool_submit=theirs)
        print(f"group send of {jobs:,} jobs:       {ours:10,.0f} jobs/s   "
              f"Pool(2).apply_async {theirs:10,.0f}/s   ratio {ours / theirs:.2f}x")
        fresh("stream.db")
        ours, theirs = bench_stream(jobs)
        figures.update(group_stream=ours, pool_stream=theirs)
        print(f"streaming {jobs:,} in groups of 1,000: {ours:9,.0f} jobs/s   "
              f"Pool(2) streaming   {theirs:10,.0f}/s   ratio {ours / theirs:.2f}x")
        fresh("chord.db")
        total, start, end = bench_chord(headers)
        figures.update(chord_total=total, chord_body_start=start, chord_body_end=end)
        print(f"chord of {headers:,} no-op headers: send to body result {total:.2f} s; body "
              f"after the last header: started {start * 1000:.2f} ms, done "
              f"{end * 1000:.2f} ms (target <= 5 ms: {'OK' if end <= 0.005 else 'MISS'})")
        fresh("chain.db")
        per_step = bench_chain(steps)
        figures.update(chain_step=per_step)
        print(f"chain of {steps:,} steps: {per_step * 1000:.3f} ms/step "
              f"(target <= 1 ms: {'OK' if per_step <= 0.001 else 'MISS'})")
        app.close()
    print(c.background_load(load, time.perf_counter() - started))
    if args.json:
        c.write_json(args.json, {"figures": figures, **c.run_info()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
