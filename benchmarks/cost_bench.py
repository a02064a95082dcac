#!/usr/bin/env python3
"""CPU per job of the worker's parts, by thread CPU time: what a busy host disturbs least.

    python benchmarks/cost_bench.py [--n N]

Run from the project root; localq is imported from this checkout. Three
measurements, each in this process, in a fresh temporary folder deleted at the end:

- store: the supervisor's transaction (BEGIN, finish the last batch, claim the
  next, COMMIT) on N queued jobs, in batches of 256 (a drain) and of 8 (a
  stream), split into finish, claim and BEGIN/COMMIT;
- child: ``worker/child.py``'s loop on a pipe, fed batches of 256 jobs, its
  outcomes read by a thread (only the loop's thread is counted);
- supervisor: ``Supervisor.turn`` draining N jobs with two stand-in children
  (tests/test_supervisor_turns.py's ``FakeChild``, answered a batch at a time on a
  fake clock that moves 0.5 ms per turn), all of it and outside the transaction.

Rates depend on what else the host runs; these figures much less (see
benchmarks/README.md, "Where a job's time goes"). Stdlib only.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from typing import Any

import _common  # noqa: F401  (puts this checkout first on sys.path)

sys.path.insert(0, os.path.join(_common.ROOT, "tests"))

from localq import Localq  # noqa: E402
from localq.store import Store, records  # noqa: E402
from localq.store.records import Claimed  # noqa: E402
from localq.worker import child, protocol  # noqa: E402
from localq.worker.upkeep import Upkeep  # noqa: E402

cpu = time.thread_time


def new_app(folder: str, name: str) -> Localq:
    app = Localq(os.path.join(folder, f"{name}.db"), main=name)

    @app.task(name="add")
    def add(x: int, y: int) -> int:
        return x + y

    return app


def store_cost(folder: str, n: int, batch: int) -> str:
    app = new_app(folder, f"store{batch}")
    add = app.tasks["add"]
    for i in range(n):
        add.delay(i, i)
    app.close()
    store = Store(app.path)
    owner = Upkeep(store, app.conf, ["default"], 2).register(time.time())
    spent = {"finish": 0.0, "claim": 0.0, "begin/commit": 0.0}
    pending: list[records.Outcome] = []
    done = transactions = 0
    while True:
        t0 = cpu()
        with store.transaction() as tx:
            t1 = cpu()
            tx.is_registered(owner)
            tx.finish(owner, pending)
            t2 = cpu()
            claimed = tx.claim(owner, "default", batch, time.time())
            t3 = cpu()
        t4 = cpu()
        spent["finish"] += t2 - t1
        spent["claim"] += t3 - t2
        spent["begin/commit"] += (t1 - t0) + (t4 - t3)
        done += len(pending)
        transactions += 1
        now = time.time()
        pending = [records.succeeded(c.seq, "2", now, now, 1) for c in claimed]
        if not claimed:
            break
    store.close()
    parts = ", ".join(f"{k} {v / done * 1e6:.2f} us" for k, v in spent.items())
    total = sum(spent.values())
    return (f"store, {batch} jobs per transaction: {total / done * 1e6:.2f} us per job "
            f"({parts}; {total / transactions * 1e6:.0f} us per transaction)")


def child_cost(folder: str, n: int) -> str:
    app = new_app(folder, "child")
    ours, theirs = protocol_pipe()
    slot = protocol.new_slot()
    words = protocol.slot_words(slot)
    jobs = [Claimed(i + 1, None, "add", "json", f"[[{i},{i}],{{}}]", None, 0, None, 0)
            for i in range(n)]

    def feed() -> None:
        for start in range(0, n, 256):
            ours.send(protocol.jobs_message(jobs[start:start + 256]))
        ours.send(protocol.STOP)

    def read() -> None:
        got = 0
        while got < n:
            outcomes, _ = protocol.read(ours.recv())
            got += len(outcomes)

    threads = [threading.Thread(target=feed), threading.Thread(target=read)]
    for t in threads:
        t.start()
    t0 = cpu()
    child._loop(app, theirs, words, None, None)
    spent = cpu() - t0
    for t in threads:
        t.join()
    words.release()
    slot.close()
    ours.close()
    theirs.close()
    app.close()
    return f"child loop: {spent / n * 1e6:.2f} us per job"


def protocol_pipe() -> Any:
    from multiprocessing import Pipe
    return Pipe(duplex=True)


def supervisor_cost(folder: str, n: int) -> str:
    from test_supervisor_turns import FakeClock, Turns
    app = new_app(folder, "supervisor")
    add = app.tasks["add"]
    for i in range(n):
        add.delay(i, i)
    clock = FakeClock()
    turns = Turns(app, clock, concurrency=2)   # type: ignore[arg-type]
    sup = turns.sup
    in_write = [0.0]
    write = sup._write

    def timed_write(*args: Any) -> Any:
        t0 = cpu()
        try:
            return write(*args)
        finally:
            in_write[0] += cpu() - t0

    sup._write = timed_write                   # type: ignore[method-assign]
    spent = 0.0
    done = 0
    for _ in range(100 * n):
        if done >= n:
            break
        events = [key.data for key, _ in sup.selector.select(0)]
        t0 = cpu()
        sup.turn(events)
        spent += cpu() - t0
        for kid in turns.children:
            new = kid.received()
            if new:
                now = clock.wall
                kid.theirs.send(protocol.outcomes_message(
                    [records.succeeded(j.seq, "1", now, now + 1e-5, 1) for j in new]))
                kid.jobs.clear()
                done += len(new)
        clock.advance(0.0005)
    turns.close()
    app.close()
    return (f"supervisor turns, drain: {spent / n * 1e6:.2f} us per job, "
            f"outside the transaction {(spent - in_write[0]) / n * 1e6:.2f} us")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20000, help="jobs per measurement")
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="lqcost-")
    try:
        print(store_cost(folder, args.n, 256))
        print(store_cost(folder, args.n, 8))
        print(child_cost(folder, args.n))
        print(supervisor_cost(folder, args.n))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
