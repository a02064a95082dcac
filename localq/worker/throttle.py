"""Flow control at claim time: global rate limits and per-task concurrency caps.

Runs inside the supervisor's claim transaction, so that every worker on the
file shares one token bucket per task (kept in the ``rate_limits`` table) and
one count of running jobs per task: limits are global on the host, where
Celery's are per worker process.

Jobs of a task that is rate-limited or capped when it is sent go to their own
lane (``jobs.lane``); a deep backlog of throttled jobs then costs the claim of
other tasks nothing. A limit set only at run time (``app.control.rate_limit``)
on a task that was sent without one is honoured too: the main claim skips its
jobs, and they move to the task's lane when the main claim comes up short (or
on a periodic sweep), to be claimed against the bucket.

No throttled job waits for some other event to be claimed: the supervisor is
woken when the next token of an emptied bucket is due, and once more at the
next sweep after a claim that came up short. A run-time override stays in the
file until reset; ``limits_in_force`` says which limits hold and why (status).
"""
from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING

from ..limits import Rate, limits_of, next_token_at, parse_rate, refill
from ..status import age
from ..store import Claimed, Store, Transaction

if TYPE_CHECKING:
    from .options import WorkerApp
    from .timers import Now


log = logging.getLogger("localq.worker")

LANE_SWEEP = 3.0    # seconds between moves of runtime-throttled jobs into their lanes
# How far a bucket's time may lie ahead of a claim's clock before it counts as the clock
# going back: a claim reads the time, then may wait for the write lock while another
# worker's claim stores a later one.
CLOCK_SLACK = 1.0


class FlowControl:
    def __init__(self, app: WorkerApp, store: Store) -> None:
        self.app = app
        self.store = store
        self._refill_at: float | None = None
        self._declared_version: object = None
        self._next_sweep = 0.0
        self._has_overrides = False
        self._waiting_lanes: set[str] = set()
        self._declared: tuple[dict[str, Rate], dict[str, int], set[str]] = ({}, {}, set())
        self._warn_overrides()

    def _warn_overrides(self) -> None:
        """Say at the worker's start which run-time overrides, kept in the file, win
        over a rate limit of this app's code: they may be long forgotten."""
        now = time.time()
        for row in limits_of(self.app.tasks, self.store.rate_overrides()):
            if "replaces" not in row:
                continue                      # not an override, or not this app's task
            own = row["replaces"]
            if (own["value"] if own else None) == row["value"]:
                continue                      # the same as the code's
            log.warning("rate limit of %s: %s, set at run time %s ago, in place of %s; "
                        "reset: python -m localq rate-limit %s none", row["task"],
                        row["value"] or "no limit", age(now - (row["set"] or now)),
                        f"{own['value']} ({own['source']})" if own else "no limit", row["task"])

    def refresh(self) -> None:
        """A limit changed at run time: look at the overrides at the next claim."""
        self._next_sweep = 0.0

    # The supervisor's timer (timers.py), on the wall clock.

    def next_due(self, now: Now) -> float | None:
        """Wall-clock time at which a throttled task with waiting jobs gets a token, or
        a sweep is due after a claim that came up short."""
        return self._refill_at

    def run_due(self, now: Now) -> bool:
        """A token has dripped in (or a sweep is due) since the last claim: claim again
        (once; the claim sets the next wake-up, so a time in the past never becomes a
        busy loop)."""
        self._refill_at = None
        return True

    def claim(self, tx: Transaction, owner: int, queues: list[str], slots: int,
              now: float) -> list[Claimed]:
        declared, caps, lanes = self._declared_limits()
        sweep = now >= self._next_sweep
        if sweep:
            self._next_sweep = now + LANE_SWEEP
            self._has_overrides = tx.has_rate_overrides()
        # With nothing throttled anywhere, a claim is one statement: no bucket to read.
        buckets = tx.buckets() if declared or self._has_overrides else {}
        rates: dict[str, Rate] = {}
        for name in set(declared) | set(buckets):
            override = buckets.get(name, (None,))[0]
            rate = parse_rate(override) if override is not None else declared.get(name)
            if rate:
                rates[name] = rate
        throttled = set(rates) | set(caps)
        # A limit set only at run time, on a task sent without one: producers put its
        # jobs in the main order, which the main claim skips. They are moved to the
        # task's lane (and claimed from it against the bucket, below) as soon as the
        # main claim comes up short, when the only ready rows left in the main order
        # of these queues are theirs, so the move costs what it moves; and every
        # LANE_SWEEP while the main order stays busy, so that they are not starved.
        runtime_only = sorted(throttled - lanes)
        tx.release_due(now)
        claimed: list[Claimed] = []
        for queue in queues:
            if len(claimed) >= slots:
                break
            claimed += tx.claim(owner, queue, slots - len(claimed), now,
                                exclude=runtime_only)
        if runtime_only and (sweep or len(claimed) < slots):
            tx.move_to_lane(runtime_only, queues)
        if sweep:
            # Lanes with waiting jobs that this app does not throttle (a limit removed,
            # or jobs sent by a newer app): claimed like any other, so none is stranded.
            self._waiting_lanes = set(tx.waiting_lanes())
        # Came up short between sweeps: look once more at the next one (a claim, one
        # LANE_SWEEP after the last activity), for jobs that only a sweep finds: in a
        # lane this app does not throttle, or behind an override whose ring was lost.
        self._refill_at = None if sweep or len(claimed) >= slots else self._next_sweep
        names = throttled | lanes | self._waiting_lanes
        if not names:
            return claimed
        running = tx.running_counts(sorted(caps)) if caps else {}
        for name in sorted(names):
            allowance = slots - len(claimed)
            if allowance <= 0:
                break
            rate = rates.get(name)
            tokens = 0.0
            if rate:
                stored = buckets.get(name)
                tokens = rate.capacity if stored is None or not stored[2] else \
                    refill(stored[1], stored[2], now, rate)
                # The wall clock went back: the bucket would not refill until the clock
                # caught up with its time; restart that from now, tokens as they are.
                stepped_back = stored is not None and stored[2] > now + CLOCK_SLACK
                allowance = min(allowance, math.floor(tokens))
            if name in caps:
                allowance = min(allowance, caps[name] - running.get(name, 0))
            got: list[Claimed] = []
            if allowance > 0:
                for queue in queues:
                    if len(got) >= allowance:
                        break
                    got += tx.claim(owner, queue, allowance - len(got), now, lane=name)
                claimed += got
            if rate:
                tokens -= len(got)
                if got or stepped_back:   # refill() is a function of time: untouched
                    tx.save_bucket(name, tokens, now)   # buckets need no write
                # Jobs may still be waiting, held back by the empty bucket: wake when the
                # next token drips in. (Held back by the slots or a cap instead, they are
                # claimed when a job ends, which wakes the supervisor anyway.)
                if tokens < 1 and len(got) >= allowance:
                    at = next_token_at(tokens, now, rate)
                    self._refill_at = at if self._refill_at is None else min(self._refill_at, at)
        return claimed

    def _declared_limits(self) -> tuple[dict[str, Rate], dict[str, int], set[str]]:
        """Rate limits, caps and lanes the app declares; recomputed when settings change."""
        version = (self.app.conf.version, len(self.app.tasks))
        if version != self._declared_version:
            declared: dict[str, Rate] = {}
            caps: dict[str, int] = {}
            for name, task in self.app.tasks.items():
                rate = parse_rate(task.option("rate_limit"))
                cap = task.option("max_concurrency")
                if rate:
                    declared[name] = rate
                if cap:
                    caps[name] = int(cap)
            self._declared = (declared, caps, set(declared) | set(caps))
            self._declared_version = version
        return self._declared
