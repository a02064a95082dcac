"""What a worker tells the monitoring tools, written with its heartbeat.

The supervisor notes each outcome it takes from a child (``Tally.note``: one dict
update) and, with each heartbeat, hands ``Tally.report`` to the store: outcomes
per second (the dashboard's throughput chart), per task and state and runtime
bucket (``/metrics``), its processed and failed totals, and what each child is
running (pid, task, since when, resident memory). Counting here rather than
reading the jobs table later keeps the dashboard's reads small whatever the
table's size: nothing of it is ever scanned for a chart or a counter.
"""
from __future__ import annotations

import os
import time
from bisect import bisect_left
from typing import TYPE_CHECKING, Any, Iterable

from ..store.monitor import RUNTIME_BUCKETS

if TYPE_CHECKING:
    from ..store.records import Outcome
    from .pool import Child

_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes(pid: int) -> int | None:
    """A process's resident memory in bytes (None when it is gone)."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return None


class Tally:
    """Outcomes counted since the last report."""

    __slots__ = ("counts", "processed", "failed", "_reported")

    def __init__(self) -> None:
        # (task, state, second, runtime bucket) -> [outcomes, their runtime in seconds]
        self.counts: dict[tuple[str, str, int, int], list] = {}
        self.processed = 0
        self.failed = 0
        self._reported: tuple[dict, int, int] | None = None

    def note(self, task: str, o: Outcome) -> None:
        if o.state == "PENDING":           # put back, not run: not an outcome
            return
        runtime = o.ended - (o.started or o.ended)
        key = (task, o.state, int(o.ended), bisect_left(RUNTIME_BUCKETS, runtime))
        entry = self.counts.get(key)
        if entry is None:
            self.counts[key] = [1, runtime]
        else:
            entry[0] += 1
            entry[1] += runtime

    def report(self, children: Iterable[Child]) -> dict[str, Any]:
        """What to write with this heartbeat. The counts start again from zero only
        once it is written (``written()``): a heartbeat that fails loses nothing."""
        counts = self.counts
        processed, failed = self.processed, self.failed
        seconds: dict[int, list[int]] = {}
        totals: dict[tuple[str, str], float] = {}
        column = {"SUCCESS": 0, "FAILURE": 1, "RETRY": 2}
        for (task, state, second, bucket), (n, runtime) in counts.items():
            if state in column:
                seconds.setdefault(second, [0, 0, 0])[column[state]] += n
            # Every attempt that ran counts in the runtime histogram (le: one bucket's
            # own count; /metrics sums them up as Prometheus's cumulative buckets).
            le = f"le:{RUNTIME_BUCKETS[bucket]}" if bucket < len(RUNTIME_BUCKETS) else "le:+Inf"
            for kind, add in ((state, n), (le, n), ("runtime_sum", runtime)):
                totals[(task, kind)] = totals.get((task, kind), 0) + add
            if state != "RETRY":
                processed += n
            if state == "FAILURE":
                failed += n
        mono, now = time.monotonic(), time.time()
        kids = []
        for child in children:
            head = child.running() if child.running_seq() else None
            kids.append({"pid": child.pid, "rss": rss_bytes(child.pid),
                         "task": head.job.task if head else None,
                         "id": head.job.id if head else None,
                         "since": now - (mono - child.running_since()) if head else None})
        self._reported = (counts, processed, failed)
        return {"seconds": sorted((s, *c) for s, c in seconds.items()),
                "totals": sorted((t, k, n) for (t, k), n in totals.items()),
                "processed": processed, "failed": failed, "children": kids}

    def written(self) -> None:
        """The last report is in the file: count from zero again."""
        if self._reported is not None:
            counts, self.processed, self.failed = self._reported
            if counts is self.counts:
                self.counts = {}
            self._reported = None
