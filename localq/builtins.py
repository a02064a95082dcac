"""The canvas's built-in tasks, with Celery's meanings: ``localq.map`` and
``localq.starmap`` (``task.map(it)``, ``task.starmap(it)``, and the jobs of
``task.chunks(it, n)``): one job that calls a task on every item, in the worker.

They are not in ``app.tasks`` (listings and the worker's banner show the app's own
tasks): each app gets its own on first use, in the sender and in the worker.
"""
from __future__ import annotations

import weakref
from typing import Any

from .exceptions import NotRegistered
from .task import Task

NAMES = ("localq.map", "localq.starmap")
_made: weakref.WeakKeyDictionary[Any, dict[str, Task]] = weakref.WeakKeyDictionary()


def builtin(app: Any, name: str) -> Task | None:
    """The built-in task ``name`` of ``app``; None when there is no such built-in."""
    if name not in NAMES:
        return None
    tasks = _made.setdefault(app, {})
    if name not in tasks:
        fun = _xmap if name == "localq.map" else _xstarmap
        tasks[name] = Task(app, fun, {"name": name, "bind": True, "typing": False})
    return tasks[name]


def _target(self: Task, task: dict) -> Task:
    name = task.get("task") if isinstance(task, dict) else None
    target = self.app.tasks.get(name) if isinstance(name, str) else None
    if target is None:
        raise NotRegistered(f"{self.name}: task {name!r} is not registered in this app")
    return target


def _xmap(self: Task, task: dict, it: list) -> list:
    target = _target(self, task)
    return [target(item) for item in it]


def _xstarmap(self: Task, task: dict, it: list) -> list:
    target = _target(self, task)
    return [target(*item) for item in it]
