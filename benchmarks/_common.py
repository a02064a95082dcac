"""What the benchmark scripts in this folder share. Stdlib only; it measures nothing itself.

It owns:

- processes, read from /proc: ``proc_stat``, ``proc_children``, ``live_children``,
  ``proc_start``, ``proc_cpu_ticks``, ``all_cpu_ticks``, and ``stop_by_pid`` (stop a
  process, then check its children by pid and kill any that outlive it);
- the background load, the CPU other processes used during a run, two ways:
  per process (``all_cpu_ticks`` before, ``background_load_by_process`` after: for
  throughput.py and scale.py, whose work runs in CLI workers), or the whole machine
  minus this process and its reaped descendants (``cpu_now`` before,
  ``background_load`` after: for the embedded-worker scripts); one wording for both;
- the CLI worker subprocess (``Worker``: ``python -m localq worker --app benchtasks:app
  -c 2``) and ``TempBench``, a benchmark around such workers: a fresh temporary folder
  holding ``benchtasks.py``, fresh databases in it, phases that always stop their
  workers, the workers' WARNING lines, and the cleanup (workers and pools by pid, the
  client's doorbells, the folder);
- ``run_embedded``, the frame of the embedded-worker scripts (limits_bench.py,
  rate_bench.py): a temporary folder, a BenchError turned into an ERROR note, the apps
  and doorbells closed and the folder deleted at the end, the background load;
- reading results: ``read_only`` connections and ``count_wrong`` (SUCCESS rows of
  ``add(x, x)`` whose result is not 2x);
- reporting: ``show`` (a figure in its unit), ``percentile``, ``table``, ``target_line``,
  ``machine``, ``git_commit``, and ``add_json_option``, ``run_info`` and ``write_json``
  (the ``--json PATH`` files that benchmarks/all.py reads).
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable
from urllib.request import pathname2url

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)       # localq from this checkout, whatever else is installed

WORKERS = 2             # worker children of every CLI worker started here
CLK_TCK = os.sysconf("SC_CLK_TCK")
READY_POLL = 0.001      # the workers table is polled this often while a worker starts


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
    """Children of pid, by a scan of /proc (zombies included)."""
    kids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            fields = proc_stat(int(name))
            if fields and int(fields[1]) == pid:
                kids.append(int(name))
    return kids


def live_children(pid: int) -> set[int]:
    """Children of pid that are not zombies, from /proc/PID/task/PID/children (cheap
    enough to poll every half millisecond)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            pids = [int(p) for p in f.read().split()]
    except OSError:
        return set()
    return {p for p in pids if proc_start(p) is not None}


def proc_start(pid: int) -> str | None:
    """The kernel's start time of a live process (None when gone or a zombie)."""
    fields = proc_stat(pid)
    return fields[19] if fields and fields[0] not in ("Z", "X") else None


def proc_cpu_ticks(pid: int) -> int:
    fields = proc_stat(pid)
    return int(fields[11]) + int(fields[12]) if fields else 0


def all_cpu_ticks() -> dict[tuple[int, str], int]:
    """(pid, start time) -> user+sys ticks, for every process we can see."""
    out = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            fields = proc_stat(int(name))
            if fields:
                out[(int(name), fields[19])] = int(fields[11]) + int(fields[12])
    return out


def stop_by_pid(proc: subprocess.Popen, leftovers: list[int]) -> None:
    """Warm shutdown (SIGTERM), then by force; its children die with it: check that by
    pid, and SIGKILL (and note in ``leftovers``) any still there after 5 s."""
    if proc.returncode is not None:
        return
    kids = [(k, proc_start(k)) for k in proc_children(proc.pid)]
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait(15)
    deadline = time.monotonic() + 5
    for pid, start in kids:
        while start is not None and proc_start(pid) == start:
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                leftovers.append(pid)
                break
            time.sleep(0.01)


# ---------------------------------------------------------------- background load

def load_line(other: float, seconds: float) -> str:
    """The report line: ``other`` CPU-seconds used by other processes in ``seconds``."""
    cpus = os.cpu_count() or 1
    share = other / (seconds * cpus) * 100
    return (f"background: other processes used {other:.1f} CPU-s of {seconds * cpus:.0f} "
            f"({share:.0f} % of the machine) during the run"
            + ("; figures are noisy, run again on a quiet machine" if share > 5 else ""))


def background_load_by_process(before: dict[tuple[int, str], int], seconds: float) -> str:
    """CPU used meanwhile by processes that are not this one (ours are all stopped by
    now), from ``all_cpu_ticks()`` taken at the start: other load on the machine makes
    every figure noisier."""
    me = os.getpid()
    used = sum(ticks - before.get(key, 0) for key, ticks in all_cpu_ticks().items()
               if key[0] != me)
    return load_line(used / CLK_TCK, seconds)


def cpu_times() -> list[int]:
    """The machine's CPU time by kind (/proc/stat: user nice system idle iowait irq softirq
    steal ...), in clock ticks."""
    try:
        return [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return []


def cpu_now() -> tuple[int, float]:
    """(busy jiffies of the whole machine, CPU seconds of this process and its reaped
    descendants: the embedded supervisors and, through them, their children)."""
    fields = cpu_times()
    busy = sum(fields) - fields[3] - fields[4]      # minus idle and iowait
    t = os.times()
    return busy, t.user + t.system + t.children_user + t.children_system


def background_load(before: tuple[int, float], seconds: float) -> str:
    """The machine's busy time since ``cpu_now()`` was ``before``, minus ours."""
    after = cpu_now()
    machine = (after[0] - before[0]) / CLK_TCK
    return load_line(max(0.0, machine - (after[1] - before[1])), seconds)


# ---------------------------------------------------------------- databases

def read_only(path: str, timeout: float = 30) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{pathname2url(path)}?mode=ro", uri=True, timeout=timeout,
                           isolation_level=None, check_same_thread=False)


def count_wrong(ro: sqlite3.Connection) -> int:
    """SUCCESS rows of ``add(i, i)`` whose result is not 2 * i."""
    return ro.execute("SELECT count(*) FROM jobs WHERE state = 'SUCCESS' AND "
                      "CAST(result AS INTEGER) <> 2 * json_extract(payload, '$[0][0]')"
                      ).fetchone()[0]


def close_clients(*apps) -> None:
    """Close the apps' connections, then this process's get() doorbells."""
    for app in apps:
        app.close()
    try:
        from localq.result import close_bells
        close_bells()
    except Exception:
        pass


# ---------------------------------------------------------------- CLI workers

def bench_env(tmp: str, db: str) -> dict[str, str]:
    """The environment of a process that imports benchtasks from ``tmp`` on ``db``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([tmp, ROOT])
    env["LOCALQ_BENCH_DB"] = db
    return env


class Worker:
    """A CLI worker subprocess: `python -m localq worker --app benchtasks:app -c 2`."""

    def __init__(self, bench: TempBench, db: str, extra_env: dict[str, str] | None = None
                 ) -> None:
        """``bench`` needs only ``tmp`` (the folder with benchtasks.py) and ``workers`` (a
        list this worker joins)."""
        self.db = db
        self.log_path = os.path.join(bench.tmp, f"worker-{len(bench.workers)}.log")
        self.log = open(self.log_path, "wb")
        env = bench_env(bench.tmp, db)
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
        stop_by_pid(self.proc, self.leftovers)
        if not self.log.closed:
            self.log.close()

    def log_tail(self, lines: int = 20) -> str:
        self.log.flush()
        text = Path(self.log_path).read_text(errors="replace").strip().splitlines()
        return "\n".join(text[-lines:]) or "(no output)"

    def log_lines(self) -> list[str]:
        return Path(self.log_path).read_text(errors="replace").strip().splitlines()


class TempBench:
    """A benchmark around CLI workers: a fresh temporary folder with ``benchtasks.py`` (and
    any other ``files``) in it, importable here and by the workers; the workers started
    there (each appends itself to ``workers``); notes and errors for the report."""

    def __init__(self, prefix: str, files: dict[str, str]) -> None:
        self.tmp = tempfile.mkdtemp(prefix=prefix)
        if len(self.tmp) > 60:        # keep <db>.d/ bells inside it (sun_path is short)
            shutil.rmtree(self.tmp)
            self.tmp = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
        self.workers: list[Worker] = []
        self.pools: list = []         # multiprocessing pools, terminated at the end
        self.notes: list[str] = []
        self.errors: list[str] = []
        for name, text in files.items():
            Path(self.tmp, name).write_text(text)
        sys.path.insert(0, self.tmp)
        benchtasks = importlib.import_module("benchtasks")
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

    def phase_started(self, name: str) -> object:
        """Called before each phase; what it returns goes to ``phase_ended``."""
        return None

    def phase_ended(self, name: str, token: object, seconds: float) -> None:
        pass

    def run_phases(self, phases: list[tuple[str, Callable[[], None]]]) -> None:
        """Run each phase; an exception becomes an error of the report (with its traceback
        on stderr) and the next phase runs; every worker is stopped after each."""
        for name, phase in phases:
            t0 = time.perf_counter()
            token = self.phase_started(name)
            print(f"... {name}", file=sys.stderr, flush=True)
            try:
                phase()
            except Exception as exc:      # report, keep going, clean up at the end
                self.errors.append(f"{name}: {type(exc).__name__}: {exc}")
                traceback.print_exc()
            finally:
                for w in list(self.workers):
                    w.stop()
            seconds = time.perf_counter() - t0
            self.phase_ended(name, token, seconds)
            print(f"    {seconds:.1f}s", file=sys.stderr, flush=True)

    def check_log(self, worker: Worker) -> None:
        lines = worker.log_lines()
        if lines:
            self.notes.append(f"worker pid {worker.pid} logged {len(lines)} line(s) at WARNING "
                              f"or above; first: {lines[0][:160]}")

    def cleanup(self) -> None:
        for w in self.workers:
            try:
                w.stop()
            except Exception as exc:
                self.errors.append(f"stopping worker {w.pid}: {exc}")
        for pool in self.pools:
            pool.terminate()
            pool.join()
        close_clients(self.app)
        sys.path.remove(self.tmp)
        shutil.rmtree(self.tmp)


# ---------------------------------------------------------------- embedded workers

def run_embedded(prefix: str, make: Callable[[str], object], apps: list
                 ) -> tuple[object, float, str, int]:
    """Make a bench in a fresh temporary folder (``make(tmp)``) and run it: a BenchError
    becomes an ERROR note; at the end the ``apps`` and this process's doorbells are closed
    and the folder deleted. Returns (bench, wall seconds, background line, exit code)."""
    started = time.perf_counter()
    cpu0 = cpu_now()
    tmp = tempfile.mkdtemp(prefix=prefix)
    bench = make(tmp)
    code = 0
    try:
        bench.run()
    except BenchError as exc:
        bench.notes.append(f"ERROR {exc}")
        code = 1
    finally:
        close_clients(*apps)
        shutil.rmtree(tmp, ignore_errors=True)
    wall = time.perf_counter() - started
    return bench, wall, background_load(cpu0, wall), code


# ---------------------------------------------------------------- reporting

UNITS: dict[str, str | Callable[[float], str]] = {
    "rate": "{:,.0f}/s", "ms": "{:.2f} ms", "s": "{:.3f} s", "pct": "{:.2f} %",
    "ratio": "{:.2f}x", "bytes": "{:,.0f} B"}


def show(value: float | None, unit: str,
         units: dict[str, str | Callable[[float], str]] | None = None) -> str:
    """A figure in its unit: a format string or a function from ``units``, else from
    UNITS; "n/a" for None, the bare value for a unit neither knows."""
    if value is None:
        return "n/a"
    fmt = (units or {}).get(unit) or UNITS.get(unit)
    if fmt is None:
        return f"{value}"
    return fmt(value) if callable(fmt) else fmt.format(value)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def table(rows: list[tuple[str, ...]], note: bool = False) -> list[str]:
    """Aligned lines: the first column to the left, the others to the right, a rule under
    the first row. With ``note``, the last column is free text after the others."""
    cols = len(rows[0]) - (1 if note else 0)
    widths = [max(len(r[i]) for r in rows) for i in range(cols)]
    out = []
    for i, r in enumerate(rows):
        line = "  ".join(r[c].ljust(widths[c]) if c == 0 else r[c].rjust(widths[c])
                         for c in range(cols))
        if note and r[cols]:
            line += "  " + r[cols]
        out.append(line.rstrip())
        if i == 0:
            out.append("  ".join("-" * w for w in widths))
    return out


def verdict(ok: bool | None) -> str:
    return "FAILED TO MEASURE" if ok is None else "OK" if ok else "MISS"


def target_line(text: str, shown: str, ok: bool | None) -> str:
    return f"target {text}: {shown} {verdict(ok)}"


def machine() -> str:
    return f"Python {platform.python_version()}, {os.cpu_count()} CPUs"


def git_commit(prefix: str = "") -> str:
    """``prefix`` + the short commit of this checkout, "+dirty localq/" when localq/ has
    uncommitted changes."""
    try:
        out = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--", "localq"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return prefix + out.stdout.strip() + ("+dirty localq/" if dirty else "")
    except Exception:
        return "unknown commit"


def report_tail(notes: list[str], background: str, wall: float) -> list[str]:
    """The last lines of a report: its notes, the background load, the total time."""
    return [*notes, background, f"total {wall:.1f}s"]


def add_json_option(parser: argparse.ArgumentParser) -> None:
    """--json PATH, read by benchmarks/all.py."""
    parser.add_argument("--json", metavar="PATH", help="also save the figures as JSON here")


def json_path(args: argparse.Namespace) -> str | None:
    """The --json PATH made absolute (before anything changes the working folder)."""
    return os.path.abspath(args.json) if args.json else None


def run_info() -> dict:
    """The machine and the checkout, for a --json file."""
    return {"python": platform.python_version(), "cpus": os.cpu_count(),
            "commit": git_commit(), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def write_json(path: str, data: dict) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
