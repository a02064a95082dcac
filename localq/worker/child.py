"""The child loop: take a batch of jobs from the channel, run them, report.

A child never opens the database; it only talks to its supervisor over its
own channel. It sends outcomes in batches while jobs are fast (so that short
tasks cost one message per batch, not one per job), and flushes before any
job that is slow, unknown, or time-limited, so that the supervisor always
knows which job is running: the first one it has no outcome for. It also
writes the seq of the job it is running into a slot of memory shared with the
supervisor (0 between jobs), so that a crash is blamed on the right job.

Its messages (jobs in, outcomes and its exit out) are protocol.py's.
"""
from __future__ import annotations

import ctypes
import mmap
import os
import signal
import sys
import time
from typing import TYPE_CHECKING, Any, Callable

from ..ids import format_id
from ..log import log, log_outcome, now_running, per_job_lines
from ..profiling import run_profiled
from ..signals import worker_process_init, worker_process_shutdown
from . import execute as execute_module
from . import protocol
from .execute import LimitCache, execute, install_soft_limit_handler, revoked_outcome
from .protocol import FIRST_SKIP, RUNNING, SKIPS

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

    from .options import WorkerApp

FAST = 0.0005          # a task averaging under this many seconds is batched
FLUSH_AFTER = 0.002    # never hold an outcome longer than this between fast jobs
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def die_with_parent() -> None:
    """Ask Linux to kill this process when its parent dies (best effort)."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG
        except Exception:
            pass


def resident_kib() -> int:
    """Current resident memory of this process in KiB (not the peak)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE // 1024
    except OSError:
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _sigterm_handler(words: memoryview) -> Callable[[int, Any], None]:
    """SIGTERM ends the child only when its supervisor asked (the slot's STOP_ASKED): one
    sent to the whole process group (systemd's default KillMode, `timeout`, a kill of
    the group) is the supervisor's to handle, with a warm shutdown that lets the running
    job finish. A task stuck in C code past the grace is killed with SIGKILL anyway."""
    def on_sigterm(signum: int, frame: Any) -> None:
        if words[protocol.STOP_ASKED]:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
    return on_sigterm


def child_main(app: WorkerApp, conn: Connection, slot: mmap.mmap, max_tasks: int | None,
               max_memory_kib: int | None) -> None:
    """Run jobs until told to stop or recycled. Called in a fresh fork; never returns."""
    code = 0
    try:
        die_with_parent()
        words = protocol.slot_words(slot)
        signal.signal(signal.SIGINT, signal.SIG_IGN)      # Ctrl-C is for the supervisor
        signal.signal(signal.SIGTERM, _sigterm_handler(words))
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        install_soft_limit_handler()
        execute_module.channel[0] = conn
        worker_process_init.send(None)
        run_profiled("child", _loop, app, conn, words, max_tasks, max_memory_kib)
    except BaseException:    # noqa: BLE001 - a child must never unwind into the caller
        code = 1
        try:
            import traceback
            traceback.print_exc()
        except BaseException:
            pass
    finally:
        try:
            worker_process_shutdown.send(None, pid=os.getpid(), exitcode=code)
            sys.stdout.flush()
            sys.stderr.flush()
        except BaseException:
            pass
        os._exit(code)   # never run the parent's atexit handlers or finalizers


def _loop(app: WorkerApp, conn: Connection, running: memoryview, max_tasks: int | None,
          max_memory_kib: int | None) -> None:
    pid = os.getpid()
    speed: dict[str, float] = {}     # task name -> moving average of its duration
    limits = LimitCache(app)
    done = 0
    while True:
        try:
            batch = conn.recv()
        except (EOFError, OSError):
            return                   # the supervisor is gone
        if batch is protocol.STOP:
            return                   # warm shutdown: nothing more is coming
        buffered: list[Any] = []
        first_buffered = 0.0
        info = per_job_lines()           # once per batch: nothing per job when off
        # protocol.ChildJob's fields, unpacked (cheaper than attribute access per job)
        for index, (seq, job_id, task_name, serializer, payload, options, retries) in \
                enumerate(batch):
            opts, soft, hard = limits.get(task_name, options)
            if buffered and (hard or soft or speed.get(task_name, 1.0) > FAST):
                protocol.send(conn, protocol.outcomes_message(buffered))
                buffered = []
            job_id = job_id or format_id(seq)
            if info:
                log.info("Task %s[%s] received", task_name, job_id)
            now_running(task_name, job_id)
            t0 = time.perf_counter()
            running[RUNNING] = seq
            skips = running[SKIPS]
            if skips and seq in running[FIRST_SKIP:FIRST_SKIP + skips]:   # revoked meanwhile
                outcome = revoked_outcome(seq, serializer, "revoked", time.time(), pid)
            else:
                outcome = execute(app, seq, job_id, task_name, serializer,
                                  payload, opts, retries, pid, soft)
            running[RUNNING] = 0
            elapsed = time.perf_counter() - t0
            now_running(None, None)
            if info:
                log_outcome(outcome, task_name, job_id,
                            app.conf.result_serializer or serializer)
            speed[task_name] = 0.7 * speed.get(task_name, elapsed) + 0.3 * elapsed
            if not buffered:
                first_buffered = t0 + elapsed
            buffered.append(outcome)
            done += 1
            reason = None
            if max_tasks and done >= max_tasks:
                reason = f"max_tasks_per_child={max_tasks} reached"
            elif max_memory_kib and resident_kib() > max_memory_kib:
                reason = f"resident memory {resident_kib()} KiB > max_memory_per_child"
            if reason:
                # One message, so the supervisor learns of the outcomes and of the exit
                # together and never hands this child more work in between.
                protocol.send(conn, protocol.exit_message(
                    reason, [job[0] for job in batch[index + 1:]], buffered))
                return
            if time.perf_counter() - first_buffered > FLUSH_AFTER:
                protocol.send(conn, protocol.outcomes_message(buffered))
                buffered = []
        if buffered:
            protocol.send(conn, protocol.outcomes_message(buffered))
