"""Optional profiling of the supervisor and children, for benchmarks/.

With ``LOCALQ_PROFILE_DIR`` set, each process dumps a cProfile file there
(``supervisor-PID.prof``, ``child-PID.prof``). With ``LOCALQ_PROFILE_CPU=1``
as well, the profiles count CPU time of the thread instead of wall time, so
that time spent descheduled on a busy host does not show up as work.
"""
from __future__ import annotations

import os
import time
from typing import Any, Callable


def run_profiled(kind: str, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)``, profiled into LOCALQ_PROFILE_DIR/<kind>-<pid>.prof when that is set."""
    folder = os.environ.get("LOCALQ_PROFILE_DIR")
    if not folder:
        return fn(*args)
    import cProfile
    profiler = cProfile.Profile(time.thread_time) if os.environ.get("LOCALQ_PROFILE_CPU") \
        else cProfile.Profile()
    try:
        return profiler.runcall(fn, *args)
    finally:
        profiler.dump_stats(os.path.join(folder, f"{kind}-{os.getpid()}.prof"))
