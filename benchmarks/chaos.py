#!/usr/bin/env python3
"""The fault harness: kill, stop, starve and lock real workers, then count what broke.

    python benchmarks/chaos.py                      # every scenario, full size (~5 min)
    python benchmarks/chaos.py --quick              # every scenario, small (~1 min)
    python benchmarks/chaos.py --scenario kill-child --scenario child-crash --seed 7
    python benchmarks/chaos.py --quick --scenario full-disk --keep    # keep the logs

Each scenario runs real processes in a fresh temporary folder: CLI workers
(``python -m localq worker --app chaos_tasks:app -c 2``) and producers
(``python -m chaos_tasks produce``, one ``delay()`` per job at full speed), and
injects its fault at random points (``--seed`` makes the points repeatable):

  kill-supervisor  kill -9 of the supervisor under streaming load, alternately while a
                   backlog drains and while it keeps up; a new worker on the file
  kill-child       kill -9 of one child of the worker at random points
  kill-producer    kill -9 of a producer mid-send: the jobs it got ids for must exist
  sigstop          SIGSTOP of one of two workers past worker_lost_after (2 s, 3 s full),
                   while they drain a backlog, until the other has presumed it dead and
                   taken its jobs, then SIGCONT
  sigstop-in-write the same, landing while the worker holds the write lock (the others
                   wait for it); SIGCONT after worker_lost_after and one recovery period
  many-workers     three workers on one file, two producers, warm restarts: each job
                   must run exactly once (the only scenario where a second run is wrong)
  child-crash      a task calls os._exit(1) on every N-th job (by its arguments)
  full-disk        the database on a small tmpfs filled to the last byte (root only:
                   skipped with the reason otherwise), held full, then freed
  write-lock       another connection holds the write lock (BEGIN IMMEDIATE) past the
                   writers' retry window (65 s; --quick holds it 3 s, see the note it prints)

Every run of a job is logged outside the database (chaos_tasks.py: ``KEY PID
start`` and ``KEY PID end``, one O_APPEND write each), and every producer
appends ``KEY ID`` once ``delay()`` has returned. After the faults the
producers and workers are stopped (SIGTERM), a clean worker drains the file
(until nothing is waiting or running, or until nothing has moved for a while),
and the database is read through the public API (``AsyncResult`` states and
results, ``python -m localq status --db``) plus ``PRAGMA integrity_check``.

Columns of the table:

  jobs      rows in the database (status)
  faults    faults injected: kills, stops, crashes that happened, disk-full
            episodes reached, locks held (many-workers: warm restarts)
  exits     workers or producers that exited on their own (a worker must survive)
  lost      jobs a producer got an id for that are missing, or never ran and are not final
  stuck     jobs not final after the drain (PENDING, RETRY or STARTED)
  rerun     jobs that ran more than once: "running" = every earlier run was cut
            short (running at the fault: at-least-once, expected);
            "finished" = a run that had completed ran again (its outcome was not
            yet written when the fault struck)
  blamed    a wrong final state: FAILURE for a job whose run completed or that
            never started, SUCCESS for a job with no completed run (a crash job
            that "succeeded"), or a result that is not the job's own; a
            WorkerLostError on the job a killed child was in is right, even when
            the kill fell just before its body logged its start or just after it
            logged its end (one such job per kill)
  integrity PRAGMA integrity_check

Verdict FAIL for any exit, lost, stuck or blamed job, an integrity error, a
worker that did not stop on SIGTERM, or (many-workers) any second run; the
exit code is 1 if any scenario failed. A skipped scenario says why and does
not fail the run.

Every process is started in its own process group, with PR_SET_PDEATHSIG so it
dies with the harness, and stopped by its pid (its group: the worker's
children) in a finally block; the temporary folder is deleted and the tmpfs
unmounted at the end. Stdlib only; run from the project root.
"""
from __future__ import annotations

import argparse
import ctypes
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterator

import _common as c  # puts this checkout first on sys.path

from localq import Localq, WorkerLostError
from localq.store.schema import BUSY_TIMEOUT_MS
from localq.worker.upkeep import RECOVERY_EVERY

FINAL = ("SUCCESS", "FAILURE", "REVOKED")
NOT_FINAL = ("PENDING", "RETRY", "STARTED")
STOP_GRACE = 30.0       # seconds a worker gets to stop after SIGTERM
MOUNT_SIZE = "128m"     # the full-disk tmpfs: room for the rows of a full run
LOCKER = """\
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], timeout=60, isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("COMMIT")
"""


class Skip(Exception):
    """The scenario cannot run here; the message says why."""


def _die_with_harness() -> None:
    """In a new process, before exec: SIGKILL it when the harness dies."""
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)     # PR_SET_PDEATHSIG
    except Exception:
        pass


class Proc:
    """A process this harness started (in its own group: the worker's children too)."""

    def __init__(self, kind: str, popen: subprocess.Popen, log_path: str,
                 restart: Callable[[], Proc] | None, ids_path: str) -> None:
        self.kind = kind
        self.popen = popen
        self.pid = popen.pid
        self.log_path = log_path
        self.restart = restart          # starts another like it
        self.ids_path = ids_path
        self.expected_exit = False      # we killed or stopped it: its exit is no death
        self.revive = False             # it exited on its own: replace it when allowed

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal_group(self, sig: int) -> None:
        """Signal its group: only processes it started can be in it (the kernel does
        not reuse a pid while a group of that id has members)."""
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            pass

    def last_line(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                lines = [ln.strip() for ln in f if ln.strip()]
        except OSError:
            return "(no log)"
        return lines[-1][:200] if lines else "(no output)"


@dataclass
class Row:
    scenario: str
    jobs: int = 0
    faults: int = 0
    exits: int = 0
    lost: int = 0
    stuck: int = 0
    rerun_running: int = 0
    rerun_finished: int = 0
    blamed: int = 0
    integrity: str = "-"
    verdict: str = "-"
    notes: list[str] = field(default_factory=list)


class Lab:
    """One scenario's folder, database, processes and findings."""

    def __init__(self, name: str, root: str, quick: bool, seed: int) -> None:
        self.name = name
        self.quick = quick
        self.rng = random.Random(seed)
        self.dir = os.path.join(root, name)
        os.mkdir(self.dir, 0o700)
        self.db = os.path.join(self.dir, "chaos.db")
        self.run_log = os.path.join(self.dir, "runs.log")
        self.lost_after: float | None = None
        self.procs: list[Proc] = []
        self.keep_alive = True          # replace a worker or producer that exits on its own
        self.faults = 0
        self.count_crashes = False      # faults = crash runs seen in the log
        self.reruns_allowed = True
        self.exits: list[str] = []
        self.problems: list[str] = []   # other reasons to fail
        self.notes: list[str] = []
        self.mounted: str | None = None
        self.kills: list[tuple[str, set[int]]] = []   # (what, pids whose runs it cut)
        self._ro: sqlite3.Connection | None = None
        self._app: Localq | None = None
        self._producers = 0
        self.sent: dict[str, str] = {}      # key -> id of jobs the harness sent itself
        self.once: list[str] = []           # keys that must complete exactly once

    # ---------------------------------------------------------- processes

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([c.HERE, c.ROOT])
        env["LOCALQ_DB"] = self.db
        env["CHAOS_LOG"] = self.run_log
        env.pop("CHAOS_LOST_AFTER", None)
        if self.lost_after:
            env["CHAOS_LOST_AFTER"] = str(self.lost_after)
        return env

    def _spawn(self, kind: str, argv: list[str], restart: Callable[[], Proc] | None = None,
               ids_path: str = "") -> Proc:
        log_path = os.path.join(self.dir, f"{kind}-{len(self.procs)}.log")
        with open(log_path, "wb") as log:
            popen = subprocess.Popen(argv, cwd=self.dir, env=self._env(),
                                     stdin=subprocess.DEVNULL, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True,
                                     preexec_fn=_die_with_harness)
        proc = Proc(kind, popen, log_path, restart, ids_path)
        self.procs.append(proc)
        return proc

    def start_worker(self, concurrency: int = 2) -> Proc:
        return self._spawn("worker", [sys.executable, "-m", "localq", "worker", "--app",
                                      "chaos_tasks:app", "-c", str(concurrency),
                                      "--loglevel", "WARNING"],
                           restart=lambda: self.start_worker(concurrency))

    def start_producer(self, sleep_every: int = 0, sleep: float = 0.0, crash_every: int = 0,
                       pad: int = 0, rate: float = 0) -> Proc:
        prefix = f"p{self._producers}-"
        self._producers += 1
        ids = os.path.join(self.dir, f"ids-{prefix}txt")
        return self._spawn("producer", [sys.executable, "-m", "chaos_tasks", "produce", prefix,
                                        ids, str(sleep_every), str(sleep), str(crash_every),
                                        str(pad), str(rate)], ids_path=ids,
                           restart=lambda: self.start_producer(sleep_every, sleep,
                                                               crash_every, pad, rate))

    def start_locker(self, seconds: float) -> Proc:
        return self._spawn("locker", [sys.executable, "-c", LOCKER, self.db, str(seconds)])

    def alive(self, kind: str = "worker") -> list[Proc]:
        return [p for p in self.procs if p.kind == kind and p.alive()]

    def kill9(self, proc: Proc, label: str = "") -> bool:
        """kill -9 of this one process (not its group); its children are left to die
        as they would (a worker's die with it), then checked by pid. With a ``label``,
        the kill is noted with the pids of those children, so that the runs they
        completed and that ran again can be counted per kill. False if it was gone."""
        if not proc.alive():
            return False
        kids = {k: c.proc_start(k) for k in c.live_children(proc.pid)}
        proc.expected_exit = True
        os.kill(proc.pid, signal.SIGKILL)
        proc.popen.wait()
        if label:
            self.kills.append((label, set(kids)))
        deadline = time.monotonic() + 5
        while any(c.proc_start(k) == s for k, s in kids.items()):
            if time.monotonic() > deadline:
                self.problems.append(f"children of killed {proc.kind} {proc.pid} outlived "
                                     f"it by 5 s")
                proc.signal_group(signal.SIGKILL)
                break
            time.sleep(0.005)
        return True

    def stop(self, proc: Proc) -> None:
        """SIGTERM (a warm shutdown for a worker), and wait; by force after STOP_GRACE."""
        if not proc.alive():
            return
        proc.signal_group(signal.SIGCONT)
        if proc.kind == "worker":     # SIGTERM before it sets its handlers would kill it
            self.wait_until(lambda: self.registered(proc) or not proc.alive(), 60)
            if not proc.alive():
                return                # watch() notes the exit
        proc.expected_exit = True
        proc.popen.send_signal(signal.SIGTERM)
        try:
            code = proc.popen.wait(STOP_GRACE)
        except subprocess.TimeoutExpired:
            self.problems.append(f"{proc.kind} {proc.pid} did not stop within {STOP_GRACE:.0f}"
                                 f" s of SIGTERM: killed; last line: {proc.last_line()}")
            proc.signal_group(signal.SIGKILL)
            proc.popen.wait()
            return
        if proc.kind == "worker" and code != 0:
            self.problems.append(f"worker {proc.pid} exited {code} on SIGTERM: "
                                 f"{proc.last_line()}")

    def watch(self) -> None:
        """Note every worker or producer that exited on its own; replace it if asked."""
        for proc in list(self.procs):
            if proc.expected_exit or proc.kind == "locker" or proc.alive():
                continue
            proc.expected_exit = True
            self.exits.append(f"{proc.kind} {proc.pid} exited {proc.popen.returncode} "
                              f"on its own: {proc.last_line()}")
            proc.revive = proc.restart is not None
        if self.keep_alive:
            self.revive()

    def revive(self) -> None:
        for proc in list(self.procs):
            if proc.revive and proc.restart is not None:
                proc.revive = False
                proc.restart()

    def wait(self, seconds: float) -> None:
        self.wait_until(lambda: False, seconds)

    def wait_until(self, predicate: Callable[[], object], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            self.watch()
            if predicate():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(min(0.02, max(0.0, deadline - time.monotonic())))

    # ---------------------------------------------------------- the database

    def ro(self) -> sqlite3.Connection | None:
        if self._ro is None and os.path.exists(self.db):
            self._ro = c.read_only(self.db)
        return self._ro

    def registered(self, proc: Proc) -> bool:
        ro = self.ro()
        try:
            return bool(ro and ro.execute("SELECT 1 FROM workers WHERE pid = ?",
                                          (proc.pid,)).fetchone())
        except sqlite3.OperationalError:
            return False        # the file is being created

    def wait_registered(self, *procs: Proc) -> None:
        for proc in procs:
            if not self.wait_until(lambda: self.registered(proc) or not proc.alive(), 60):
                raise RuntimeError(f"worker {proc.pid} did not register within 60 s")

    def write_lock_taken(self, seconds: float = 1.0) -> bool:
        """Does another connection hold the write lock for that long? (A probe: BEGIN
        IMMEDIATE, then ROLLBACK; it writes nothing.)"""
        conn = sqlite3.connect(self.db, timeout=seconds, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")
            return False
        except sqlite3.OperationalError:
            return True
        finally:
            conn.close()

    def not_final(self) -> int:
        """Jobs waiting or running: in the file, and still in producers' inboxes."""
        return self.count("state IN ('PENDING', 'RETRY', 'STARTED')") + self.in_inboxes()

    def in_inboxes(self) -> int:
        ro = self.ro()
        if ro is None:
            return 0
        left = 0
        folder = os.path.realpath(self.db) + ".d"
        for name, pos in ro.execute("SELECT name, pos FROM inboxes WHERE name IS NOT NULL"):
            try:
                box = sqlite3.connect(f"file:{os.path.join(folder, name)}?mode=ro", uri=True)
            except sqlite3.Error:
                left += 1             # cannot be read now: not known to be empty
                continue
            try:
                left += box.execute("SELECT count(*) FROM inbox WHERE n > ?",
                                    (pos,)).fetchone()[0]
            except sqlite3.Error:
                left += 1
            finally:
                box.close()
        return left

    def count(self, where: str) -> int:
        ro = self.ro()
        if ro is None:
            return 0
        return ro.execute(f"SELECT count(*) FROM jobs WHERE {where}").fetchone()[0]

    # ---------------------------------------------------------- the end

    def drain(self) -> None:
        """Stop the producers and workers, then let one clean worker finish what is
        left: until nothing is waiting or running, or nothing has moved for a while."""
        self.keep_alive = False
        for proc in self.alive("producer") + self.alive("locker"):
            self.stop(proc)
        self.watch()
        for proc in self.alive("worker"):
            self.stop(proc)
        self.watch()     # a worker that died meanwhile is an exit, not replaced
        for proc in self.procs:
            proc.revive = False
        self.keep_alive = True
        self.wait_registered(self.start_worker())
        # A clean worker recovers the jobs of dead workers when it starts, and of silent
        # ones after worker_lost_after plus one recovery period.
        stall = max(10.0, 2 * (self.lost_after or 0) + 2 * RECOVERY_EVERY)
        deadline = time.monotonic() + (120 if self.quick else 300)
        last, since = -1, time.monotonic()
        while True:
            self.wait(0.05)
            left = self.not_final()
            now = time.monotonic()
            if left == 0:
                break
            if left != last:
                last, since = left, now
            elif now - since > stall:
                self.notes.append(f"drain: {left} job(s) still not final after {stall:.0f} s "
                                  f"without progress")
                break
            if now > deadline:
                self.notes.append(f"drain: {left} job(s) still not final at the deadline")
                break
        self.keep_alive = False
        for proc in self.alive("worker"):
            self.stop(proc)
        self.watch()

    def cleanup(self) -> None:
        """Every process group we started is killed (by its pid), the clients closed,
        the tmpfs unmounted. Runs whatever happened before."""
        for proc in self.procs:
            proc.expected_exit = True
            proc.signal_group(signal.SIGCONT)
            proc.signal_group(signal.SIGKILL)
            try:
                proc.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.problems.append(f"{proc.kind} {proc.pid} survived SIGKILL")
        # A worker's children may outlive their supervisor by a moment: wait for the groups.
        deadline = time.monotonic() + 10
        for proc in self.procs:
            while _group_alive(proc.pid) and time.monotonic() < deadline:
                proc.signal_group(signal.SIGKILL)
                time.sleep(0.01)
        if self._ro is not None:
            self._ro.close()
            self._ro = None
        if self._app is not None:
            c.close_clients(self._app)
            self._app = None
        if self.mounted:
            for args in (["umount", self.mounted], ["umount", "-l", self.mounted]):
                if subprocess.run(args, capture_output=True).returncode == 0:
                    self.mounted = None
                    break
            if self.mounted:
                self.problems.append(f"could not unmount {self.mounted}")


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ------------------------------------------------------------------ reading the outcome

def read_pairs(path: str) -> list[list[str]]:
    return [line.split() for line in read_lines(path)]


def verify(lab: Lab) -> Row:
    row = Row(lab.name)
    ids: dict[str, str] = {}
    for proc in lab.procs:
        if proc.kind == "producer":
            ids.update((p[0], p[1]) for p in read_pairs(proc.ids_path) if len(p) == 2)
    ids.update(lab.sent)
    runs: dict[str, list[tuple[str, str]]] = {}
    last_line: dict[str, tuple[str, str]] = {}      # pid -> (job key, start/end)
    for parts in read_pairs(lab.run_log):
        if len(parts) == 3:
            runs.setdefault(parts[0], []).append((parts[1], parts[2]))
            last_line[parts[1]] = (parts[0], parts[2])

    # Second runs, from the log alone: was a completed run run again? Each such job is
    # put down to the process its completed run was in (a kill notes its victims).
    crash_runs = 0
    redone_in: Counter[str] = Counter()
    for key, events in runs.items():
        starts, ended, redone = 0, "", False
        for pid, what in events:
            if what == "start":
                if ended and not redone:
                    redone = True
                    redone_in[ended] += 1
                starts += 1
            else:
                ended = pid
        if key.endswith("c"):
            crash_runs += starts
        if starts >= 2:
            if redone:
                row.rerun_finished += 1
            else:
                row.rerun_running += 1

    # A child killed from outside dies inside one job: the job its supervisor blames.
    # The log cannot always show which: the kill may land after that job's body wrote
    # "end" (but before the child marked it done), or after the child took it up (but
    # before its body wrote "start"). So each killed child may excuse one blamed job:
    # the one its last log line names, or, when its last line ends a job, one job that
    # never started.
    killed_children = {str(pid) for what, pids in lab.kills if what == "child" for pid in pids}
    # (a child killed before its first body wrote a line may excuse one unstarted job)
    excuses = {pid: last_line.get(pid, ("", "end")) for pid in killed_children}
    excused = 0

    def excuse(key: str, starts: int) -> bool:
        """Was this WorkerLostError the job that a killed child died in? One per kill."""
        for pid, (last_key, what) in excuses.items():
            if last_key == key or (not starts and what == "end"):
                del excuses[pid]
                return True
        return False

    examples: dict[str, list[str]] = {}

    def example(kind: str, text: str) -> None:
        if len(examples.setdefault(kind, [])) < 3:
            examples[kind].append(text)

    app = lab._app = Localq(lab.db)
    for key, job_id in ids.items():
        events = runs.get(key, [])
        starts = sum(1 for _, w in events if w == "start")
        ends = len(events) - starts
        result = app.AsyncResult(job_id)
        state = result.state
        if state not in FINAL:
            if result.name is None:
                row.lost += 1
                example("lost", f"{key} (id {job_id}): missing from the database")
            elif not starts:
                row.lost += 1
                example("lost", f"{key} (id {job_id}): never ran, still {state}")
            else:
                example("stuck", f"{key} (id {job_id}): {state} after {starts} run(s)")
        elif (state == "FAILURE" and isinstance(result.result, WorkerLostError)
              and (ends or not starts) and excuse(key, starts)):
            excused += 1        # the job its killed child was in: blamed rightly
        elif state == "FAILURE" and (ends or not starts):
            row.blamed += 1
            exc = result.result
            how = "completed" if ends else "never started"
            example("blamed", f"{key} (id {job_id}): FAILURE {type(exc).__name__} but it "
                              f"{how} ({starts} start(s), {ends} end(s))")
        elif state == "FAILURE" and not isinstance(result.result, WorkerLostError):
            row.blamed += 1
            example("blamed", f"{key} (id {job_id}): FAILURE {result.result!r}")
        elif state == "SUCCESS" and not ends:
            row.blamed += 1
            example("blamed", f"{key} (id {job_id}): SUCCESS with no completed run "
                              f"({starts} start(s))")
        elif state == "SUCCESS" and result.result != key:
            row.blamed += 1
            example("blamed", f"{key} (id {job_id}): SUCCESS with the result "
                              f"{result.result!r}")
        elif state == "REVOKED":
            row.blamed += 1
            example("blamed", f"{key} (id {job_id}): REVOKED, and nothing revoked it")
    app.close()
    if excused:
        lab.notes.append(f"{excused} WorkerLostError(s) on the job a killed child was in, "
                         f"killed just before its body logged its start or just after it "
                         f"logged its end (rightly blamed)")

    totals = status_totals(lab.db)
    row.jobs = sum(totals.values())
    row.stuck = sum(totals.get(s, 0) for s in NOT_FINAL)
    row.integrity = integrity(lab.db)
    row.faults = crash_runs if lab.count_crashes else lab.faults
    row.exits = len(lab.exits)

    row.notes.extend(lab.notes)
    row.notes.extend(f"exit: {e}" for e in lab.exits[:5])
    if len(lab.exits) > 5:
        row.notes.append(f"exit: ... and {len(lab.exits) - 5} more")
    row.notes.extend(f"problem: {p}" for p in lab.problems)
    row.notes.extend(worker_log_summary(lab))
    for kind, texts in examples.items():
        row.notes.extend(f"{kind}: {t}" for t in texts)
    if row.stuck:
        row.notes.append("stuck by state: " + ", ".join(
            f"{s} {totals.get(s, 0)}" for s in NOT_FINAL if totals.get(s)))
    row.notes.append(f"{len(ids)} job(s) sent with an id known, {len(runs)} ran at least once")
    if lab.kills:
        per_kill = [(label, sum(redone_in[str(pid)] for pid in pids))
                    for label, pids in lab.kills]
        row.notes.append("finished jobs that ran again, per kill: " + "; ".join(
            f"{label}: {n}" for label, n in per_kill))
        for kind in sorted({label.split(" ")[0] for label, _ in per_kill}):
            counts = [n for label, n in per_kill if label.split(" ")[0] == kind]
            row.notes.append(f"  {kind}: mean {sum(counts) / len(counts):.0f} per kill, "
                             f"max {max(counts)}, over {len(counts)} kill(s)")

    for key in lab.once:
        ends = sum(1 for _, what in runs.get(key, []) if what == "end")
        if ends != 1:
            lab.problems.append(f"{key} completed {ends} time(s), not once")
            row.notes.append(f"problem: {key} completed {ends} time(s), not once")

    failures = []
    if row.exits:
        failures.append("exits")
    if row.lost or row.stuck:
        failures.append("lost/stuck")
    if row.blamed:
        failures.append("blamed")
    if row.integrity != "ok":
        failures.append("integrity")
    if lab.problems:
        failures.append("problems")
    if not lab.reruns_allowed and (row.rerun_finished or row.rerun_running):
        failures.append("ran twice")
    row.verdict = "FAIL: " + ", ".join(failures) if failures else "OK"
    return row


def worker_log_summary(lab: Lab) -> list[str]:
    """The workers' WARNING and ERROR lines, counted by their first words (numbers and
    ids blanked), so that what the workers saw is in the notes."""
    kinds: Counter[str] = Counter()
    for proc in lab.procs:
        if proc.kind != "worker":
            continue
        for line in read_lines(proc.log_path):
            match = re.match(r"\[[^]]*: (WARNING|ERROR)/[^]]*\] (.*)", line)
            if match:
                text = re.sub(r"\d+", "N", re.sub(r"\[[^]]*\]", "[...]", match[2]))
                kinds[f"{match[1]} {text[:90]}"] += 1
    return [f"worker log: {n} x {text}" for text, n in kinds.most_common(6)]


def read_lines(path: str) -> list[str]:
    try:
        with open(path, errors="replace") as f:
            return f.read().splitlines()
    except FileNotFoundError:
        return []


def status_totals(db: str) -> dict[str, int]:
    """Jobs by state, from ``python -m localq status --db`` (its "jobs" line)."""
    env = dict(os.environ, PYTHONPATH=c.ROOT)
    env.pop("LOCALQ_DB", None)
    out = subprocess.run([sys.executable, "-m", "localq", "status", "--db", db], env=env,
                         capture_output=True, text=True, timeout=120)
    for line in out.stdout.splitlines():
        if line.startswith("jobs "):
            return {state.upper(): int(n) for state, n in re.findall(r"(\w+) (\d+)", line)}
    raise RuntimeError(f"no jobs line in `localq status` (exit {out.returncode}): "
                       f"{out.stdout[-300:]} {out.stderr[-300:]}")


def integrity(db: str) -> str:
    ro = c.read_only(db)
    try:
        rows = [r[0] for r in ro.execute("PRAGMA integrity_check").fetchall()]
    except sqlite3.Error as exc:
        return f"error: {exc}"
    finally:
        ro.close()
    return "ok" if rows == ["ok"] else "; ".join(rows)[:80]


# ------------------------------------------------------------------ scenarios

def kill_supervisor(lab: Lab) -> None:
    """One producer sends 5,000 jobs/s. Kills alternate between two moments: while a
    backlog drains (no worker ran for most of a second, then the new one is killed
    within 50 ms of registering), and while the worker keeps up with the producer
    (killed 0.3-0.8 s after it registered). Each kill is labelled by the jobs waiting
    or claimed at that moment: a backlog from 500 up (keeping up with 5,000/s, a few
    dozen are claimed at any time)."""
    lab.start_producer(rate=5000)
    for k in range(4 if lab.quick else 10):
        backlog = k % 2 == 0
        lab.wait(lab.rng.uniform(0.8, 1.2) if backlog else lab.rng.uniform(0.05, 0.2))
        worker = lab.start_worker()
        lab.wait_registered(worker)
        lab.wait(lab.rng.uniform(0.0, 0.05) if backlog else lab.rng.uniform(0.3, 0.8))
        waiting = lab.count("state IN ('PENDING', 'STARTED')")
        label = (f"{'backlog' if waiting >= 500 else 'streaming'} ({waiting:,} waiting or "
                 f"claimed)")
        if lab.kill9(worker, label):
            lab.faults += 1


def kill_child(lab: Lab) -> None:
    lab.wait_registered(lab.start_worker())
    lab.start_producer(sleep_every=10, sleep=0.002)
    for _ in range(5 if lab.quick else 25):
        lab.wait(lab.rng.uniform(0.1, 0.4))
        workers = lab.alive()
        kids = sorted(c.live_children(workers[0].pid)) if workers else []
        if kids:
            victim = lab.rng.choice(kids)
            try:
                os.kill(victim, signal.SIGKILL)
            except ProcessLookupError:
                continue
            lab.faults += 1
            lab.kills.append(("child", {victim}))


def kill_producer(lab: Lab) -> None:
    lab.wait_registered(lab.start_worker())
    for _ in range(4 if lab.quick else 15):
        producer = lab.start_producer()
        sending = lab.wait_until(lambda: os.path.exists(producer.ids_path) and
                                 os.path.getsize(producer.ids_path) > 0, 30)
        if not sending:
            raise RuntimeError(f"producer {producer.pid} sent nothing in 30 s: "
                               f"{producer.last_line()}")
        lab.wait(lab.rng.uniform(0.0, 0.3))
        if lab.kill9(producer):
            lab.faults += 1


def _stops(lab: Lab, count: int) -> Iterator[tuple[int, Proc, list[Proc]]]:
    """Two workers and a producer, with a small worker_lost_after; yields (number, the
    worker to stop, both workers) for each stop, and lets the victim wake up after."""
    lost = lab.lost_after = 2.0 if lab.quick else 3.0
    workers = [lab.start_worker(), lab.start_worker()]
    lab.wait_registered(*workers)
    lab.start_producer()
    lab.notes.append(f"worker_lost_after={lost:.0f} s (heartbeat every {lost / 4:.2f} s)")
    for k in range(count):
        alive = lab.alive()
        if len(alive) < 2:
            raise RuntimeError("fewer than two workers alive")
        lab.wait(lab.rng.uniform(0.1, 0.5))
        yield k + 1, alive[k % 2], alive
        lab.wait(lost)        # it wakes up, finds itself presumed dead, registers again


def sigstop(lab: Lab) -> None:
    for k, victim, alive in _stops(lab, 1 if lab.quick else 4):
        # Stop it while it is busy: pause both workers (for less than worker_lost_after)
        # so that a backlog builds, and stop the victim while they drain it.
        for worker in alive:
            worker.signal_group(signal.SIGSTOP)
        lab.wait((lab.lost_after or 0) / 4)
        for worker in alive:
            worker.signal_group(signal.SIGCONT)
        lab.wait(lab.rng.uniform(0.0, 0.1))
        victim.signal_group(signal.SIGSTOP)
        lab.faults += 1
        t0 = time.monotonic()
        presumed = lab.wait_until(lambda: not lab.registered(victim),
                                  (lab.lost_after or 0) + RECOVERY_EVERY + 5)
        stopped = time.monotonic() - t0
        why = "" if presumed else (
            ", never presumed dead" + (" (it held the write lock: nobody could write)"
                                       if lab.write_lock_taken() else ""))
        lab.wait(lab.rng.uniform(0.0, 0.3))
        victim.signal_group(signal.SIGCONT)
        lab.notes.append(f"stop {k}: worker {victim.pid} stopped {stopped:.1f} s{why}")


def sigstop_in_write(lab: Lab) -> None:
    """The same pause, landing while the worker holds the write lock (in a transaction
    that claims jobs and writes outcomes): everyone else waits for it, so the other
    worker can presume it dead only once it wakes up. The harness stops it for 0.1 s
    at a time until a probe finds the lock held through the stop, then keeps it
    stopped past worker_lost_after and one recovery period."""
    for k, victim, _ in _stops(lab, 1 if lab.quick else 3):
        for tries in range(1, 301):
            victim.signal_group(signal.SIGSTOP)
            if lab.write_lock_taken(0.1):
                break
            victim.signal_group(signal.SIGCONT)
            lab.wait(lab.rng.uniform(0.005, 0.03))
        else:
            lab.notes.append(f"stop {k}: never caught worker {victim.pid} in a write "
                             f"({tries} tries)")
            continue
        lab.faults += 1
        lab.wait((lab.lost_after or 0) + RECOVERY_EVERY + lab.rng.uniform(0.5, 1.5))
        victim.signal_group(signal.SIGCONT)
        lab.notes.append(f"stop {k}: worker {victim.pid} stopped holding the write lock "
                         f"(try {tries})")


def many_workers(lab: Lab) -> None:
    workers = [lab.start_worker(1) for _ in range(3)]
    lab.wait_registered(*workers)
    lab.start_producer(sleep_every=20, sleep=0.001)
    lab.start_producer()
    lab.reruns_allowed = False
    restarts = 1 if lab.quick else 3
    step = (3.0 if lab.quick else 15.0) / (restarts + 1)
    for k in range(restarts):
        lab.wait(step)
        alive = lab.alive()
        if alive:
            lab.stop(alive[k % len(alive)])
            lab.faults += 1
            lab.wait_registered(lab.start_worker(1))
    lab.wait(step)
    lab.notes.append("faults here are warm restarts (SIGTERM, then a new worker): "
                     "no job may run twice")


def child_crash(lab: Lab) -> None:
    every = 200 if lab.quick else 500
    lab.count_crashes = True
    lab.wait_registered(lab.start_worker())
    lab.start_producer(crash_every=every)
    lab.wait(2.5 if lab.quick else 15.0)
    lab.notes.append(f"every {every}th job calls os._exit(1) in its child, on every run; "
                     f"faults = those runs")


def full_disk(lab: Lab) -> None:
    if os.geteuid() != 0:
        raise Skip("not root: mounting a tmpfs needs root")
    mnt = os.path.join(lab.dir, "disk")
    os.mkdir(mnt, 0o700)
    try:
        out = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={MOUNT_SIZE},mode=0700",
                              "tmpfs", mnt], capture_output=True, text=True)
    except OSError as exc:
        raise Skip(f"cannot run mount: {exc}") from None
    if out.returncode != 0:
        raise Skip(f"mount -t tmpfs failed: {(out.stderr or out.stdout).strip()}")
    lab.mounted = mnt
    lab.db = os.path.join(mnt, "chaos.db")      # the run log stays on the real disk
    lab.wait_registered(lab.start_worker())
    lab.start_producer(pad=1000, rate=2000)     # ~2 MB/s of rows: fills 512 KiB at once
    hold = 1.5 if lab.quick else 5.0
    for k in range(1 if lab.quick else 3):
        lab.wait(0.5)
        ballast = os.path.join(mnt, f"ballast-{k}")
        _fill(ballast, _free(mnt) - 512 * 1024)
        full = lab.wait_until(lambda: _free(mnt) < 128 * 1024, 30)
        if not full:
            lab.notes.append(f"round {k + 1}: the disk never filled ({_free(mnt)} B free)")
        else:
            lab.faults += 1
            lab.keep_alive = False      # a worker that dies now is replaced once there is room
            lab.wait(hold)
        os.unlink(ballast)
        lab.keep_alive = True
        lab.watch()
        lab.wait(0.5)
    lab.notes.append(f"tmpfs of {MOUNT_SIZE}, filled with a ballast file, held full "
                     f"{hold} s, then freed; {_free(mnt) / 2**20:.0f} MiB free at the end")


def _free(path: str) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _fill(path: str, size: int) -> None:
    chunk = b"\0" * (1 << 20)
    with open(path, "wb") as f:
        try:
            while size > 0:
                f.write(chunk[:size])
                size -= len(chunk)
        except OSError:
            pass        # the database grew meanwhile: the disk is full already


def write_lock(lab: Lab) -> None:
    window = BUSY_TIMEOUT_MS / 1000
    hold = 3.0 if lab.quick else window + 5
    lab.wait_registered(lab.start_worker())
    lab.start_producer()
    lab.wait(0.5)
    locker = lab.start_locker(hold)
    locked = lab.wait_until(lambda: "locked" in locker.last_line() or not locker.alive(), 60)
    if locked and locker.alive():
        lab.faults += 1
    lab.wait_until(lambda: not locker.alive(), hold + 60)
    if locker.popen.returncode:
        lab.problems.append(f"the lock holder failed: {locker.last_line()}")
    lab.wait(0.5)
    note = (f"write lock held {hold:.0f} s by another connection; the writers' retry window "
            f"is {window:.0f} s (BUSY_TIMEOUT_MS in localq/store/schema.py, not a setting)")
    if hold < window:
        note += ("; --quick holds it for less than the window: it checks that writers wait, "
                 "not what happens when they give up (run without --quick for that)")
    lab.notes.append(note)


def kill_chord(lab: Lab) -> None:
    """A chord of 2,000 header jobs (quick: 500) and a body; kill -9 of the worker at
    random points while the header runs, a new worker each time. The body must run
    exactly once, with every header's result in header order (it checks, and fails
    otherwise); no kill lands once the header is nearly done, so that the body's own
    re-run window (the README's, for any job) is not what this measures."""
    import chaos_tasks

    from localq import chord
    n = 500 if lab.quick else 2000
    chaos_tasks.app.path = lab.db
    lab.wait_registered(lab.start_worker())
    res = chord((chaos_tasks.work.s(f"h{i}", 0.003) for i in range(n)),
                chaos_tasks.chord_body.s("body", "h", n)).apply_async()
    lab.sent.update((f"h{i}", r.id) for i, r in enumerate(res.parent.results))
    lab.sent["body"] = res.id
    lab.once.append("body")
    chaos_tasks.app.close()
    for _ in range(3 if lab.quick else 8):
        lab.wait(lab.rng.uniform(0.05, 0.3))
        if lab.count("state = 'SUCCESS' AND task = 'chaos.work'") > n - 200:
            break
        workers = lab.alive()
        if workers and lab.kill9(workers[0], "chord header"):
            lab.faults += 1
        lab.wait_registered(lab.start_worker())


SCENARIOS: dict[str, Callable[[Lab], None]] = {
    "kill-supervisor": kill_supervisor,
    "kill-child": kill_child,
    "kill-producer": kill_producer,
    "sigstop": sigstop,
    "sigstop-in-write": sigstop_in_write,
    "many-workers": many_workers,
    "child-crash": child_crash,
    "full-disk": full_disk,
    "write-lock": write_lock,
    "kill-chord": kill_chord,
}


# ------------------------------------------------------------------ running

def run_scenario(name: str, root: str, quick: bool, seed: int) -> Row:
    lab = Lab(name, root, quick, seed)
    t0 = time.monotonic()
    try:
        SCENARIOS[name](lab)
        lab.drain()
        row = verify(lab)
    except Skip as why:
        row = Row(name, verdict="SKIPPED", notes=[f"skipped: {why}"])
    except Exception as exc:
        traceback.print_exc()
        row = Row(name, verdict="FAIL: harness error",
                  notes=[f"harness error: {type(exc).__name__}: {exc}",
                         *lab.notes, *lab.exits, *lab.problems])
    finally:
        lab.cleanup()
    if lab.problems and row.verdict == "OK":      # found during cleanup
        row.verdict = "FAIL: problems"
        row.notes.extend(f"problem: {p}" for p in lab.problems)
    row.notes.append(f"took {time.monotonic() - t0:.1f} s")
    return row


HEADER = ("scenario", "jobs", "faults", "exits", "lost", "stuck", "rerun:running",
          "rerun:finished", "blamed", "integrity", "verdict")


def cells(row: Row) -> tuple[str, ...]:
    if row.verdict == "SKIPPED":
        return (row.scenario, *["-"] * 9, row.verdict)
    return (row.scenario, f"{row.jobs:,}", str(row.faults), str(row.exits), str(row.lost),
            str(row.stuck), str(row.rerun_running), str(row.rerun_finished), str(row.blamed),
            row.integrity, row.verdict)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small runs, for CI (< 1 min)")
    parser.add_argument("--scenario", action="append", choices=list(SCENARIOS),
                        metavar="NAME", help="run only this scenario (repeatable): "
                        + ", ".join(SCENARIOS))
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary folder (logs of every process, the run "
                        "logs, the databases but the full-disk one) and print its path")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed of the random fault points (default: from the clock)")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else int(time.time()) % 100000
    names = list(dict.fromkeys(args.scenario or SCENARIOS))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))   # run the finally blocks
    root = tempfile.mkdtemp(prefix="chaos-")
    if len(root) > 40:              # keep <db>.d/ doorbells inside it (sun_path is short)
        os.rmdir(root)
        root = tempfile.mkdtemp(prefix="chaos-", dir="/tmp")
    print(f"chaos: {'quick' if args.quick else 'full'} run of {', '.join(names)}; seed {seed}; "
          f"{c.machine()}; {c.git_commit('commit ')}; in {root}", flush=True)
    rows: list[Row] = []
    t0 = time.monotonic()
    try:
        for name in names:
            print(f"... {name}", file=sys.stderr, flush=True)
            row = run_scenario(name, root, args.quick, seed + list(SCENARIOS).index(name))
            rows.append(row)
            print(f"\n{name}: {row.verdict}\n" + "".join(f"  {n}\n" for n in row.notes),
                  flush=True)
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    print("\n".join(["", *c.table([HEADER, *map(cells, rows)])]))
    print(f"\nrerun:running = jobs run again after a run cut short by the fault (at-least-once);"
          f"\nrerun:finished = jobs run again although a run had completed before the fault."
          f"\nseed {seed}; total {time.monotonic() - t0:.1f} s")
    failed = [r.scenario for r in rows if r.verdict.startswith("FAIL")]
    if failed:
        print(f"FAILED: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
