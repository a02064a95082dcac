"""When one host is not enough: the same app as a real Celery app, ``make_celery``.

This module owns the translation of a localq app into Celery's: its settings that have a
Celery meaning, every task under its name with its options as declared, task classes
(``base=``) with their hooks, ``task_annotations`` and ``beat_schedule``; and, by default,
the localq app's sending (``delay``, ``apply_async``, ``send_task``, ``AsyncResult``,
``control``, ``map``) handed over to Celery, so that moving is one line::

    celery_app = make_celery(app, broker="redis://host:6379/0", backend="redis://host:6379/1")

and ``celery -A tasks:celery_app worker`` runs the tasks. It needs the optional extra
``localq[celery]``; nothing else in localq imports it.

What is translated rather than copied, and why:

- **Priority**: localq's 9 runs first, as on RabbitMQ; Celery on Redis runs 0 first, so for
  a Redis broker priorities are written ``9 - p`` (and Redis gets ten priority steps).
- **Exceptions inside tasks**: a task that catches ``localq.SoftTimeLimitExceeded`` or
  ``localq.MaxRetriesExceededError`` must still catch them on Celery, which raises its own
  classes: on Celery the task sees classes derived from both.
- **Task classes**: their methods are copied onto a Celery task class, and a method's
  ``super()`` is pointed at the new class, so that ``super().on_failure(...)`` works.
- **Ignore and Reject raised by a task**: Celery's worker acts on its own classes only, so
  the translated tasks' ``__call__`` raises Celery's ``Ignore``/``Reject`` in their place
  (``update_state`` is Celery's there: ``update_state(state="SUCCESS", meta=v); raise
  Ignore()`` stores ``v`` as on localq). What differs: where localq ends an ignored or
  rejected job REVOKED, Celery leaves its state as it was (STARTED, PENDING).
- **Options as declared**, not as resolved: Celery resolves annotations, then the decorator,
  then the class, then the settings, in the same order as localq. Except the queue and the
  priority: Celery 5.7 deprecates them as task attributes, so each task's, as localq
  resolves them, goes in ``task_routes``.

What does not carry over warns once, naming the tasks: ``max_concurrency`` (no Celery
counterpart) and rate limits, which hold for every worker on the file in localq but per
worker in Celery.
"""
from __future__ import annotations

import signal
import types
import warnings
from typing import Any, Callable, Generic, Iterable, Mapping

try:
    import billiard.pool
    import celery
    import celery.exceptions
    import celery.schedules
    import celery.signals
except ImportError as _missing:     # pragma: no cover - the extra is not installed
    raise ImportError(f"localq.celery needs Celery ({_missing}): pip install "
                      f"'localq[celery]'") from _missing

from . import exceptions
from .app import Localq
from .celery_names import CELERY_SETTINGS
from .exceptions import ConfigurationError
from .schedules import crontab, schedule
from .task import Task

__all__ = ["make_celery", "MaxRetriesExceededError", "SoftTimeLimitExceeded"]


class SoftTimeLimitExceeded(exceptions.SoftTimeLimitExceeded,
                            celery.exceptions.SoftTimeLimitExceeded):
    """Raised inside a task on Celery at its soft time limit: both localq's and Celery's
    ``except SoftTimeLimitExceeded`` catch it."""


class MaxRetriesExceededError(exceptions.MaxRetriesExceededError,
                              celery.exceptions.MaxRetriesExceededError):
    """Raised by ``self.retry()`` on Celery past ``max_retries``: both localq's and
    Celery's ``except MaxRetriesExceededError`` catch it."""


# Task options with no Celery counterpart, and what to do instead.
NOT_CARRIED = {
    "max_concurrency": "Celery does not cap a task's concurrency across workers: route the "
                       "task to its own queue, served by one worker with -c N",
}
# Options make_celery passes by their own argument, or not at all; queue and priority
# travel in task_routes (Celery 5.7 deprecates them as task attributes).
PASSED_APART = frozenset({"name", "base", "bind", "shared", "queue", "priority"})
# Broker schemes on which Celery runs priority 0 first (kombu's Redis transport).
LOW_FIRST = frozenset({"redis", "rediss", "sentinel", "redis+socket"})


def make_celery(app: Localq, broker: str | None = None, backend: str | None = None, *,
                forward: bool = True, **settings: Any) -> celery.Celery:
    """A Celery app with every task of ``app`` under the same name and options.

    ``broker`` and ``backend`` are Celery's (``redis://...``, ``amqp://...``; None:
    Celery's default or ``$CELERY_BROKER_URL``). ``settings`` are Celery settings by their
    new names, applied last (``worker_prefetch_multiplier=1``, ...). Call it once all
    tasks are defined, at the end of the module that defines them.

    ``forward=True`` (the default) hands ``app``'s sending over to Celery: from then on its
    tasks' ``delay``/``apply_async``/``s``/``AsyncResult``, ``app.send_task``,
    ``app.AsyncResult``, ``app.control`` and ``app.map``/``starmap`` (as a Celery group)
    go through Celery, in producers and inside tasks alike. ``forward=False`` leaves
    ``app`` as it was.
    """
    finalize = getattr(app, "finalize", None)
    if finalize is not None:    # autodiscovered tasks, on_after_configure's periodic tasks
        finalize()
    capp = celery.Celery(app.main_name, broker=broker, backend=backend)
    priority = _priority_mapping(broker or settings.get("broker_url") or capp.conf.broker_url)
    capp.conf.update(_settings(app, priority))
    capp.conf.update(settings)                  # Celery's meanings, as they are
    if priority is not None:
        transport = dict(capp.conf.broker_transport_options or {})
        transport.setdefault("priority_steps", list(range(10)))
        capp.conf.broker_transport_options = transport
    capp.conf.accept_content, capp.conf.result_accept_content = _accepted(app, capp)

    classes: dict[type, type] = {Task: _root_class(capp)}
    for task in app.tasks.values():
        declared = getattr(task, "_declared", {})   # the decorator's options, as written
        capp.task(task.run, name=task.name, base=_task_class(type(task), classes),
                  bind=bool(task.option("bind")), shared=False, lazy=False,
                  **_options(declared))
    capp.finalize()
    _warn_not_carried(app)
    if forward:
        _forward(app, capp, priority)
    return capp


# ------------------------------------------------------------------ settings

def _settings(app: Localq, priority: Callable[[int], int] | None) -> dict[str, Any]:
    """The localq settings that Celery has under the same name; None is left to Celery's
    default (for localq it means "the task's serializer", "accept_content", "CPUs")."""
    values = {name: value for name, value in app.conf.items()
              if name in CELERY_SETTINGS and value is not None}
    if values.get("result_expires") == 0:
        values["result_expires"] = None         # localq's 0 keeps results forever
    values["task_track_started"] = True         # localq always records STARTED
    if priority is not None:
        values["task_default_priority"] = priority(values.get("task_default_priority") or 0)
    values["task_routes"] = _routes(app, priority)
    if isinstance(values.get("task_annotations"), Mapping):
        values["task_annotations"] = {scope: _options(options)
                                      for scope, options in values["task_annotations"].items()}
    if values.get("beat_schedule"):
        values["beat_schedule"] = {name: _beat_entry(dict(entry), priority)
                                   for name, entry in values["beat_schedule"].items()}
    return values


def _routes(app: Localq, priority: Callable[[int], int] | None) -> list:
    """Each task's queue and priority as localq resolves them (the task's option, its
    annotation, task_routes, the defaults), first; then localq's task_routes as they are,
    for names sent with send_task."""
    own = {}
    for task in app.tasks.values():
        queue, _, prio = task.send_defaults()[:3]
        own[task.name] = {"queue": queue, "priority": prio if priority is None
                          else priority(prio)}
    routes = app.conf.task_routes
    return [own, *(routes if isinstance(routes, (list, tuple)) else [routes] if routes else [])]


def _accepted(app: Localq, capp: celery.Celery) -> tuple[list[str], list[str]]:
    """Celery's accept_content must list every serializer a worker decodes; localq also
    accepts the app's and each task's declared serializer without listing them."""
    declared = {capp.conf.task_serializer, capp.conf.result_serializer,
                *(task.option("serializer") for task in app.tasks.values())}
    declared.discard(None)
    jobs = list(dict.fromkeys([*capp.conf.accept_content, *sorted(declared)]))
    results = capp.conf.result_accept_content
    results = jobs if results is None else list(dict.fromkeys([*results, *sorted(declared)]))
    return jobs, results


def _priority_mapping(url: Any) -> Callable[[int], int] | None:
    """``9 - p`` for a broker on which Celery runs 0 first; None where 9 runs first."""
    first = url[0] if isinstance(url, (list, tuple)) and url else str(url or "")
    if first.split(";")[0].partition("://")[0].lower() in LOW_FIRST:
        return _reversed_priority
    return None


def _reversed_priority(p: int) -> int:
    return 9 - p


def _options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Task options (or annotations) as Celery task attributes."""
    out = {}
    for key, value in options.items():
        if key in PASSED_APART or key in NOT_CARRIED:
            continue
        if key == "retry_kwargs" and value is None:
            continue                            # Celery's default is {}
        out[key] = value
    return out


def _beat_entry(entry: dict[str, Any], priority: Callable[[int], int] | None
                ) -> dict[str, Any]:
    """A beat_schedule entry with localq's schedules as Celery's, and a task object
    by its name."""
    if isinstance(entry.get("task"), Task):
        entry["task"] = entry["task"].name
    when = entry.get("schedule")
    if isinstance(when, crontab):
        entry["schedule"] = celery.schedules.crontab(
            minute=set(when.minute), hour=set(when.hour), day_of_week=set(when.day_of_week),
            day_of_month=set(when.day_of_month), month_of_year=set(when.month_of_year))
    elif isinstance(when, schedule):
        entry["schedule"] = celery.schedules.schedule(run_every=when.run_every)
    options = dict(entry.get("options") or {})
    if options.get("priority") is not None and priority is not None:
        options["priority"] = priority(options["priority"])
        entry["options"] = options
    return entry


def _warn_not_carried(app: Localq) -> None:
    for key, advice in NOT_CARRIED.items():
        names = sorted(t.name for t in app.tasks.values() if t.option(key))
        if names:
            warnings.warn(f"make_celery: {key} does not carry over to Celery (task "
                          f"{', '.join(names)}): {advice}", stacklevel=3)
    limited = sorted(t.name for t in app.tasks.values() if t.option("rate_limit"))
    if limited:
        warnings.warn(f"make_celery: rate limits hold per Celery worker, not for all "
                      f"workers together as in localq (task {', '.join(limited)}): with N "
                      f"workers, divide each limit by N", stacklevel=3)


# ------------------------------------------------------------------ task classes

def _root_class(capp: celery.Celery) -> type:
    """The Celery task class every translated task derives from."""
    root: type = type("Task", (capp.Task,), {
        "__module__": __name__,
        "MaxRetriesExceededError": MaxRetriesExceededError,   # what Celery's retry raises
        "_localq_bridge": True,
    })

    def __call__(self: Any, *args: Any, **kwargs: Any) -> Any:
        """Run the task; localq's Ignore and Reject leave it as Celery's own (what
        Celery's worker acts on), so that Celery ignores or rejects the job."""
        try:
            return super(root, self).__call__(*args, **kwargs)  # type: ignore[arg-type]
        except exceptions.Reject as asked:
            raise celery.exceptions.Reject(asked.reason, asked.requeue) from asked
        except exceptions.Ignore as asked:
            raise celery.exceptions.Ignore() from asked

    setattr(root, "__call__", __call__)     # Celery's tracer calls a custom __call__
    return root


def _task_class(cls: type, classes: dict[type, type]) -> type:
    """The Celery task class for a localq Task subclass: the same methods and class
    options, on the translated bases (mixins are kept as they are)."""
    if cls in classes:
        return classes[cls]
    bases = tuple(_task_class(base, classes) if issubclass(base, Task) else base
                  for base in cls.__bases__ if base is not Generic)
    if "__init__" in vars(cls):
        raise ConfigurationError(
            f"make_celery: task class {cls.__qualname__} defines __init__, which Celery cannot "
            f"call (it makes task instances with no arguments): move that setup to a method "
            f"or to the worker_process_init signal")
    namespace = {key: value for key, value in vars(cls).items()
                 if key not in ("__dict__", "__weakref__", "__orig_bases__", "__parameters__",
                                "_class_options", "_hooks")}
    own = cls._class_options                    # type: ignore[attr-defined]
    namespace.update(_options(own))
    new = type(cls.__name__, bases, namespace)
    for key, value in namespace.items():        # super() in a method means the new class
        rebound = _rebound(value, cls, new)
        if rebound is not value:
            setattr(new, key, rebound)
    classes[cls] = new
    return new


def _rebound(value: Any, old: type, new: type) -> Any:
    """``value`` with the ``__class__`` cell of its functions (what ``super()`` reads)
    pointing at ``new`` instead of ``old``; ``value`` itself when it has none."""
    if isinstance(value, types.FunctionType):
        if "__class__" not in value.__code__.co_freevars:
            return value
        cells = tuple(types.CellType(new) if name == "__class__" and cell.cell_contents is old
                      else cell
                      for name, cell in zip(value.__code__.co_freevars,
                                            value.__closure__ or ()))
        copy = types.FunctionType(value.__code__, value.__globals__, value.__name__,
                                  value.__defaults__, cells)
        copy.__kwdefaults__ = value.__kwdefaults__
        copy.__qualname__ = value.__qualname__
        copy.__doc__ = value.__doc__
        copy.__annotations__ = value.__annotations__
        copy.__dict__.update(value.__dict__)
        return copy
    if isinstance(value, (classmethod, staticmethod)):
        inner = _rebound(value.__func__, old, new)
        return value if inner is value.__func__ else type(value)(inner)
    if isinstance(value, property):
        fget, fset, fdel = (None if f is None else _rebound(f, old, new)
                            for f in (value.fget, value.fset, value.fdel))
        if (fget, fset, fdel) == (value.fget, value.fset, value.fdel):
            return value
        return property(fget, fset, fdel, value.__doc__)
    return value


@celery.signals.task_prerun.connect(weak=False)
def _soft_limit_as_localq(sender: Any = None, **_: Any) -> None:
    """In a prefork child, before a translated task: billiard's soft-time-limit handler
    raises Celery's SoftTimeLimitExceeded; ours raises the class that both localq's and
    Celery's ``except`` catch (so other tasks that child runs later lose nothing). Other
    pools, which have no billiard handler, are left alone."""
    if not getattr(sender, "_localq_bridge", False):
        return
    try:
        if signal.getsignal(signal.SIGUSR1) is billiard.pool.soft_timeout_sighandler:
            signal.signal(signal.SIGUSR1, _soft_limit)
    except ValueError:          # not the main thread: not a prefork child
        pass


def _soft_limit(signum: int, frame: Any) -> None:
    raise SoftTimeLimitExceeded()


# ------------------------------------------------------------------ forwarding

def _forward(app: Localq, capp: celery.Celery, priority: Callable[[int], int] | None) -> None:
    """Point ``app``'s sending at Celery (instance attributes shadow the methods)."""
    def options(opts: dict[str, Any]) -> dict[str, Any]:
        if opts.get("priority") is not None and priority is not None:
            opts["priority"] = priority(opts["priority"])
        return opts

    for task in app.tasks.values():
        target = capp.tasks[task.name]
        vars(task).update(_task_forwards(target, options))

    def send_task(name: str, args: Any = None, kwargs: Any = None, **opts: Any) -> Any:
        return capp.send_task(name, args, kwargs, **options(opts))

    def map_(task: Task, iterable: Iterable, **opts: Any) -> list:
        return _group(capp, task, ((item,) for item in iterable), opts, options)

    def starmap(task: Task, iterable: Iterable[Iterable], **opts: Any) -> list:
        return _group(capp, task, (tuple(args) for args in iterable), opts, options)

    vars(app).update(send_task=send_task, AsyncResult=capp.AsyncResult, control=capp.control,
                     map=map_, starmap=starmap)


def _task_forwards(target: Any, options: Callable[[dict], dict]) -> dict[str, Any]:
    def apply_async(args: Any = None, kwargs: Any = None, **opts: Any) -> Any:
        return target.apply_async(args, kwargs, **options(opts))

    def delay(*args: Any, **kwargs: Any) -> Any:
        return target.apply_async(args, kwargs)

    return {"delay": delay, "apply_async": apply_async, "AsyncResult": target.AsyncResult,
            "s": target.s, "si": target.si, "signature": target.signature}


def _group(capp: celery.Celery, task: Task, calls: Iterable[tuple], opts: dict[str, Any],
           options: Callable[[dict], dict]) -> list:
    """``app.map`` on Celery: a group, its results in input order, the first failure
    raised. ``resume=`` and ``progress=`` need localq's file."""
    kept = {k: opts.pop(k) for k in ("queue", "priority") if opts.get(k) is not None}
    timeout = opts.pop("timeout", None)
    wanted = sorted(k for k, v in opts.items() if v)
    if wanted:
        raise ConfigurationError(
            f"app.map({', '.join(f'{k}=...' for k in wanted)}) needs localq's database, and "
            f"this app sends through Celery (make_celery): leave them out, or keep a localq "
            f"app for this map")
    target = capp.tasks[task.name]
    group = celery.group(target.s(*args) for args in calls)
    return group.apply_async(**options(kept)).get(timeout=timeout)
