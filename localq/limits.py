"""Rate limits, concurrency caps and retry backoff: parsing, arithmetic, and which
limits are in force.

Used on both sides: producers choose a job's lane (``lane_for``), ``status``
lists the limits in force, and the worker's throttle (worker/throttle.py)
computes with the parsed rates; so this module lives beside the client API
and imports nothing of the worker.

A rate limit ``"N/s" | "N/m" | "N/h"`` (or a bare number, per second) becomes
a token bucket: it refills at N per period and holds at most ``capacity``
tokens, which is N for limits of 10 per second or less and a tenth of a
second's worth (never less than 10) above that, so that a fast limit starts
smoothly instead of in one big burst. The bucket's state lives in the
database (store/flow.py); this module only computes with it.
"""
from __future__ import annotations

import math
import random
import re
from typing import TYPE_CHECKING, Any, Iterable, Mapping, NamedTuple

from .exceptions import ConfigurationError

if TYPE_CHECKING:
    from .app import Localq
    from .task import Task

_PERIODS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_RATE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:/\s*([smh]))?\s*$")
RATE_FORMS = "'N/s', 'N/m', 'N/h' or a bare number N (per second), e.g. '100/s', '10/m'"


class Rate(NamedTuple):
    per_second: float   # refill rate, tokens per second
    capacity: float     # largest burst
    text: str           # the limit as written, normalised ("10/m")


def parse_rate(value: str | int | float | None, *, where: str = "rate_limit") -> Rate | None:
    """Parse a rate limit; ``None``, ``0`` and ``""`` mean no limit."""
    if value is None or value == "" or value == 0:
        return None
    if isinstance(value, bool):
        raise ConfigurationError(f"bad {where} {value!r}: use {RATE_FORMS}")
    if isinstance(value, (int, float)):
        text = f"{value:g}/s"
        count, period = float(value), 1.0
    else:
        match = _RATE_RE.match(str(value))
        if not match:
            raise ConfigurationError(f"bad {where} {value!r}: use {RATE_FORMS}")
        count = float(match.group(1))
        unit = match.group(2) or "s"
        period = _PERIODS[unit]
        text = f"{count:g}/{unit}"
    if count <= 0:
        return None
    if not math.isfinite(count):
        raise ConfigurationError(f"bad {where} {value!r}: use {RATE_FORMS}")
    per_second = count / period
    capacity = count if per_second <= 10 else max(10.0, per_second / 10)
    return Rate(per_second, min(capacity, count), text)


def refill(tokens: float, updated: float, now: float, rate: Rate) -> float:
    """Tokens in the bucket at ``now``, given ``tokens`` at ``updated``."""
    elapsed = max(0.0, now - updated)
    return min(rate.capacity, tokens + elapsed * rate.per_second)


def next_token_at(tokens: float, now: float, rate: Rate) -> float:
    """When the bucket next holds one whole token."""
    if tokens >= 1:
        return now
    return now + (1 - tokens) / rate.per_second


def backoff_countdown(retries: int, factor: float, maximum: float, jitter: bool,
                      rng: random.Random | None = None) -> float:
    """Celery's exponential backoff: ``factor * 2**retries``, capped, then jittered.

    With jitter the delay is drawn uniformly from ``[0, countdown]`` (full
    jitter), as Celery does, so that retries of many jobs spread out.
    """
    countdown = min(maximum, factor * (2 ** retries))
    if jitter:
        countdown = (rng or random).uniform(0, countdown)
    return max(0.0, countdown)


# ------------------------------------------------------------------ limits of an app

def lane_for(task: Task) -> str | None:
    """The lane a producer puts a job in: the task's name when it is throttled."""
    if task.option("rate_limit") or task.option("max_concurrency"):
        return task.name
    return None


LIMITS = ("rate_limit", "max_concurrency")


def limit_source(task: Task, key: str) -> str:
    """Where a task's effective ``rate_limit`` or ``max_concurrency`` comes from, in the
    order Task.option() applies them (the last that says something wins)."""
    annotations = task.app.conf.task_annotations or {}
    for scope in (task.name, "*"):
        if key in (annotations.get(scope) or {}):
            return f"task_annotations[{scope!r}]"
    if task._declared.get(key) is not None:     # the decorator's options, as given
        return "declared on the task"
    return "task_default_rate_limit"            # caps have no app-wide default


def limits_in_force(app: Localq) -> list[dict]:
    """Every rate limit and concurrency cap in force, and where each comes from: the
    app's tasks (declared, annotations, settings) and the run-time overrides stored in
    the file (which win over the declared rate limit until reset with ``None``)."""
    return limits_of(app.tasks, app.store.rate_overrides())


def limits_of(tasks: Mapping[str, Task],
              overrides: Iterable[tuple[str, str, float | None]]) -> list[dict]:
    """limits_in_force() from the tasks and the stored (task, override, set) rows."""
    found: dict[tuple[str, str], dict] = {}
    for name, task in tasks.items():
        for key in LIMITS:
            value = task.option(key)
            if key == "rate_limit":
                rate = parse_rate(value)
                value = rate.text if rate else None
            if value:
                found[(name, key)] = {"task": name, "limit": key, "value": value,
                                      "source": limit_source(task, key), "set": None}
    for name, override, when in overrides:
        row: dict[str, Any] = {"task": name, "limit": "rate_limit",
                               "value": None if override == "0" else override,
                               "source": "run-time override", "set": when}
        if name in tasks:     # what it stands in for: the app's own limit, or none
            own = found.get((name, "rate_limit"))
            row["replaces"] = {"value": own["value"], "source": own["source"]} if own else None
        found[(name, "rate_limit")] = row
    return [found[k] for k in sorted(found)]
