"""The app, task and producer of benchmarks/chaos.py (the fault harness).

The worker imports it as ``chaos_tasks:app``; producers run it as
``python -m chaos_tasks produce ...``. Configured from the environment:

- ``LOCALQ_DB``: the database (``Localq()`` with no path reads it);
- ``CHAOS_LOG``: the run log, outside the database. Every run of a job appends
  ``KEY PID start`` when it begins and ``KEY PID end`` when it has finished its
  work, each line one ``write()`` to a file opened with O_APPEND (atomic), so
  the harness can count how many times each job ran, and how many of those
  runs completed, whatever the database says;
- ``CHAOS_LOST_AFTER``: ``worker_lost_after`` in seconds (the heartbeat is set
  to a quarter of it); unset keeps localq's defaults.

A job is ``work(key, sleep, crash, pad)``: ``crash`` makes its child call
``os._exit(1)`` after the start line, on every run (so a crash job can never
complete; its keys end in ``c``); ``pad`` is ballast that makes the row bigger.
"""
from __future__ import annotations

import os
import signal
import sys
import time

from localq import DatabaseError, Localq

app = Localq()
if os.environ.get("CHAOS_LOST_AFTER"):
    _lost = float(os.environ["CHAOS_LOST_AFTER"])
    app.conf.update(worker_lost_after=_lost, worker_heartbeat_interval=_lost / 4)

_log_fd: int | None = None
_log_pid = 0


def log_run(key: str, what: str) -> None:
    """Append one line to the run log (one write, O_APPEND; the fd is per process)."""
    global _log_fd, _log_pid
    pid = os.getpid()
    if _log_fd is None or _log_pid != pid:
        _log_fd = os.open(os.environ["CHAOS_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT,
                          0o600)
        _log_pid = pid
    os.write(_log_fd, f"{key} {pid} {what}\n".encode())


@app.task(name="chaos.work")
def work(key: str, sleep: float = 0.0, crash: bool = False, pad: str = "") -> str:
    log_run(key, "start")
    if crash:
        os._exit(1)                  # the child dies with this job running
    if sleep:
        time.sleep(sleep)
    log_run(key, "end")
    return key


@app.task(name="chaos.chord_body")
def chord_body(results: list, key: str, prefix: str, count: int) -> str:
    """A chord's body (the kill-chord scenario): every header result, in order."""
    log_run(key, "start")
    expected = [f"{prefix}{i}" for i in range(count)]
    if results != expected:
        wrong = next(i for i, (a, b) in enumerate(zip(results, expected)) if a != b) \
            if len(results) == count else None
        raise ValueError(f"the body got {len(results)} results, not in header order "
                         f"(first wrong at {wrong})")
    log_run(key, "end")
    return key


def produce(prefix: str, ids_path: str, sleep_every: int, sleep: float, crash_every: int,
            pad: int, rate: float) -> None:
    """Send jobs one ``delay()`` at a time until SIGTERM, at ``rate`` jobs/s at most
    (0: as fast as it can). After each ``delay()`` returns,
    append ``KEY ID`` to ``ids_path`` (one write): the jobs this producer got ids for.
    A send that fails (a full disk, a lock held past the retry window) is reported on
    stderr and skipped: that job got no id, so it need not exist."""
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    fd = os.open(ids_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    ballast = "x" * pad
    failed = 0
    i = 0
    t0 = time.monotonic()
    while not stopping:
        i += 1
        if rate and i % 10 == 0 and (ahead := t0 + i / rate - time.monotonic()) > 0:
            time.sleep(ahead)
        crash = bool(crash_every) and i % crash_every == 0
        key = f"{prefix}{i}{'c' if crash else ''}"
        args: tuple = (key,)
        if crash or pad:
            args = (key, 0.0, crash, ballast)
        elif sleep_every and i % sleep_every == 0:
            args = (key, sleep)
        try:
            job_id = work.delay(*args).id
        except DatabaseError as exc:
            failed += 1
            if failed <= 3 or failed % 100 == 0:
                print(f"producer {prefix}: send {failed} failed: {exc}", file=sys.stderr,
                      flush=True)
            time.sleep(0.02)
            continue
        os.write(fd, f"{key} {job_id}\n".encode())
    os.close(fd)
    app.close()


if __name__ == "__main__":
    # Run as a script, this file is __main__; use the module's own task and app.
    import chaos_tasks

    if len(sys.argv) != 9 or sys.argv[1] != "produce":
        sys.exit("usage: python -m chaos_tasks produce PREFIX IDS_FILE SLEEP_EVERY SLEEP "
                 "CRASH_EVERY PAD RATE")
    chaos_tasks.produce(sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5]),
                        int(sys.argv[6]), int(sys.argv[7]), float(sys.argv[8]))
