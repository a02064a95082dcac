"""Localq: the app. Settings, the task registry, sending jobs, and the embedded worker.

``Localq(path)`` touches no file: the database is opened on first use, so an
app can be defined at import time anywhere. With no path it uses
``$LOCALQ_DB``, else ``localq.db`` in the current directory.
"""
from __future__ import annotations

import atexit
import fnmatch
import importlib
import math
import os
import socket
import time
import warnings
import weakref
from datetime import datetime, timezone
from typing import Any, Callable, Concatenate, Iterable, Iterator, Literal, overload

from .config import Settings
from .control import Control
from .exceptions import ConfigurationError, NotRegistered
from .ids import format_id, new_id, new_seq
from .limits import lane_for
from .result import AsyncResult as Result  # the method AsyncResult shadows the class
from .serializer import check_serializer, encode_call
from .signals import Signal, after_task_publish, before_task_publish
from .store import JobRow, Store
from .store.records import decode_options, split_id, with_eta
from .task import (
    P,
    R,
    SendDefaults,
    Task,
    check_name,
    check_priority,
    eta_timestamp,
    expires_at,
    job_options,
    seconds,
)
from .wakeup import INBOX_RING_EVERY, Ringer, safe_folder, wake_folder

# While a worker runs, the first send after a get() that waited for a job (call and wait,
# call and wait) goes straight into the file: the worker claims it without attaching and
# copying an inbox, a shorter round trip; such a producer meets the write lock rarely.
# Every other send uses the process's inbox, so a loop of delay() never competes with
# the worker for the lock (however its sends are spaced: a producer descheduled between
# two of them is still a stream). False: every send through the inbox (its tests).
DIRECT_AFTER_WAIT = True


class Localq:
    """The app: ``Localq("jobs.db")``, or as Celery's ``Celery("proj", ...)``.

    The first argument is the database file, except in a Celery-style call (one that
    also passes ``broker=``, ``backend=`` or ``include=``), where a bare name
    (``"proj"``, a Python identifier) is Celery's ``main`` and the database is then
    ``$LOCALQ_DB`` or ``localq.db``. The rule reads only the call, never the folder.
    ``broker=``/``backend=`` are accepted with the warning that ``broker_url`` and
    ``result_backend`` get; ``include=`` is the ``include`` setting.
    """

    # Every app made in this process, for the pytest plugin: it points them all at
    # temporary databases while tests run, so that the path in the code is never opened.
    _instances: weakref.WeakSet[Localq] = weakref.WeakSet()

    def __init__(self, path: str | os.PathLike | None = None, *, main: str | None = None,
                 broker: str | None = None, backend: str | None = None,
                 include: Iterable[str] | None = None, namespace: str | None = None,
                 **settings: Any) -> None:
        celery_call = broker is not None or backend is not None or include is not None
        if main is None and celery_call and isinstance(path, str) and path.isidentifier():
            main, path = path, None
        self.main_name = main or "localq"
        self.namespace = namespace
        self.conf = Settings()
        celery_style = {"broker_url": broker, "result_backend": backend, "include": include}
        self.conf.apply({**{k: v for k, v in celery_style.items() if v is not None},
                         **settings},
                        {"broker_url": "broker", "result_backend": "backend"})
        self.tasks: dict[str, Task] = {}
        self.control = Control(self)
        self._store: Store | None = None
        self._ringer: Ringer | None = None
        self._waiters_ringer: Ringer | None = None
        self._waited = True         # a get() waited since the last send (DIRECT_AFTER_WAIT)
        self._inbox_rung = -math.inf   # monotonic time of the last ring after an inbox send
        self._inbox_rang = b""             # ... and what it said (which inbox)
        self._path = os.path.abspath(os.fspath(path or os.environ.get("LOCALQ_DB")
                                               or "localq.db"))
        Localq._instances.add(self)
        # Celery's app signals: sent once, by finalize(), with this app as the sender.
        self.on_after_configure = Signal("on_after_configure")
        self.on_after_finalize = Signal("on_after_finalize")
        self.finalized = False
        self._autodiscover: list[tuple[Any, str]] = []
        self.set_current()
        for fun, options in list(_shared_tasks):     # @shared_task defined before this app
            self.task(**options)(fun)

    def __repr__(self) -> str:
        return f"<Localq {self.main_name} at {self._path}>"

    # -------------------------------------------------------------- database

    @property
    def path(self) -> str:
        return self._path

    @path.setter
    def path(self, value: str | os.PathLike) -> None:
        """Point the app at another database file (the pytest plugin does this)."""
        self.close()
        self._path = os.path.abspath(os.fspath(value))

    @property
    def store(self) -> Store:
        if self._store is None:
            if not self.finalized:
                self.finalize()          # first use of the file, as Celery finalizes
            self._store = Store(self._path, self.conf.database_synchronous.upper())
            folder = wake_folder(self._path)
            if folder.endswith(".d") and safe_folder(folder):   # inboxes are read there
                self._store.inbox_folder = folder
        return self._store

    def set_current(self) -> None:
        """Make this the app ``@shared_task`` tasks resolve to (the last app created is)."""
        _current[0] = weakref.ref(self)

    def finalize(self) -> None:
        """Celery's finalize, once: import the ``autodiscover_tasks`` modules, then send
        ``on_after_configure`` and ``on_after_finalize`` (sender: this app). Done on the
        first use of the database, and by a worker before it starts, at the latest; a
        handler may still change settings and define tasks (``add_periodic_task``)."""
        if self.finalized:
            return
        self.finalized = True
        self.import_autodiscovered()
        self.on_after_configure.send(self, source=self.conf)
        self.on_after_finalize.send(self)

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None
        self._close_ringers()

    def _close_ringers(self) -> None:
        for ringer in (self._ringer, self._waiters_ringer):
            if ringer is not None:
                ringer.close()
        self._ringer = self._waiters_ringer = None

    def nudge_workers(self, message: bytes = b"!") -> None:
        """Wake sleeping supervisors on this database (best effort)."""
        if self._ringer is None:
            self._ringer = Ringer(wake_folder(self._path), "w")
        self._ringer.ring(message)

    def _nudge_after_send(self, store: Store, inbox: bool) -> None:
        """Ring after a send: for a send into the inbox, at most once per
        INBOX_RING_EVERY (the supervisors watch the inboxes meanwhile: wakeup.py)."""
        message = store.inbox_bell if inbox else b"!"
        if message[:1] == b"I":               # it went into the inbox
            mono = time.monotonic()
            if mono - self._inbox_rung < INBOX_RING_EVERY and message == self._inbox_rang:
                return                        # (a new inbox, a forked child's: rung)
            self._inbox_rung, self._inbox_rang = mono, message
        self.nudge_workers(message)

    def _use_inbox(self, store: Store) -> bool:
        """Send through this process's inbox (store/inbox.py)? Only while a worker runs,
        to copy it (its bell is there), and when the wake-up folder is <db>.d/ beside
        the file (not the temporary folder a long path gets) and private (the Ringer
        checked). With no worker, jobs go straight into the file, as a script expects;
        so does the first send after a get() that waited (see DIRECT_AFTER_WAIT)."""
        if self._ringer is None:
            self._ringer = Ringer(wake_folder(self._path), "w")
        if self._waited:
            self._waited = False
            if DIRECT_AFTER_WAIT:
                return False
        if not self._ringer.has_bells():
            return False
        if store.inbox_folder is None:
            folder = self._ringer.folder
            if not folder.endswith(".d"):
                return False
            store.inbox_folder = folder
        return True

    def note_waited(self) -> None:
        """A get() waited for a job: the next send goes straight into the file
        (DIRECT_AFTER_WAIT)."""
        self._waited = True

    def nudge_waiters(self) -> None:
        """Wake processes waiting in ``get()`` on this database (best effort)."""
        if self._waiters_ringer is None:
            self._waiters_ringer = Ringer(wake_folder(self._path), "g")
        self._waiters_ringer.ring()

    # -------------------------------------------------------------- configuration

    def config_from_object(self, obj: Any, silent: bool = False, force: bool = False,
                           namespace: str | None = None) -> bool:
        """Celery's: settings from an object, a module, or a module's name
        (``"proj.celeryconfig"``, ``"proj.settings:CeleryConfig"``). ``silent``: a name
        that cannot be imported is not an error (returns False). ``force`` is accepted
        and changes nothing: settings are read at once here, never lazily."""
        return self.conf.from_object(obj, namespace=namespace or self.namespace,
                                     silent=silent)

    def config_from_envvar(self, variable_name: str, silent: bool = False,
                           force: bool = False) -> bool:
        """Celery's: settings from the module named by an environment variable."""
        module_name = os.environ.get(variable_name)
        if not module_name:
            if silent:
                return False
            raise ConfigurationError(
                f"the environment variable {variable_name} is not set: set it to the "
                f"configuration module to load, e.g. {variable_name}=proj.celeryconfig")
        return self.config_from_object(module_name, silent=silent)

    def import_task_modules(self) -> None:
        """Import the modules named in ``imports`` and ``include`` (done by workers)."""
        for name in (*self.conf.imports, *self.conf.include):
            importlib.import_module(name)

    def autodiscover_tasks(self, packages: Iterable[str] | Callable[[], Iterable[str]],
                           related_name: str = "tasks", force: bool = False) -> None:
        """Celery's: import ``<package>.tasks`` for each package (a package without one is
        skipped). Lazily, as in Celery: when the app is finalized (first use of the
        database, or a worker's start), so that the modules may import this app;
        ``force=True`` imports them now. ``packages`` may be a callable returning them
        (Django's ``lambda: settings.INSTALLED_APPS``)."""
        if isinstance(packages, str):
            raise TypeError(f"autodiscover_tasks takes a list of packages, not the str "
                            f"{packages!r}: autodiscover_tasks([{packages!r}])")
        self._autodiscover.append((packages, related_name))
        if force or self.finalized:
            self.import_autodiscovered()

    def import_autodiscovered(self) -> None:
        pending, self._autodiscover = self._autodiscover, []
        for packages, related_name in pending:
            for package in (packages() if callable(packages) else packages):
                name = f"{package}.{related_name}"
                try:
                    importlib.import_module(name)
                except ModuleNotFoundError as exc:
                    if exc.name not in (name, package):
                        raise       # a module the tasks module imports is missing: say so

    # -------------------------------------------------------------- tasks

    @overload
    def task(self, fun: Callable[P, R], /) -> Task[P, R]: ...

    @overload
    def task(self, *, bind: Literal[True], **options: Any
             ) -> Callable[[Callable[Concatenate[Any, P], R]], Task[P, R]]: ...

    @overload
    def task(self, *, bind: Literal[False] = ..., **options: Any
             ) -> Callable[[Callable[P, R]], Task[P, R]]: ...

    @overload
    def task(self, *, bind: bool, **options: Any
             ) -> Callable[[Callable[..., R]], Task[..., R]]: ...

    def task(self, *args: Any, **options: Any) -> Any:
        """``@app.task`` or ``@app.task(**options)``: register a function as a task.
        ``base=MyTask`` (a subclass of ``localq.Task``) makes it an instance of that class."""
        base = options.pop("base", None) or Task
        if not (isinstance(base, type) and issubclass(base, Task)):
            raise TypeError(f"@app.task(base={base!r}): base must be a subclass of "
                            f"localq.Task (class MyTask(app.Task): ...)")

        def register(fun: Callable) -> Task:
            task = base(self, fun, options)
            if task.name in self.tasks and self.tasks[task.name].run is not fun:
                existing = self.tasks[task.name].run
                if (existing.__module__, existing.__qualname__) != (fun.__module__,
                                                                    fun.__qualname__):
                    raise ConfigurationError(f"two tasks are named {task.name!r}: give one "
                                             f"of them name='...'")
            self.tasks[task.name] = task
            return task
        if len(args) == 1 and callable(args[0]):
            return register(args[0])
        if args:
            raise TypeError("use @app.task or @app.task(option=value, ...)")
        return register

    def send_task(self, name: str, args: tuple | list | None = None, kwargs: dict | None = None,
                  **options: Any) -> Result:
        """Send a job by task name (the task need not be defined in this process)."""
        task = self.tasks.get(name)
        if task is None:
            task = Task(self, _unknown_task, {"name": name, "typing": False})
        return task.apply_async(args, kwargs, **options)

    def AsyncResult(self, task_id: str) -> Result:  # noqa: N802 - Celery's name
        return Result(task_id, self)

    def GroupResult(self, group_id: str) -> Any:  # noqa: N802 - Celery's name
        """The stored group (or chord header) with this id: see localq.canvas."""
        from .canvas import GroupResult
        return GroupResult(group_id, None, self)

    def signature(self, *args: Any, **kwargs: Any) -> Any:
        """Celery's ``app.signature``: a Signature of a task of this app."""
        from .canvas import signature
        return signature(*args, app=self, **kwargs)

    def send_plain(self, task: Task, args: tuple, kwargs: dict) -> Result:
        """``delay()``: a call with no per-call options, on the shortest path (the row's
        fixed part comes from the task's cache; the id is the row number)."""
        if self.conf.task_always_eager or before_task_publish.receivers \
                or after_task_publish.receivers:
            return self.send_job(task, args, kwargs, countdown=None, eta=None, expires=None,
                                 queue=None, priority=None, task_id=None, time_limit=None,
                                 soft_time_limit=None, serializer=None, ignored={})
        task.check_arguments(args, kwargs)
        d = task.send_defaults()
        payload = encode_call(d.serializer, task.name, args, kwargs)
        now = time.time()
        expires = None if d.expires is None else expires_at(d.expires, now)
        store = self.store
        inbox = self._use_inbox(store)
        # Into an inbox, the seq is drawn there (0: none drawn here)
        seq = store.send(JobRow(0 if inbox else new_seq(), None, task.name, d.queue, d.lane,
                                d.priority, d.serializer, payload, d.options, 0.0, expires,
                                now), inbox)
        self._nudge_after_send(store, inbox)
        return Result(format_id(seq), self)

    def send_job(self, task: Task, args: tuple, kwargs: dict, *, countdown: float | None,
                 eta: datetime | float | None, expires: float | datetime | None,
                 queue: str | None, priority: int | None, task_id: str | None,
                 time_limit: float | None, soft_time_limit: float | None,
                 serializer: str | None, ignored: dict) -> Result:
        if ignored:
            _warn_ignored(ignored)
        task.check_arguments(args, kwargs)
        job = self.new_job(task, args, kwargs, countdown=countdown, eta=eta, expires=expires,
                           queue=queue, priority=priority, task_id=task_id,
                           time_limit=time_limit, soft_time_limit=soft_time_limit,
                           serializer=serializer)      # every check, even in eager mode
        if self.conf.task_always_eager:
            from .worker.execute import run_eager
            return run_eager(task, args, kwargs, {"task_id": task_id, "serializer": serializer})
        publishing = before_task_publish.receivers or after_task_publish.receivers
        if publishing:
            body, headers = _message(job, args, kwargs)
            before_task_publish.send(job.task, body=body, exchange="", routing_key=job.queue,
                                     headers=headers, properties={"priority": job.priority},
                                     declare=[], retry_policy=None)
        if task_id is None:              # a generated id: any inbox will do
            store = self.store
            inbox = self._use_inbox(store)
            job = job._replace(seq=store.send(job, inbox))
            self._nudge_after_send(store, inbox)
        else:                            # a chosen id: checked at once, in jobs
            self.store.enqueue(job)
            self.nudge_workers()
        if publishing:
            headers["id"] = job.id
            after_task_publish.send(job.task, body=body, exchange="", routing_key=job.queue,
                                    headers=headers)
        return Result(job.id, self)

    def new_job(self, task: Task, args: tuple, kwargs: dict, *, countdown: float | None = None,
                eta: datetime | float | None = None, expires: float | datetime | None = None,
                queue: str | None = None, priority: int | None = None,
                task_id: str | None = None, time_limit: float | None = None,
                soft_time_limit: float | None = None, serializer: str | None = None,
                group_id: str | None = None, group_index: int | None = None,
                now: float | None = None) -> JobRow:
        """Encode a call into a row, checking everything before anything is stored.

        A past ``eta`` or a negative ``countdown`` means "run now", as in Celery; a
        number that is not finite, or not a number, is an error naming the option."""
        where = f"apply_async of {task.name!r}"
        d = task.send_defaults()
        if serializer is None:
            serializer = d.serializer
        else:
            check_serializer(serializer)
            if serializer not in task.accepted_content():
                raise ConfigurationError(
                    f"{where}: serializer={serializer!r} is not accepted by this app, so no "
                    f"worker of it would run the job: add it to accept_content, or declare "
                    f"serializer={serializer!r} on the task")
        payload = encode_call(serializer, task.name, args, kwargs)
        now = time.time() if now is None else now
        when = 0.0
        if countdown is not None:
            when = now + seconds(countdown, "countdown", where)
        elif eta is not None:
            when = eta_timestamp(eta, "eta", where)
        if when <= now:
            when = 0.0
        if expires is not None and not isinstance(expires, datetime):
            seconds(expires, "expires", where)
        expires = expires if expires is not None else d.expires
        for option, limit in (("time_limit", time_limit), ("soft_time_limit", soft_time_limit)):
            if limit is not None:
                seconds(limit, option, where, positive=True)
        if time_limit is not None or soft_time_limit is not None:
            self.conf.check_limits(
                task.name, task.option("time_limit") if time_limit is None else time_limit,
                task.option("soft_time_limit") if soft_time_limit is None else soft_time_limit,
                where)
        options = d.options if time_limit is None and soft_time_limit is None \
            else job_options(task, time_limit, soft_time_limit)
        if when:
            options = with_eta(options, when)
        if task_id is not None:
            check_name(task_id, "task_id", where)
        if queue is not None:
            check_name(queue, "queue", where)
        return JobRow(*split_id(task_id or new_id()), task.name, queue or d.queue, d.lane,
                      d.priority if priority is None else check_priority(priority, where),
                      serializer, payload, options, when,
                      None if expires is None else expires_at(expires, now), now,
                      group_id, group_index)

    def send_defaults(self, task: Task) -> SendDefaults:
        """What every job of ``task`` gets unless the call says otherwise (cached by the
        task until the settings change)."""
        prio = task.option("priority")
        self.conf.check_limits(task.name, task.option("time_limit"),
                               task.option("soft_time_limit"), f"task {task.name!r}")
        if task.option("expires") is not None and not isinstance(task.option("expires"),
                                                                  datetime):
            seconds(task.option("expires"), "expires", f"task {task.name!r}")
        return SendDefaults(task.option("queue") or self._route(task.name)
                            or self.conf.task_default_queue, lane_for(task),
                            0 if prio is None else check_priority(prio, f"task {task.name!r}"),
                            check_serializer(task.option("serializer")),
                            job_options(task, None, None), task.option("expires"))

    def _route(self, name: str) -> str | None:
        routes = self.conf.task_routes
        if not routes:
            return None
        for pattern, route in (routes.items() if isinstance(routes, dict) else []):
            if pattern == name or fnmatch.fnmatchcase(name, pattern):
                return route.get("queue") if isinstance(route, dict) else str(route)
        return None

    # -------------------------------------------------------------- periodic tasks

    def add_periodic_task(self, schedule: Any, sig: Any, args: tuple | list = (),
                          kwargs: dict | None = None, name: str | None = None,
                          **options: Any) -> str:
        """Celery's: add an entry to ``conf.beat_schedule`` and return its name.

        ``schedule`` is a ``crontab``, a ``schedule``, seconds or a ``timedelta``;
        ``sig`` a signature (``task.s(...)``: anything with ``name``, ``args``,
        ``kwargs`` and ``options``), a Celery-shaped dict (``task``, ``args``, ...), a
        task, or a task's name. ``args``/``kwargs`` go before/over the signature's, and
        ``options`` (queue, priority, expires, ...) over its options. The name defaults
        to the call's repr (``tasks.add(2, 2)``), as in Celery. An entry added before a
        scheduler starts (``worker -B``, ``beat``, ``app.worker(beat=True)``) is run."""
        from .schedules import as_schedule
        task, sig_args, sig_kwargs, sig_options = _signature_parts(sig)
        all_args, all_kwargs = tuple(args) + sig_args, {**sig_kwargs, **(kwargs or {})}
        entry = {"task": task, "schedule": as_schedule(schedule), "args": all_args,
                 "kwargs": all_kwargs, "options": {**sig_options, **options}}
        key = name or _call_repr(task, all_args, all_kwargs)
        self.conf.beat_schedule = {**self.conf.beat_schedule, key: entry}
        return key

    @property
    def timezone(self) -> Any:
        """Celery's: the zone of ``timezone`` (else UTC, or local with
        ``enable_utc=False``); crontabs are evaluated in it."""
        from .beat import zone_of
        return zone_of(self.conf)

    def now(self) -> datetime:
        """Celery's: the current time, aware, in ``app.timezone``."""
        return datetime.now(self.timezone)

    # -------------------------------------------------------------- workers

    def worker(self, concurrency: int | None = None, queues: Iterable[str] | str | None = None,
               **options: Any) -> Any:
        """An embedded worker: ``with app.worker(concurrency=2): ...``.

        Starts a supervisor process with its children (the same code as
        ``python -m localq worker``) and returns once it is ready; leaving the
        block finishes the running jobs and stops every process it started.
        """
        from .worker.embedded import EmbeddedWorker
        self.import_task_modules()     # as `python -m localq worker` does; the fork inherits
        self.finalize()
        return EmbeddedWorker(self, concurrency=concurrency, queues=queues, **options)

    # -------------------------------------------------------------- scripts

    def map(self, task: Task, iterable: Iterable, *, progress: bool = False,
            resume: str | None = None, timeout: float | None = None,
            queue: str | None = None, priority: int | None = None) -> list:
        """Run ``task(item)`` for every item on the workers; return the results in order.

        ``progress=True`` shows done/total, rate, time left and failures on stderr.
        ``resume="name"`` records the map under that name: run again after a crash
        (even kill -9) with the same inputs, finished items are not computed again;
        other inputs under that name are an error. ``timeout`` bounds the whole wait.

        The first failure seen is raised with its original type. The rest: without
        ``resume``, the jobs not started yet are cancelled and the running ones
        finish; with ``resume``, nothing is cancelled, and a second run reuses every
        stored success and runs the failed items again.
        """
        from .mapping import run_map
        return run_map(self, task, ((item,) for item in iterable), progress=progress,
                       resume=resume, timeout=timeout, queue=queue, priority=priority)

    def starmap(self, task: Task, iterable: Iterable[Iterable], *, progress: bool = False,
                resume: str | None = None, timeout: float | None = None,
                queue: str | None = None, priority: int | None = None) -> list:
        """:meth:`map` with one tuple of arguments per call: ``task(*args)``."""
        from .mapping import run_map
        return run_map(self, task, (tuple(args) for args in iterable), progress=progress,
                       resume=resume, timeout=timeout, queue=queue, priority=priority)

    def drop_map(self, name: str) -> int:
        """Forget a resumable map (``resume=name``) and its stored results."""
        from .mapping import drop_map
        return drop_map(self, name)

    def __iter__(self) -> Iterator[Task]:
        return iter(self.tasks.values())


@atexit.register
def _close_at_exit() -> None:
    """Close the apps' ringing sockets at exit, rather than leave them to the collector,
    and their inboxes, so that a script leaves no inbox file behind once it was copied."""
    for app in list(Localq._instances):
        app._close_ringers()
        if app._store is not None:
            app._store.close_inbox()


# Celery's ``class MyTask(app.Task)``: the same class as ``localq.Task`` (a task is bound
# to its app when it is created). Set here, not in the class body, where the name would
# shadow the type in Localq's annotations; type checkers see ``localq.Task`` only.
Localq.Task = Task      # type: ignore[attr-defined]


# @shared_task functions, registered on every app (those that exist, and those made
# later), and the current app, the one a shared task resolves to.
_shared_tasks: list[tuple[Callable, dict[str, Any]]] = []
_current: list[Callable[[], Localq | None]] = [lambda: None]


def current_app() -> Localq:
    """The app in use: the last one created (or made current with ``set_current``)."""
    app = _current[0]()
    if app is None:
        raise RuntimeError("no Localq app exists in this process: create one "
                           "(app = Localq(...)) before calling a @shared_task")
    return app


class SharedTask:
    """What ``@shared_task`` returns: the task of that name in the current app."""

    def __init__(self, fun: Callable, options: dict[str, Any]) -> None:
        self.__wrapped__ = fun
        self._options = options
        self._tasks: weakref.WeakKeyDictionary[Localq, Task] = weakref.WeakKeyDictionary()
        self.__name__ = fun.__name__
        self.__qualname__ = fun.__qualname__
        self.__doc__ = fun.__doc__
        self.__module__ = fun.__module__

    def _task(self) -> Task:
        app = current_app()
        task = self._tasks.get(app)
        if task is None:
            task = next((t for t in app.tasks.values() if t.run is self.__wrapped__), None) \
                or app.task(**self._options)(self.__wrapped__)
            self._tasks[app] = task
        return task

    def __getattr__(self, key: str) -> Any:
        return getattr(self._task(), key)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._task()(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<@shared_task: {self.__qualname__}>"


def shared_task(*args: Any, **options: Any) -> Any:
    """Celery's ``@shared_task`` / ``@shared_task(bind=True, ...)``: a task defined without
    an app (in a reusable module). It is registered on every app of the process, those
    that exist and those created later, and the object it returns acts as the task of
    the current app (the last one created), for ``delay``, ``apply_async`` and the rest."""
    def decorate(fun: Callable) -> Any:
        _shared_tasks.append((fun, options))
        for app in list(Localq._instances):
            app.task(**options)(fun)
        return SharedTask(fun, options)
    if len(args) == 1 and callable(args[0]) and not options:
        return decorate(args[0])
    if args:
        raise TypeError("use @shared_task or @shared_task(option=value, ...)")
    return decorate


def _message(job: JobRow, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """The body and headers the publish signals carry, as Celery's task message
    (protocol 2) has them; times are ISO 8601 strings."""
    opts = decode_options(job.options)

    def iso(t: float | None) -> str | None:
        return datetime.fromtimestamp(t, timezone.utc).isoformat() if t else None
    headers = {"lang": "py", "task": job.task, "id": job.id, "eta": iso(job.eta),
               "expires": iso(job.expires), "retries": 0, "group": job.group_id,
               "group_index": job.group_index,
               "timelimit": [opts.get("time_limit"), opts.get("soft_time_limit")],
               "argsrepr": repr(args), "kwargsrepr": repr(kwargs),
               "origin": f"{os.getpid()}@{socket.gethostname()}"}
    return (args, kwargs, {"callbacks": None, "errbacks": None, "chain": None,
                           "chord": None}), headers


def _unknown_task(*args: Any, **kwargs: Any) -> Any:
    raise NotRegistered("this task is not defined in this process; it runs on a worker")


def _signature_parts(sig: Any) -> tuple[str, tuple, dict, dict]:
    """(task name, args, kwargs, options) of a signature, a Celery-shaped dict, a task
    or a task's name."""
    if isinstance(sig, str):
        return sig, (), {}, {}
    if isinstance(sig, Task):
        return sig.name, (), {}, {}
    if isinstance(sig, dict):
        if "task" not in sig:
            raise ConfigurationError(f"add_periodic_task: the dict {sig!r:.80} names no "
                                     f"'task'")
        return (sig["task"], tuple(sig.get("args") or ()), dict(sig.get("kwargs") or {}),
                dict(sig.get("options") or {}))
    name = getattr(sig, "name", None) or getattr(sig, "task", None)
    if isinstance(name, str) and hasattr(sig, "args"):
        return (name, tuple(sig.args or ()), dict(getattr(sig, "kwargs", None) or {}),
                dict(getattr(sig, "options", None) or {}))
    raise ConfigurationError(f"add_periodic_task: {sig!r:.80} is not a task, a signature "
                             f"(task.s(...)) or a task's name")


def _call_repr(task: str, args: tuple, kwargs: dict) -> str:
    """Celery's repr of a signature: ``tasks.add(2, 2, debug=True)``."""
    parts = [repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()]
    return f"{task}({', '.join(parts)})"


_warned: set[str] = set()


def _warn_ignored(options: dict) -> None:
    for key in options:
        if key not in _warned:
            _warned.add(key)
            warnings.warn(f"localq ignores the apply_async option {key!r}", stacklevel=4)

