"""The canvas: bulk send of a group, streaming groups, a chord's body latency, a long chain.

    python benchmarks/canvas_bench.py [--quick] [--jobs 100000] [--celery] [--json PATH]

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

``--celery`` also runs the group send and the chord on Celery with Redis (a redis-server
of its own on a free loopback port with a password, and ``celery worker --pool=prefork
-c 2``; both stopped by pid), and prints localq's figure over Celery's. Needs the
``[test]`` extra (celery[redis]) and redis-server. Celery publishes one message per
task, so its group send is of 20,000 jobs (rates compared, not totals); its chord of
10,000 did not finish in 600 s here, so the chord is of 2,000 on both (localq's run again
at that size).
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import secrets
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from typing import Any

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


# ------------------------------------------------------------------ Celery with Redis

CELERY_SEND = 20_000       # Celery's group send publishes one message per job
# Celery's chord of 10,000 did not finish within 600 s here (its sender's get() timed out,
# 2 cores shared): the chord runs on both with 2,000 headers.
CELERY_CHORD = 2_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class CeleryRedis:
    """A redis-server (free loopback port, password, data in a private temp folder,
    nothing saved) and ``celery -A canvas_celery worker --pool=prefork -c 2`` on it."""

    def __init__(self, folder: str) -> None:
        server = shutil.which("redis-server")
        if server is None:
            raise SystemExit("--celery needs redis-server (apt-get install redis-server)")
        try:
            import celery  # noqa: F401
            import redis
        except ImportError:
            raise SystemExit("--celery needs Celery and redis-py: pip install -e '.[test]'")
        port, password = _free_port(), secrets.token_hex(16)
        conf = os.path.join(folder, "redis.conf")
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"port {port}\nbind 127.0.0.1\ndir {folder}\nsave \"\"\n"
                    f"appendonly no\nrequirepass {password}\n"
                    f"logfile {os.path.join(folder, 'redis.log')}\n")
        self.leftovers: list[int] = []
        self.redis = subprocess.Popen([server, conf], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, start_new_session=True)
        self.url = f"redis://:{password}@127.0.0.1:{port}/0"
        client = redis.Redis(host="127.0.0.1", port=port, password=password)
        self.worker: subprocess.Popen | None = None
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    client.ping()
                    break
                except redis.exceptions.ConnectionError:
                    if self.redis.poll() is not None or time.monotonic() > deadline:
                        raise SystemExit("redis-server did not start: see "
                                         f"{os.path.join(folder, 'redis.log')}")
                    time.sleep(0.02)
            client.close()
            os.environ["CANVAS_BENCH_REDIS"] = self.url
            self.log = os.path.join(folder, "celery-worker.log")
            here = os.path.dirname(os.path.abspath(__file__))
            env = dict(os.environ, PYTHONPATH=os.pathsep.join(
                [here, os.environ.get("PYTHONPATH", "")]))
            with open(self.log, "w") as log:
                self.worker = subprocess.Popen(
                    [sys.executable, "-m", "celery", "-A", "canvas_celery", "worker",
                     "--pool=prefork", "-c", "2", "-l", "WARNING", "-n",
                     f"canvas-bench-{os.getpid()}@%h", "--without-gossip",
                     "--without-mingle", "--without-heartbeat"],
                    cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True)
            sys.path.insert(0, here)
            import canvas_celery
            self.tasks = canvas_celery
            # ready when it has run a task (its log says little at WARNING)
            self.tasks.add.delay(0, 0).get(timeout=120)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self.worker is not None:
            c.stop_by_pid(self.worker, self.leftovers)
        c.stop_by_pid(self.redis, self.leftovers)


def celery_send(cr: CeleryRedis, jobs: int) -> float:
    """Celery's group send: jobs published per second (the worker drains them)."""
    from celery import group as celery_group
    t0 = time.perf_counter()
    res = celery_group(cr.tasks.add.s(i, i) for i in range(jobs)).apply_async()
    rate = jobs / (time.perf_counter() - t0)
    res.get(timeout=600)          # drained, before the next measurement
    return rate


def celery_chord(cr: CeleryRedis, headers: int) -> tuple[float, float]:
    """(send to body result s, body start after the last header's end s) on Celery."""
    from celery import chord as celery_chord_type
    t0 = time.perf_counter()
    res = celery_chord_type(cr.tasks.ended.s() for _ in range(headers))(cr.tasks.lag.s())
    count, lag = res.get(timeout=600)
    assert count == headers
    return time.perf_counter() - t0, lag


def run_celery(jobs: int, headers: int, ours: dict[str, float]) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="localq-canvas-celery-") as folder:
        app.path = os.path.join(folder, "chord.db")      # localq's chord of the same size
        total, start, _ = bench_chord(headers)
        app.close()
        ours = {**ours, "chord_total": total, "chord_body_start": start}
        cr = CeleryRedis(folder)
        try:
            rate = celery_send(cr, jobs)
            figures.update(celery_group_send=rate)
            print(f"Celery+Redis group send of {jobs:,} jobs: {rate:10,.0f} jobs/s   "
                  f"localq/Celery {ours['group_send'] / rate:.2f}x")
            try:
                total, lag = celery_chord(cr, headers)
            except Exception as exc:  # noqa: BLE001 - say so, and stop both servers
                print(f"Celery+Redis chord of {headers:,}: did not finish ({exc!r})")
                return figures
            figures.update(celery_chord_total=total, celery_chord_body_start=lag)
            print(f"Celery+Redis chord of {headers:,} no-op headers: send to body result "
                  f"{total:.2f} s (localq {ours['chord_total']:.2f} s: "
                  f"{total / ours['chord_total']:.1f}x faster); "
                  f"body after the last header: started {lag * 1000:.2f} ms "
                  f"(localq {ours['chord_body_start'] * 1000:.2f} ms)")
        finally:
            cr.close()
    if cr.leftovers:
        print(f"warning: killed leftover processes {cr.leftovers}")
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes")
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--celery", action="store_true",
                        help="also run the group send and the chord on Celery with Redis")
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
    if args.celery:
        figures.update(run_celery(min(jobs, CELERY_SEND), min(headers, CELERY_CHORD),
                                  figures))
    print(c.background_load(load, time.perf_counter() - started))
    if args.json:
        c.write_json(args.json, {"figures": figures, **c.run_info()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
