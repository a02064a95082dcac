"""app.map over N no-op items with 2 children, beside multiprocessing.Pool(2).map.

    python benchmarks/map_bench.py [--items 100000] [--repeat 3] [--concurrency 2] [--json PATH]

Prints, for each: items/s of the map call alone (the pool or the worker is
already running), the best and the median of the repeats, and the ratio
localq / Pool (and against Pool with chunksize=1: one message per item,
closer to what a queue does). Also: the enqueue rate of a map's jobs (encode + insert in
large transactions, no worker competing for the CPU), and start to first
result of an embedded worker (fork the supervisor and its children, one
``delay().get()``). Pool is the ceiling: it keeps nothing on disk. ``--json PATH``
also saves every rate (items/s) and the medians.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import tempfile
import time

import _common as c

from localq import (
    Localq,  # noqa: E402  (after _common put this checkout first on sys.path)
    mapping,  # noqa: E402
)

app = Localq(main="map_bench")


@app.task
def noop(x):
    return None


def pool_noop(x):
    return None


def bench_localq(folder: str, items: int, repeat: int, concurrency: int) -> dict:
    app.path = os.path.join(folder, "map.db")
    t0 = time.perf_counter()
    with app.worker(concurrency=concurrency):
        noop.delay(0).get(timeout=30)
        first = time.perf_counter() - t0
        rates = []
        for _ in range(repeat):
            t = time.perf_counter()
            results = app.map(noop, range(items))
            rates.append(items / (time.perf_counter() - t))
            assert len(results) == items
    app.close()
    return {"rates": rates, "first": first}


def bench_enqueue(folder: str, items: int, repeat: int) -> list[float]:
    """The enqueue phase of a map alone: encode every call, insert in CHUNK-row
    transactions. No worker runs, so this is the producer's own speed."""
    rates = []
    for n in range(repeat):
        app.path = os.path.join(folder, f"enqueue-{n}.db")
        app.store.data_version()          # create the file outside the timing
        serializer = noop.option("serializer")
        t = time.perf_counter()
        payloads = mapping._encode_calls(noop, serializer, [(i,) for i in range(items)])
        template = app.new_job(noop, (), {})
        mapping._enqueue(app, template, f"map:bench{n}", serializer, payloads,
                         resumable=False)       # as app.map without resume=: generated ids
        rates.append(items / (time.perf_counter() - t))
        app.close()
    return rates


def bench_pool(items: int, repeat: int, concurrency: int, chunksize: int | None = None
               ) -> list[float]:
    rates = []
    with multiprocessing.get_context("fork").Pool(concurrency) as pool:
        pool.map(pool_noop, range(10))
        for _ in range(repeat):
            t = time.perf_counter()
            results = pool.map(pool_noop, range(items), chunksize)
            rates.append(items / (time.perf_counter() - t))
            assert len(results) == items
    return rates


def show(name: str, rates: list[float]) -> str:
    return (f"{name:<34} best {max(rates):>11,.0f} items/s   median "
            f"{statistics.median(rates):>11,.0f} items/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=2)
    c.add_json_option(parser)
    args = parser.parse_args()
    json_path = c.json_path(args)
    with tempfile.TemporaryDirectory(prefix="localq-map-bench-") as folder:
        enqueue = bench_enqueue(folder, args.items, args.repeat)
        lq = bench_localq(folder, args.items, args.repeat, args.concurrency)
    pool = bench_pool(args.items, args.repeat, args.concurrency)
    pool_one = bench_pool(args.items, args.repeat, args.concurrency, chunksize=1)
    print(f"{args.items:,} no-op items, {args.concurrency} children, {args.repeat} runs "
          f"(python {sys.version.split()[0]}, {os.cpu_count()} CPUs)")
    print(f"start to first result (embedded worker)  {lq['first'] * 1000:.0f} ms")
    print(show("map enqueue (encode + insert)", enqueue))
    print(show("localq app.map", lq["rates"]))
    print(show(f"multiprocessing.Pool({args.concurrency}).map", pool))
    print(show("  the same with chunksize=1", pool_one))
    print(f"ratio localq / Pool (median)             "
          f"{statistics.median(lq['rates']) / statistics.median(pool):.4f}")
    print(f"ratio localq / Pool chunksize=1 (median) "
          f"{statistics.median(lq['rates']) / statistics.median(pool_one):.3f}")
    if json_path:
        rates = {"enqueue": enqueue, "localq": lq["rates"], "pool": pool,
                 "pool_chunksize1": pool_one}
        c.write_json(json_path, {
            "items": args.items, "repeat": args.repeat, "concurrency": args.concurrency,
            **c.run_info(), "unit": "items/s", "first": lq["first"], "rates": rates,
            "median": {k: statistics.median(v) for k, v in rates.items()},
            "best": {k: max(v) for k, v in rates.items()}})


if __name__ == "__main__":
    main()
