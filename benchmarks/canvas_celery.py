"""The canvas benchmark's workload as a plain Celery app on Redis (``canvas_bench.py
--celery``): imported by the benchmark, which sends, and by the ``celery worker`` it starts.

The broker and the result backend are the Redis server the benchmark starts
(``$CANVAS_BENCH_REDIS``). Each header task returns the time it ended and the chord's body
measures, when it starts, how long after the last of them that is: Celery's result backend
keeps no start time.
"""
from __future__ import annotations

import os
import time

from celery import Celery

app = Celery("canvas_celery", broker=os.environ["CANVAS_BENCH_REDIS"],
             backend=os.environ["CANVAS_BENCH_REDIS"])
app.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"],
                worker_hijack_root_logger=False, broker_connection_retry_on_startup=True)


@app.task(name="canvas_celery.add")
def add(x, y):
    return x + y


@app.task(name="canvas_celery.ended")
def ended():
    """A no-op that returns when it ended (wall clock, as localq's ``done``)."""
    return time.time()


@app.task(name="canvas_celery.lag")
def lag(results):
    """The chord's body: (how many results, seconds from the last header's end to now)."""
    return len(results), time.time() - max(results)
