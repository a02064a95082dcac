#!/usr/bin/env python3
"""localq with a deep queue and a big table: each figure at 10,000 jobs and at N.

    python benchmarks/scale.py [--quick] [--jobs N] [--fill auto|delay|rows] [--json PATH]

Run from the project root; localq is imported from this checkout. N defaults
to 1,000,000 (--quick: 100,000). For a no-op ``add(x, y)`` task and a CLI
worker with 2 children, every figure is measured twice, with 10,000 jobs (the
baseline) and with N, and printed with the ratio N/baseline:

1. enqueue: ``delay()`` rate per 10,000 at that depth: 5 fills of an empty
   table to 10,000, against the last 5 x 10,000 of the fill to N;
2. drain: a CLI worker started on the backlog: its first 10,000 completions
   (5 fresh workers in turn at each depth: a 0.15 s window is noisy on 2
   cores), and the whole backlog (at N: the last worker, on what is left);
3. streaming: with 10,000 or N finished jobs in the table, the producer sends
   20,000 while the worker runs: 20,000 / (first delay() -> last one done), x3;
4. supervisor memory (VmRSS) at start, after 10,000 done, at the end of the drain;
5. database size per finished job (db + wal), and after wal_checkpoint(TRUNCATE);
6. result_expires: the drain rate of a 100,000-job backlog (quick: 30,000)
   beside N finished results an hour old that the worker's sweep must delete,
   against the same backlog with nothing to clean (3 interleaved rounds).

Figures are medians. Completion is polled cheaply on a separate read-only
connection (a lookup by row number, and counts over the partial indexes of
waiting and running jobs): a ``count(*)`` of SUCCESS rows costs too much at
1,000,000 rows. Everything
happens in a fresh temporary folder that is deleted at the end; every process
started here is stopped by its pid. Stdlib only. See benchmarks/README.md.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common as c  # noqa: E402  (processes, the CLI worker, load accounting, reporting)
from _common import WORKERS, BenchError, Worker  # noqa: E402

import localq  # noqa: E402  (after _common put this checkout first on sys.path)
from localq.ids import format_id, new_id, parse_id  # noqa: E402
from localq.store import JobRow  # noqa: E402
from localq.store.records import split_id  # noqa: E402

BASE = 10_000          # the baseline depth, and the size of every measured window
STREAM = 20_000        # jobs sent by the streaming figure
CHUNK = 20_000         # rows per enqueue_rows() transaction when filling in bulk
DELAY_FILL_MAX = 120.0  # --fill auto: one-by-one delay() when the estimate is under this
MARK_POLL = 0.001      # poll while waiting for the 10,000th job (a 0.2 s window)
END_POLL = 0.005       # poll while waiting for the end of a drain or a stream
SAMPLES = 5            # 10,000-job windows per depth for enqueue and drain (medians)
REPEAT = 3             # rounds of streaming and of the result_expires drains (medians)

BENCHTASKS = '''\
"""Written by benchmarks/scale.py into its temporary folder."""
import os

from localq import Localq

app = Localq(os.environ.get("LOCALQ_BENCH_DB")
             or os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench.db"))
if os.environ.get("LOCALQ_BENCH_RESULT_EXPIRES"):     # the result_expires figure
    app.conf.result_expires = int(os.environ["LOCALQ_BENCH_RESULT_EXPIRES"])


@app.task
def add(x, y):
    return x + y
'''

WAITING = ("SELECT count(*) FROM jobs WHERE state IN ('PENDING', 'RETRY') AND lane IS NULL "
           "AND queue = 'default'")              # the partial index jobs_ready
RUNNING = "SELECT count(*) FROM jobs WHERE state = 'STARTED'"   # the partial index jobs_running


def rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def file_size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def checkpoint(path: str) -> tuple[int, int, int]:
    """PRAGMA wal_checkpoint(TRUNCATE) from this process: (busy, wal pages, checkpointed)."""
    conn = sqlite3.connect(path, timeout=60, isolation_level=None)
    try:
        return tuple(conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone())
    finally:
        conn.close()


class Scale(c.TempBench):
    def __init__(self, n: int, quick: bool, fill: str) -> None:
        super().__init__("lqscale-", {"benchtasks.py": BENCHTASKS})
        self.n = n
        self.quick = quick
        self.fill_mode = fill
        self.expire_backlog = 30_000 if quick else 100_000
        self.figures: dict[str, dict] = {}     # key -> {label, unit, base, big, note}
        self.expiry: dict[str, dict] = {}
        self.phase_load: list[str] = []
        self.checked: list[str] = []
        self.our_pids: set[int] = {os.getpid()}

    # -------------------------------------------------------------- plumbing

    def drop_db(self, path: str) -> None:
        """Delete a database we are done with (a 1,000,000-job file is ~100s of MB)."""
        self.app.close()
        for suffix in ("", "-wal", "-shm"):
            try:
                os.remove(path + suffix)
            except FileNotFoundError:
                pass
        shutil.rmtree(path + ".d", ignore_errors=True)

    def fig(self, key: str, label: str, unit: str, which: str, value, note: str = "") -> None:
        entry = self.figures.setdefault(key, {"label": label, "unit": unit, "base": None,
                                              "big": None, "note": ""})
        entry[which] = value
        if note:
            entry["note"] = note

    def new_rows(self, start: int, count: int, created: float | None = None,
                 ids: list[str] | None = None) -> list[JobRow]:
        """Jobs with payload ``[[i,i],{}]``, as delay() would write them."""
        now = time.time() if created is None else created
        task = self.add.name
        rows = []
        for k, i in enumerate(range(start, start + count)):
            seq, custom_id = split_id(ids[k] if ids else new_id())
            rows.append(JobRow(seq=seq, custom_id=custom_id, task=task, queue="default",
                               lane=None, priority=0, serializer="json",
                               payload=f"[[{i},{i}],{{}}]", options=None, eta=0.0,
                               expires=None, created=now))
        return rows

    def start_worker(self, db: str, ro: sqlite3.Connection,
                     extra_env: dict[str, str] | None = None) -> tuple[Worker, float]:
        worker = Worker(self, db, extra_env)
        ready = worker.wait_registered(ro)
        self.our_pids.add(worker.pid)
        return worker, ready

    def note_our_children(self, worker: Worker) -> None:
        self.our_pids.update(c.proc_children(worker.pid))

    def others_ticks(self) -> dict[tuple[int, str], int]:
        return {k: v for k, v in c.all_cpu_ticks().items() if k[0] not in self.our_pids}

    def phase_started(self, name: str) -> dict[tuple[int, str], int]:
        return self.others_ticks()

    def phase_ended(self, name: str, before, seconds: float) -> None:
        """The CPU other processes used during the phase."""
        used = sum(t - before.get(k, 0) for k, t in self.others_ticks().items())
        share = used / c.CLK_TCK / (seconds * (os.cpu_count() or 1)) * 100
        self.phase_load.append(f"{name}: {used / c.CLK_TCK:.1f} CPU-s in {seconds:.0f}s "
                               f"({share:.0f} % of the machine)")

    @staticmethod
    def job_state(ro: sqlite3.Connection, seq: int) -> str | None:
        row = ro.execute("SELECT state FROM jobs WHERE seq = ?", (seq,)).fetchone()
        return None if row is None else row[0]

    def wait_done(self, ro: sqlite3.Connection, worker: Worker, seq: int, poll: float,
                  timeout: float, everything: bool) -> float:
        """Poll until job ``seq`` has finished (SUCCESS, or deleted by result expiry) and,
        if ``everything``, no job waits or runs any more. Returns the time it was seen."""
        deadline = time.perf_counter() + timeout
        while True:
            state = self.job_state(ro, seq)
            if state in ("SUCCESS", None) and (
                    not everything or (ro.execute(RUNNING).fetchone()[0] == 0
                                       and ro.execute(WAITING).fetchone()[0] == 0)):
                return time.perf_counter()
            if state in ("FAILURE", "REVOKED"):
                raise BenchError(f"job {format_id(seq)} ended {state}")
            worker.check_alive()
            if time.perf_counter() > deadline:
                raise BenchError(f"job {format_id(seq)} still {state} after {timeout:.0f}s")
            time.sleep(poll)

    def run(self) -> None:
        self.run_phases([(f"scale: {BASE:,} queued, {SAMPLES} rounds", self.base_phase),
                         (f"scale: {self.n:,} queued", self.big_phase),
                         (f"result_expires, {REPEAT} rounds of 3 drains", self.expiry_phase)])

    def finish(self, ro: sqlite3.Connection, worker: Worker | None, db: str) -> None:
        """After a drain: close the connection, stop the worker, look at its log, delete
        the database."""
        ro.close()
        if worker is not None:
            worker.stop()
            self.check_log(worker)
        self.drop_db(db)

    # -------------------------------------------------------------- scale

    def fill(self, total: int, timed: int, positions: set[int]) -> tuple[list[float], dict]:
        """Queue ``total`` jobs, the last ``timed`` (a multiple of BASE) one delay() each,
        timed per BASE. Returns those rates and {position: id} for ``positions``."""
        bulk = total - timed
        how = self.fill_mode
        if how == "auto":
            base_rate = self.figures.get("enqueue", {}).get("base")
            how = "delay" if bulk == 0 or (base_rate and bulk / base_rate <= DELAY_FILL_MAX) \
                else "rows"
        ids: dict[int, str] = {}
        blocks: list[float] = []
        t_start = time.perf_counter()
        if how == "rows":
            for start in range(0, bulk, CHUNK):
                rows = self.new_rows(start, min(CHUNK, bulk - start))
                ids.update((p, rows[p - start].id) for p in positions
                           if start <= p < start + len(rows))
                self.app.store.enqueue_rows(rows)
            first = bulk
        else:
            first = 0
        filled = time.perf_counter() - t_start
        add = self.add
        for start in range(first, total, BASE):
            t0 = time.perf_counter()
            for i in range(start, start + BASE):
                r = add.delay(i, i)
                if i in positions:
                    ids[i] = r.id
            blocks.append(BASE / (time.perf_counter() - t0))
        if total == BASE:
            note = "10,000 by delay() into an empty table"
        elif how == "rows":
            note = (f"first {bulk:,} by enqueue_rows() in chunks of {CHUNK:,} "
                    f"({bulk / filled:,.0f} rows/s), then {timed:,} by delay()")
        else:
            note = (f"all {total:,} by delay() (under {DELAY_FILL_MAX:.0f}s at the baseline "
                    f"rate); per 10,000 over the fill: first {blocks[0]:,.0f}/s, min "
                    f"{min(blocks):,.0f}/s, median {statistics.median(blocks):,.0f}/s, last "
                    f"{blocks[-1]:,.0f}/s")
        if f"fill to {total:,}: {note}" not in self.notes:
            self.notes.append(f"fill to {total:,}: {note}")
        return blocks[-(timed // BASE):], ids

    def base_phase(self) -> None:
        """SAMPLES times: fill an empty table with 10,000 delay(), a fresh worker drains it;
        the last round goes on with sizes and streaming."""
        enqueue, drain = [], []
        for rnd in range(SAMPLES):
            db = self.use_db(f"base-{rnd}.db")
            rates, ids = self.fill(BASE, BASE, {BASE - 1})
            enqueue += rates
            checkpoint(db)
            ro = c.read_only(db)
            worker = None
            try:
                worker, ready = self.start_worker(db, ro)
                rss0 = rss_kib(worker.pid)
                t_end = self.wait_done(ro, worker, parse_id(ids[BASE - 1]), MARK_POLL, 120, True)
                drain.append(BASE / (t_end - ready))
                if rnd == SAMPLES - 1:
                    rss = rss_kib(worker.pid)
                    self.after_drain(db, ro, worker, "base", BASE, rss0, rss, rss, t_end - ready)
                else:
                    self.check(ro, f"base-{rnd}.db", BASE)
            finally:
                self.finish(ro, worker, db)
        med = f"median of {SAMPLES}: "
        self.fig("enqueue", "enqueue: 10,000 delay() at that depth", "rate", "base",
                 statistics.median(enqueue), note=med + ", ".join(f"{r:,.0f}" for r in enqueue))
        self.fig("drain_first", "drain: first 10,000 completions", "rate", "base",
                 statistics.median(drain), note=med + ", ".join(f"{r:,.0f}" for r in drain))
        self.fig("drain_all", "drain: whole backlog", "rate", "base", statistics.median(drain))

    def big_phase(self) -> None:
        """One table of N: the last SAMPLES x 10,000 delay() timed; SAMPLES fresh workers in
        turn each run their first 10,000; the last one drains the rest, then sizes and
        streaming."""
        total = self.n
        timed = SAMPLES * BASE
        marks = [(k + 1) * BASE - 1 for k in range(SAMPLES)]
        rest0 = SAMPLES * BASE - 1
        tenths = [rest0 + k * (total - 1 - rest0) // 10 for k in range(1, 11)]
        db = self.use_db(f"big-{total}.db")
        enqueue, ids = self.fill(total, timed, set(marks) | set(tenths))
        self.fig("enqueue", "enqueue: 10,000 delay() at that depth", "rate", "big",
                 statistics.median(enqueue), note=f"baseline: {SAMPLES} empty tables; N: the "
                 f"last {SAMPLES} x 10,000 of the fill; medians")
        checkpoint(db)
        ro = c.read_only(db)
        worker = None
        try:
            firsts = []
            for k, mark in enumerate(marks):
                waiting = ro.execute(WAITING).fetchone()[0]
                worker, ready = self.start_worker(db, ro)
                rss0 = rss_kib(worker.pid)
                t_mark = self.wait_done(ro, worker, parse_id(ids[mark]), MARK_POLL, 120, False)
                firsts.append(BASE / (t_mark - ready))
                if k < len(marks) - 1:
                    worker.stop()            # warm: its prefetched jobs go back
                    self.check_log(worker)
            rss1 = rss_kib(worker.pid)
            self.fig("drain_first", "drain: first 10,000 completions", "rate", "big",
                     statistics.median(firsts), note=f"{SAMPLES} fresh workers in turn: "
                     + ", ".join(f"{r:,.0f}" for r in firsts))
            times = [t_mark]
            for pos in tenths[:-1]:
                times.append(self.wait_done(ro, worker, parse_id(ids[pos]), END_POLL,
                                            max(120.0, total / 2000), False))
            self.note_our_children(worker)
            t_end = self.wait_done(ro, worker, parse_id(ids[tenths[-1]]), END_POLL,
                                   max(120.0, total / 2000), True)
            times.append(t_end)
            rss2 = rss_kib(worker.pid)
            self.fig("drain_all", "drain: whole backlog", "rate", "big", waiting / (t_end - ready),
                     note=f"the last worker, on the {waiting:,} left")
            per = [(tenths[0] - rest0) / (times[1] - times[0])] + [
                (tenths[k] - tenths[k - 1]) / (times[k + 1] - times[k]) for k in range(1, 10)]
            self.notes.append("drain rate per tenth of the last worker's backlog: "
                              + ", ".join(f"{r / 1000:.0f}k" for r in per) + " /s")
            self.after_drain(db, ro, worker, "big", total, rss0, rss1, rss2, t_end - ready)
        finally:
            self.finish(ro, worker, db)

    def after_drain(self, db: str, ro: sqlite3.Connection, worker: Worker, which: str,
                    total: int, rss0, rss1, rss2, seconds: float) -> None:
        """Memory and size figures at the end of a drain, then streaming."""
        self.fig("drain_time", "drain: time of the last worker (info)", "s", which, seconds)
        self.fig("rss_start", "supervisor RSS at start", "kib", which, rss0,
                 note="VmRSS when its row appears")
        self.fig("rss_10k", "supervisor RSS after 10,000 done", "kib", which, rss1)
        self.fig("rss_end", "supervisor RSS at the end of the drain", "kib", which, rss2)
        size, wal = file_size(db), file_size(db + "-wal")
        self.fig("bytes_job", "db + wal per finished job", "bytes", which,
                 (size + wal) / total, note="right after the drain")
        self.fig("wal", "wal size after the drain (info)", "mib", which, wal / 2**20)
        busy, _, _ = checkpoint(db)
        size2, wal2 = file_size(db), file_size(db + "-wal")
        self.fig("bytes_job_ckpt", "  after wal_checkpoint(TRUNCATE)", "bytes", which,
                 (size2 + wal2) / total, note="checkpoint busy" if busy else "")
        # streaming, with `total` finished jobs in the table
        add = self.add
        stream, producer = [], []
        for _ in range(REPEAT):
            time.sleep(0.3)                 # let it go idle
            t0 = time.perf_counter()
            for i in range(STREAM):
                r = add.delay(i, i)
            t1 = time.perf_counter()
            t_done = self.wait_done(ro, worker, parse_id(r.id), END_POLL, 120, True)
            stream.append(STREAM / (t_done - t0))
            producer.append(STREAM / (t1 - t0))
        self.fig("stream", f"streaming {STREAM:,}, with that many finished", "rate", which,
                 statistics.median(stream), note=f"first delay() -> last done; median of "
                 f"{REPEAT} (each adds {STREAM:,} finished): "
                 + ", ".join(f"{r:,.0f}" for r in stream))
        self.fig("stream_enqueue", "  delay() while the worker runs (info)", "rate", which,
                 statistics.median(producer))
        self.note_our_children(worker)
        worker.check_alive()
        self.check(ro, os.path.basename(db), total + REPEAT * STREAM)

    def check(self, ro: sqlite3.Connection, name: str, expected: int) -> None:
        """Every job SUCCESS with the right result (a full scan: not timed)."""
        states = dict(ro.execute("SELECT state, count(*) FROM jobs GROUP BY state").fetchall())
        wrong = c.count_wrong(ro)
        if states != {"SUCCESS": expected} or wrong:
            self.errors.append(f"{name}: expected {expected:,} SUCCESS, found {states}, "
                               f"wrong result: {wrong}")
        else:
            self.checked.append(f"{name}: {expected:,}")

    # -------------------------------------------------------------- result_expires

    def add_old_rows(self, db: str, count: int) -> int:
        """``count`` finished jobs created and done an hour ago, with ids (row numbers)
        of that time; returns the highest row number."""
        ms0 = (time.time_ns() // 1_000_000) - 3_600_000
        rw = sqlite3.connect(db, timeout=60, isolation_level=None)
        last = 0
        try:
            for start in range(0, count, CHUNK):
                size = min(CHUNK, count - start)
                seqs = [((ms0 + i // 1000) << 21) | (i % 1000)
                        for i in range(start, start + size)]
                rows = self.new_rows(start, size, created=0.0,
                                     ids=[format_id(s) for s in seqs])
                rows = [r._replace(created=(seq >> 21) / 1000) for r, seq in zip(rows, seqs)]
                self.app.store.enqueue_rows(rows)
                rw.execute("UPDATE jobs SET state = 'SUCCESS', started = created, "
                           "done = created, result = CAST(2 * json_extract(payload, "
                           "'$[0][0]') AS TEXT) WHERE seq BETWEEN ? AND ?",
                           (seqs[0], seqs[-1]))
                last = seqs[-1]
        finally:
            rw.close()
        return last

    def expiry_phase(self) -> None:
        """REPEAT rounds of three drains of the same backlog, interleaved: nothing to clean
        (default result_expires), result_expires=1 alone, and beside N old results."""
        for rnd in range(REPEAT):
            for key, expires, old in [("default", None, 0), ("fresh", 1, 0), ("old", 1, self.n)]:
                self.expiry_drain(key, expires, old, rnd)

    def expiry_drain(self, key: str, expires: int | None, old: int, rnd: int) -> None:
        backlog = self.expire_backlog
        db = self.use_db(f"expire-{key}.db")
        t0 = time.perf_counter()
        last_old = self.add_old_rows(db, old) if old else 0
        prepared = time.perf_counter() - t0
        last = ""
        for start in range(0, backlog, CHUNK):
            rows = self.new_rows(start, min(CHUNK, backlog - start))
            last = rows[-1].id
            self.app.store.enqueue_rows(rows)
        checkpoint(db)
        ro = c.read_only(db)
        worker = None
        env = {"LOCALQ_BENCH_RESULT_EXPIRES": str(expires)} if expires else None
        entry = self.expiry.setdefault(key, {"rates": [], "left": [], "deleted": []})
        try:
            worker, ready = self.start_worker(db, ro, env)
            self.note_our_children(worker)
            t_end = self.wait_done(ro, worker, parse_id(last), END_POLL, 300, True)
            entry["rates"].append(backlog / (t_end - ready))
            if old:
                left = ro.execute("SELECT count(*) FROM jobs WHERE seq <= ?",
                                  (last_old,)).fetchone()[0]
                entry["left"].append(left)
                entry["deleted"].append((old - left) / (t_end - ready))
                entry["prepared"] = prepared
            if old and rnd == REPEAT - 1:
                # Then, idle, how long until the sweep has deleted every old row?
                limit = 60.0 if self.quick else 240.0
                t_clean = None
                while time.perf_counter() - t_end < limit:
                    row = ro.execute("SELECT 1 FROM jobs WHERE seq <= ? LIMIT 1",
                                     (last_old,)).fetchone()
                    if row is None:
                        t_clean = time.perf_counter()
                        break
                    worker.check_alive()
                    time.sleep(0.1)
                entry["all_gone"] = None if t_clean is None else t_clean - ready
                if t_clean is None:
                    entry["left_at_limit"] = ro.execute(
                        "SELECT count(*) FROM jobs WHERE seq <= ?", (last_old,)).fetchone()[0]
                    entry["limit"] = limit
            if expires is None:
                self.check(ro, f"expire-{key}.db (round {rnd + 1})", backlog)
            else:      # finished rows may be gone already: only look for unfinished ones
                other = ro.execute("SELECT state, count(*) FROM jobs WHERE state <> 'SUCCESS' "
                                   "GROUP BY state").fetchall()
                if other:
                    self.errors.append(f"expire-{key}.db: jobs not SUCCESS: {other}")
            self.note_our_children(worker)
            worker.check_alive()
        finally:
            self.finish(ro, worker, db)


# ---------------------------------------------------------------- report

UNITS = {"s": "{:.2f} s", "kib": lambda v: f"{v / 1024:.1f} MiB", "mib": "{:.1f} MiB"}


def show(value, unit: str) -> str:
    """rate and bytes as everywhere; seconds to 0.01 s; memory in MiB."""
    return c.show(value, unit, UNITS)


ORDER = ["enqueue", "drain_first", "drain_all", "drain_time", "stream", "stream_enqueue",
         "rss_start", "rss_10k", "rss_end", "bytes_job", "bytes_job_ckpt", "wal"]


def targets(bench: Scale) -> list[tuple[str, str, float | None, bool | None, str]]:
    """(key, text, value, ok, shown value) for each target."""
    figs = bench.figures
    out = []

    def ratio(key: str) -> float | None:
        f = figs.get(key)
        if not f or not f["base"] or f["big"] is None:
            return None
        return f["big"] / f["base"]

    for key, text in [("enqueue", "enqueue"), ("drain_first", "drain, first 10,000"),
                      ("drain_all", "drain, whole backlog"), ("stream", "streaming")]:
        r = ratio(key)
        out.append((key, f"{text} at {bench.n:,} >= 80 % of at {BASE:,}", r,
                    None if r is None else r >= 0.8, "n/a" if r is None else f"{r:.2f}x"))
    f = figs.get("rss_10k", {})
    end = figs.get("rss_end", {}).get("big")
    grow = end / f["big"] if end and f.get("big") else None
    out.append(("rss",
                f"supervisor RSS flat: end of the {bench.n:,} drain <= 1.2 x after 10,000 done",
                grow, None if grow is None else grow <= 1.2,
                "n/a" if grow is None else
                f"{f['big'] / 1024:.1f} -> {end / 1024:.1f} MiB ({grow:.2f}x)"))
    base = expiry_rate(bench, "default")
    old = expiry_rate(bench, "old")
    r = old / base if base and old else None
    out.append(("expiry", f"drain of {bench.expire_backlog:,} beside {bench.n:,} expired "
                f"results >= 90 % of with nothing to clean", r, None if r is None else r >= 0.9,
                "n/a" if r is None else f"{r:.2f}x"))
    return out


def expiry_rate(bench: Scale, key: str) -> float | None:
    rates = bench.expiry.get(key, {}).get("rates")
    return statistics.median(rates) if rates else None


def report(bench: Scale, wall: float, load: list[str]) -> str:
    figs = bench.figures
    big = f"{bench.n:,} queued"
    rows = [("figure", f"{BASE:,} queued", big, "ratio", "note")]
    for key in ORDER + [k for k in figs if k not in ORDER]:
        if key not in figs:
            continue
        f = figs[key]
        ratio = "n/a"
        if f["base"] and f["big"] is not None:
            ratio = f"{f['big'] / f['base']:.2f}x"
        rows.append((f["label"], show(f["base"], f["unit"]), show(f["big"], f["unit"]), ratio,
                     f["note"]))
    lines = [f"localq scale benchmark: N={bench.n:,}{' (quick)' if bench.quick else ''}, "
             f"{WORKERS} worker children, {c.machine()}, "
             f"localq {localq.__version__} ({c.git_commit()})", ""]
    lines += c.table(rows, note=True)
    lines.append("")
    ex = bench.expiry
    erows = [(f"result_expires: drain of a {bench.expire_backlog:,}-job backlog", "rate",
              "ratio", f"note (median of {REPEAT} rounds)")]
    base = expiry_rate(bench, "default")
    for key, label, note in [
            ("default", "nothing to clean (result_expires=86400, default)", "the baseline"),
            ("fresh", "result_expires=1, no old rows", "the sweep deletes the backlog's own "
             "results once 1 s old"),
            ("old", f"result_expires=1, {bench.n:,} finished rows 1 h old", "")]:
        rate = expiry_rate(bench, key)
        if rate is None:
            erows.append((label, "n/a", "n/a", "FAILED TO MEASURE"))
            continue
        r = f"{rate / base:.2f}x" if base else "n/a"
        rounds = ", ".join(f"{x:,.0f}" for x in ex[key]["rates"])
        erows.append((label, show(rate, "rate"), r, f"{note}{'; ' if note else ''}{rounds}"))
    lines += c.table(erows, note=True)
    e = ex.get("old")
    if e and e["left"]:
        lines.append("  old rows left at the end of the drain: "
                     + ", ".join(f"{x:,}" for x in e["left"]) + f" of {bench.n:,} (the sweep "
                     f"deleted " + ", ".join(f"{x:,.0f}" for x in e["deleted"])
                     + " rows/s during the drain)")
        if e.get("all_gone") is not None:
            lines.append(f"  last round: every old row gone {e['all_gone']:.1f}s after the "
                         f"worker started ({bench.n / e['all_gone']:,.0f} rows/s)")
        elif "limit" in e:
            lines.append(f"  last round: {e['left_at_limit']:,} old rows still there "
                         f"{e['limit']:.0f}s after the drain")
        lines.append(f"  (writing the {bench.n:,} old rows took {e['prepared']:.1f}s, untimed)")
    lines.append("")
    for _, text, _, ok, shown in targets(bench):
        lines.append(c.target_line(text, shown, ok))
    lines.append("")
    lines.extend(bench.notes)
    if bench.checked:
        lines.append("check: every job ended SUCCESS with the right result in "
                     + "; ".join(bench.checked))
    lines.extend(f"ERROR {e}" for e in bench.errors)
    lines.append("background load (CPU of processes not started by this run), per phase:")
    lines.extend(f"  {p}" for p in bench.phase_load)
    lines.extend(load)
    lines.append(f"total {wall:.1f}s")
    return "\n".join(lines)


def steal_share(before: list[int], after: list[int]) -> str:
    if len(before) < 8 or len(after) < 8:
        return "steal: unknown"
    delta = [b - a for a, b in zip(before, after)]
    total = sum(delta[:8]) or 1
    return (f"machine CPU during the run: {100 * (total - delta[3] - delta[4]) / total:.0f} % "
            f"busy, {100 * delta[7] / total:.1f} % stolen by the hypervisor")


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="N=100,000 and a 30,000-job backlog for result_expires")
    parser.add_argument("--jobs", type=int, default=None,
                        help="N, the deep queue (default 1,000,000; quick 100,000)")
    parser.add_argument("--fill", choices=("auto", "delay", "rows"), default="auto",
                        help="how to queue the first N-10,000 jobs: one delay() each, or "
                             "enqueue_rows() in chunks of 20,000; auto: delay() when the "
                             f"baseline rate says it takes under {DELAY_FILL_MAX:.0f}s")
    c.add_json_option(parser)
    args = parser.parse_args()
    n = args.jobs or (100_000 if args.quick else 1_000_000)
    if n < 2 * SAMPLES * BASE:
        parser.error(f"--jobs must be at least {2 * SAMPLES * BASE:,}")
    json_path = c.json_path(args)
    started = time.perf_counter()
    ticks = c.all_cpu_ticks()
    cpu0 = c.cpu_times()
    load = [f"load average at start {loadavg()}"]
    bench = Scale(n, args.quick, args.fill)
    try:
        bench.run()
    finally:
        bench.cleanup()
    wall = time.perf_counter() - started
    load.append(f"load average at the end {loadavg()}")
    load.append(c.background_load_by_process(ticks, wall))
    load.append(steal_share(cpu0, c.cpu_times()))
    print(report(bench, wall, load))
    if json_path:
        c.write_json(json_path, {
            "n": n, "base": BASE, "quick": args.quick, "fill": args.fill, "workers": WORKERS,
            **c.run_info(), "localq": localq.__version__, "seconds": wall,
            "figures": bench.figures,
            "expiry": {k: dict(v, median=expiry_rate(bench, k)) for k, v in bench.expiry.items()},
            "expire_backlog": bench.expire_backlog,
            "targets": [{"key": key, "text": text, "value": value, "ok": ok, "shown": shown}
                        for key, text, value, ok, shown in targets(bench)],
            "notes": bench.notes, "checked": bench.checked, "errors": bench.errors,
            "load": bench.phase_load + load})
    return 1 if bench.errors else 0


if __name__ == "__main__":
    sys.exit(main())
