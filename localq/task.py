"""Task: a registered function with its options, sending, retry and request context.

Celery's names and meanings: ``@app.task`` makes a Task; ``delay`` and
``apply_async`` send it; ``self.retry`` (with ``bind=True``) asks for another
attempt; ``self.request`` describes the running job. Calling the Task object
runs the function inline, like Celery. ``Task[P, R]`` carries the function's
parameters and return type for type checkers; a subclass (``base=``) brings
Celery's hooks and class-attribute defaults.
"""
from __future__ import annotations

import functools
import math
import os
import sys
import threading
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable, Generic, Mapping, NamedTuple, ParamSpec, TypeVar

from .exceptions import ConfigurationError, MaxRetriesExceededError, Retry
from .limits import parse_rate
from .serializer import accepted, check_serializer, encode_call
from .store.records import encode_options

if TYPE_CHECKING:
    import inspect

    from .app import Localq
    from .canvas import Signature
    from .result import AsyncResult

# Options a task accepts, with their defaults when neither the decorator, the
# annotations nor the app's settings say otherwise.
TASK_OPTIONS: dict[str, Any] = {
    "name": None, "queue": None, "priority": None, "ignore_result": None, "serializer": None,
    "bind": False, "acks_late": None, "reject_on_worker_lost": None,
    "max_retries": 3, "default_retry_delay": 180, "autoretry_for": (), "dont_autoretry_for": (),
    "retry_kwargs": None, "retry_backoff": False, "retry_backoff_max": 600, "retry_jitter": True,
    "time_limit": None, "soft_time_limit": None, "rate_limit": None, "max_concurrency": None,
    "expires": None, "track_started": None, "typing": None, "shared": None, "base": None,
}
# Options a Task subclass may not give its tasks as class attributes: each task has its
# own name, and the class is the base.
NOT_CLASS_OPTIONS = frozenset({"name", "base"})
# Options accepted only to load Celery code unchanged, with what they mean here.
#  track_started: localq always records STARTED (the claim sets it), so True is what
#    happens anyway and False cannot turn it off (warned).
#  shared: Celery's shared_task flag; every app here has its own registry.
NO_EFFECT = {"track_started": (False, "localq always records STARTED when a job is "
                                      "claimed; it cannot be turned off")}
# Options that task_annotations may override (Celery's annotation targets).
ANNOTATABLE = ("rate_limit", "time_limit", "soft_time_limit", "max_retries",
               "default_retry_delay", "acks_late", "ignore_result", "queue", "priority",
               "max_concurrency", "reject_on_worker_lost", "serializer", "autoretry_for",
               "retry_backoff", "retry_backoff_max", "retry_jitter", "retry_kwargs",
               "expires")


class SendDefaults(NamedTuple):
    """The fixed part of a task's job rows: see Localq.send_defaults."""
    queue: str
    lane: str | None
    priority: int
    serializer: str
    options: str | None
    expires: float | datetime | None


class Request:
    """``self.request`` inside a bound task: the job being run."""

    def __init__(self, id: str | None = None, task: str = "", args: tuple | list = (),
                 kwargs: dict | None = None, retries: int = 0, is_eager: bool = False,
                 options: dict | None = None, **extra: Any) -> None:
        self.id = id
        self.task = task
        self.args = args
        self.kwargs = kwargs or {}
        self.retries = retries
        self.is_eager = is_eager
        self.called_directly = id is None
        self.options = options or {}
        # The canvas: the job whose outcome sent this one, and the first of its workflow.
        self.parent_id = self.options.get("parent_id")
        self.root_id = self.options.get("root_id") or id
        self.__dict__.update(extra)

    def __repr__(self) -> str:
        return f"<Request {self.task}[{self.id}] retries={self.retries}>"


class _RequestStack(threading.local):
    def __init__(self) -> None:
        self.stack: list[Request] = []


def task_name_for(fun: Callable) -> str:
    module = fun.__module__
    if module == "__main__":   # a script: name it as `--app script:app` would import it
        main = sys.modules.get("__main__")
        spec = getattr(main, "__spec__", None)
        if spec is not None and spec.name:
            module = spec.name
        elif isinstance(path := getattr(main, "__file__", None), str):
            module = os.path.splitext(os.path.basename(path))[0]
    return f"{module}.{fun.__qualname__}"


P = ParamSpec("P")
R = TypeVar("R")


class ExceptionInfo:
    """``einfo`` in the failure and retry hooks, as Celery's: the exception, its type,
    and the formatted traceback (``traceback``)."""

    def __init__(self, exc: BaseException, traceback: str | None) -> None:
        self.exception = exc
        self.type = type(exc)
        self.traceback = traceback or ""

    def __str__(self) -> str:
        return self.traceback

    def __repr__(self) -> str:
        return f"<ExceptionInfo: {self.exception!r}>"


class Task(Generic[P, R]):
    """A task: ``@app.task`` makes one; ``Task[P, R]`` for type checkers, with ``P`` the
    function's parameters and ``R`` its return type, so ``add.delay("x")`` or a
    misspelt ``add.dealy(1)`` is a mypy error and ``add.delay(1, 2).get()`` is ``R``.

    Subclass it for Celery's task classes: ``@app.task(base=MyTask)``. A subclass's
    class attributes that are task options (``max_retries = 5``) are its tasks'
    defaults (the decorator and task_annotations still win), and its hooks run in the
    worker's child with ``self.request`` the job's: ``before_start`` right before the
    task, ``on_success``, ``on_failure``, ``on_retry`` and ``after_return`` right after.
    """

    # The options, read as attributes as in Celery (``task.max_retries``): their
    # effective values come from __getattr__ (annotations, decorator, class, settings).
    if TYPE_CHECKING:
        queue: str | None
        priority: int | None
        ignore_result: bool
        serializer: str
        bind: bool
        acks_late: bool
        reject_on_worker_lost: bool
        max_retries: int | None
        default_retry_delay: float
        autoretry_for: tuple[type[BaseException], ...]
        dont_autoretry_for: tuple[type[BaseException], ...]
        retry_kwargs: dict[str, Any] | None
        retry_backoff: bool | float
        retry_backoff_max: float
        retry_jitter: bool
        time_limit: float | None
        soft_time_limit: float | None
        rate_limit: str | float | None
        max_concurrency: int | None
        expires: float | datetime | None
        track_started: bool | None
        typing: bool | None
        shared: bool | None

    run: Callable[..., R]
    _class_options: dict[str, Any] = {}
    _hooks = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # Class attributes that are options become defaults read through option(), so
        # that ``task.max_retries`` still answers with the effective value.
        super().__init_subclass__(**kwargs)
        own = {k: v for k, v in vars(cls).items()
               if k in TASK_OPTIONS and k not in NOT_CLASS_OPTIONS}
        for key in own:
            delattr(cls, key)
        cls._class_options = {**cls._class_options, **own}
        cls._hooks = any(getattr(cls, hook) is not getattr(Task, hook) for hook in HOOKS)

    def __init__(self, app: Localq, fun: Callable[..., R], options: dict[str, Any]) -> None:
        unknown = set(options) - set(TASK_OPTIONS)
        if unknown:
            raise ConfigurationError(f"unknown task option(s) {', '.join(sorted(unknown))} "
                                     f"for {fun.__qualname__}")
        self.app = app
        self.run = fun
        self.name: str = check_name(options.get("name") or task_name_for(fun), "name",
                                    f"@app.task for {fun.__qualname__}")
        self.__name__ = fun.__name__
        self.__qualname__ = fun.__qualname__
        self.__doc__ = fun.__doc__
        self.__module__ = fun.__module__
        self.__wrapped__ = fun
        self._declared = {k: v for k, v in options.items() if v is not None}
        given = {**self._class_options, **self._declared}
        for key, (value, meaning) in NO_EFFECT.items():
            if given.get(key, not value) == value:
                app.conf.warn_once(("task option", key),
                                   f"localq ignores {key}={value!r} (task {self.name}): {meaning}")
        self._cache: dict[str, Any] = {}
        self._cache_version = -1
        self._send_defaults: SendDefaults | None = None
        self._send_version = -1
        self._requests = _RequestStack()
        self._arity: _Arity | None | bool = None
        self._accept: tuple[int, frozenset[str], frozenset[str]] = (-1, frozenset(),
                                                                     frozenset())
        if "serializer" in given:
            check_serializer(given["serializer"])
        parse_rate(given.get("rate_limit"), where=f"rate_limit of {self.name}")

    # -------------------------------------------------------------- options

    def option(self, key: str) -> Any:
        """The effective value: annotations, then the decorator, then app settings."""
        conf = self.app.conf
        if self._cache_version != conf.version:
            self._cache = self._effective_options()
            self._cache_version = conf.version
        return self._cache[key]

    def send_defaults(self) -> SendDefaults:
        if self._send_version != self.app.conf.version:
            self._send_defaults = self.app.send_defaults(self)
            self._send_version = self.app.conf.version
        return self._send_defaults     # type: ignore[return-value]

    def accepted_content(self, result: bool = False) -> frozenset[str]:
        """The serializers this task's jobs (or, ``result=True``, results) may be decoded
        with: the app's ``accept_content`` (``result_accept_content``) plus the app's
        and this task's own declared serializers."""
        version, jobs, results = self._accept
        if version != self.app.conf.version:
            jobs, results = content_accepted(self.app.conf, self.option("serializer"))
            self._accept = (self.app.conf.version, jobs, results)
        return results if result else jobs

    def check_arguments(self, args: tuple | list, kwargs: Mapping) -> None:
        """Celery's ``typing``: a call that does not fit the function's signature is a
        TypeError at the call, naming the task, instead of a failure on the worker."""
        arity = self._arity
        if arity is None:
            arity = self._arity = _arity(self)
        if arity is False:
            return
        low, high, names, by_keyword, signature = arity     # type: ignore[misc]
        n = len(args)
        if n <= high:
            # What bind() would accept, decided in ~0.1-0.3 us instead of ~2 us: the
            # named arguments exist, none repeats a positional one, none required is
            # missing. Anything else goes to bind() for its exact message.
            if not kwargs:
                if n >= low:
                    return
            elif ((by_keyword is None or kwargs.keys() <= by_keyword)
                  and kwargs.keys().isdisjoint(names[:n])
                  and all(map(kwargs.__contains__, names[n:low]))):
                return
        try:
            signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"task {self.name!r} called with the wrong arguments: {exc} "
                            f"(it takes {self.__name__}{signature}). Nothing was stored; "
                            f"@app.task(typing=False) turns this check off.") from None

    def _effective_options(self) -> dict[str, Any]:
        conf = self.app.conf
        values = dict(TASK_OPTIONS)
        values.update({
            "priority": conf.task_default_priority, "ignore_result": conf.task_ignore_result,
            "serializer": conf.task_serializer, "acks_late": conf.task_acks_late,
            "reject_on_worker_lost": conf.task_reject_on_worker_lost,
            "time_limit": conf.task_time_limit, "soft_time_limit": conf.task_soft_time_limit,
            "rate_limit": conf.task_default_rate_limit,
        })
        values.update(self._class_options)
        values.update(self._declared)
        annotations = conf.task_annotations or {}
        for scope in ("*", self.name):      # the task's own annotation wins over "*"
            values.update((k, v) for k, v in (annotations.get(scope) or {}).items()
                          if k in ANNOTATABLE)
        return values

    if not TYPE_CHECKING:
        # Hidden from type checkers, so that a misspelt attribute is an error there; the
        # options are declared above.
        def __getattr__(self, key: str) -> Any:
            # max_retries, time_limit, ... read as attributes, as in Celery.
            if key in TASK_OPTIONS:
                return self.option(key)
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {key!r}")

    @property
    def request(self) -> Request:
        stack = self._requests.stack
        return stack[-1] if stack else Request()

    def push_request(self, request: Request) -> None:
        self._requests.stack.append(request)

    def pop_request(self) -> None:
        self._requests.stack.pop()

    # -------------------------------------------------------------- calling

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        if self.option("bind"):
            return self.run(self, *args, **kwargs)
        return self.run(*args, **kwargs)

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> AsyncResult[R]:
        return self.app.send_plain(self, args, kwargs)

    def apply_async(self, args: tuple | list | None = None, kwargs: dict | None = None, *,
                    countdown: float | None = None, eta: datetime | float | None = None,
                    expires: float | datetime | None = None, queue: str | None = None,
                    priority: int | None = None, task_id: str | None = None,
                    time_limit: float | None = None, soft_time_limit: float | None = None,
                    serializer: str | None = None, **ignored: Any) -> AsyncResult[R]:
        args, kwargs = check_call(self.name, args, kwargs)
        if "link" in ignored or "link_error" in ignored:     # callbacks: the canvas
            from .canvas import Signature
            given = {"countdown": countdown, "eta": eta, "expires": expires, "queue": queue,
                     "priority": priority, "task_id": task_id, "time_limit": time_limit,
                     "soft_time_limit": soft_time_limit, "serializer": serializer}
            return Signature(self, args, kwargs, {**{k: v for k, v in given.items()
                                                     if v is not None}, **ignored}
                             ).apply_async()
        if (countdown is None and eta is None and expires is None and queue is None
                and priority is None and task_id is None and time_limit is None
                and soft_time_limit is None and serializer is None and not ignored):
            return self.app.send_plain(self, args, kwargs)
        return self.app.send_job(self, args, kwargs,
                                 countdown=countdown, eta=eta, expires=expires, queue=queue,
                                 priority=priority, task_id=task_id, time_limit=time_limit,
                                 soft_time_limit=soft_time_limit, serializer=serializer,
                                 ignored=ignored)

    def apply(self, args: tuple | list | None = None, kwargs: dict | None = None,
              **options: Any) -> AsyncResult[R]:
        """Run here and now, through the serializer, like eager mode."""
        from .worker.execute import run_eager
        return run_eager(self, tuple(args or ()), dict(kwargs or {}), options)

    # -------------------------------------------------------------- the canvas

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        """A signature of a call (Celery's ``add.s(2, 2)``): see localq.canvas."""
        return _signature_type().of_call(self, args, kwargs, False)

    def si(self, *args: Any, **kwargs: Any) -> Signature:
        """An immutable signature: it ignores a parent's result in a chain or callback."""
        return _signature_type().of_call(self, args, kwargs, True)

    def signature(self, args: tuple | list | None = None, kwargs: dict | None = None,
                  immutable: bool = False, **options: Any) -> Signature:
        from .canvas import Signature
        return Signature(self, args, kwargs, options, immutable=immutable)

    subtask = signature

    def map(self, it: Any) -> Signature:
        """Celery's ``task.map(it)``: one job that returns ``[task(x) for x in it]``."""
        from .canvas import xmap
        return xmap(self.s(), it)

    def starmap(self, it: Any) -> Signature:
        """Celery's ``task.starmap(it)``: one job, ``[task(*args) for args in it]``."""
        from .canvas import xstarmap
        return xstarmap(self.s(), it)

    def chunks(self, it: Any, n: int) -> Signature:
        """Celery's ``task.chunks(it, n)``: the items in jobs of ``n``."""
        from .canvas import chunks
        return chunks(self.s(), it, n)

    def AsyncResult(self, task_id: str) -> AsyncResult[R]:  # noqa: N802 - Celery's name
        return self.app.AsyncResult(task_id)

    def encode_call(self, args: tuple, kwargs: dict, serializer: str | None = None) -> Any:
        return encode_call(serializer or self.option("serializer"), self.name, args, kwargs)

    # -------------------------------------------------------------- retrying

    def retry(self, args: Any = None, kwargs: Any = None, exc: BaseException | None = None,
              throw: bool = True, eta: datetime | float | None = None,
              countdown: float | None = None, max_retries: int | None = None,
              **options: Any) -> Retry:
        """Ask for another attempt: ``raise self.retry(exc=exc, countdown=10)``.
        ``args``/``kwargs``: the next attempt's arguments (each defaults to this one's).

        Past ``max_retries`` the original exception is raised (or
        :class:`MaxRetriesExceededError` when there is none).
        """
        request = self.request
        limit = self.option("max_retries") if max_retries is None else max_retries
        if request.called_directly:
            if exc is not None:
                raise exc
            raise MaxRetriesExceededError(f"{self.name}: retry() called outside a worker")
        if limit is not None and request.retries >= limit:
            if exc is not None:
                raise exc
            raise MaxRetriesExceededError(
                f"Can't retry {self.name}[{request.id}] args:{request.args} "
                f"kwargs:{request.kwargs}: max_retries={limit} reached")
        now = time.time()
        if eta is not None:
            when = eta_timestamp(eta, "eta", f"{self.name}.retry()")
        else:
            delay = self.option("default_retry_delay") if countdown is None else countdown
            when = now + seconds(delay or 0, "countdown", f"{self.name}.retry()")
        retry = Retry(exc=exc, when=max(when, now))     # a past ETA: run again now
        if args is not None or kwargs is not None:
            retry.call = (args, kwargs)      # type: ignore[attr-defined]  # see execute
        if throw:
            raise retry
        return retry

    def update_state(self, task_id: str | None = None, state: str | None = None,
                     meta: Any = None, **kwargs: Any) -> None:
        """Celery's: set a custom state (``state="PROGRESS", meta={"done": 3}``) of the
        running job (or of ``task_id``), read from any process as
        ``AsyncResult.state`` and ``.info`` until the job ends."""
        from .worker.execute import update_state
        update_state(self, task_id, state, meta)   # type: ignore[arg-type]

    # -------------------------------------------------------------- hooks

    def before_start(self, task_id: str, args: tuple, kwargs: dict) -> None:
        """Run in the worker's child (or eagerly) just before the task, with
        ``self.request`` the job's (Celery 5.2's). An exception here ends the job as
        one raised by the task would (a failure, a retry, Ignore)."""

    def on_success(self, retval: Any, task_id: str, args: tuple, kwargs: dict) -> None:
        """Run in the worker's child when the task returned ``retval``."""

    def on_failure(self, exc: BaseException, task_id: str, args: tuple, kwargs: dict,
                   einfo: ExceptionInfo) -> None:
        """Run in the worker's child when the task failed for good with ``exc``."""

    def on_retry(self, exc: BaseException, task_id: str, args: tuple, kwargs: dict,
                 einfo: ExceptionInfo) -> None:
        """Run in the worker's child when the task asked for another attempt."""

    def after_return(self, status: str, retval: Any, task_id: str, args: tuple, kwargs: dict,
                     einfo: ExceptionInfo | None) -> None:
        """Run in the worker's child after any of the above; ``retval`` is the value or
        the exception."""

    def __repr__(self) -> str:
        return f"<@task: {self.name} of {self.app.main_name}>"


HOOKS = ("before_start", "on_success", "on_failure", "on_retry", "after_return")


def to_timestamp(value: datetime | float | int) -> float:
    """An ETA as epoch seconds: an aware datetime, a naive one (UTC), or a number."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value.timestamp()
    return float(value)


def expires_at(expires: float | datetime, now: float) -> float:
    """``expires`` as epoch seconds: a datetime is a moment, a number is seconds from now."""
    return to_timestamp(expires) if isinstance(expires, datetime) else now + float(expires)


def content_accepted(conf: Any, serializer: str | None = None
                     ) -> tuple[frozenset[str], frozenset[str]]:
    """The serializers jobs and results of a task declaring ``serializer`` (None: a task
    this app does not define) may be decoded with, under the settings ``conf``."""
    declared = (conf.task_serializer, conf.result_serializer, serializer)
    results = conf.result_accept_content
    return (accepted(conf.accept_content, *declared),
            accepted(conf.accept_content if results is None else results, *declared))


def seconds(value: Any, option: str, where: str, *, positive: bool = False) -> float:
    """A finite number of seconds, or a clear error naming the option and the value."""
    if isinstance(value, bool) or not hasattr(type(value), "__float__"):
        raise TypeError(f"{where}: {option} must be a number of seconds, not "
                        f"{type(value).__name__} {value!r:.60}")
    number = float(value)
    if not math.isfinite(number) or (positive and number <= 0):
        allowed = "a number of seconds above 0" if positive else "a finite number of seconds"
        extra = " (None for no limit)" if positive else ""
        raise ConfigurationError(f"{where}: {option}={value!r} is not allowed: use "
                                 f"{allowed}{extra}")
    return number


def eta_timestamp(eta: Any, option: str, where: str) -> float:
    """An ETA (a datetime, or epoch seconds) as epoch seconds, checked."""
    if isinstance(eta, datetime):
        return to_timestamp(eta)
    return seconds(eta, option, where + " (a datetime, or seconds since the epoch)")


def check_call(name: str, args: Any, kwargs: Any) -> tuple[tuple, dict]:
    """apply_async's ``args`` and ``kwargs``: a list or tuple, and a dict with str keys
    (as Celery asks; JSON would quietly turn a key 1 into "1")."""
    if args is None:
        args = ()
    elif not isinstance(args, (tuple, list)):
        raise TypeError(f"task {name!r}: args must be a list or tuple, not "
                        f"{type(args).__name__} {args!r:.60} (one argument: args=(value,))")
    if kwargs is None:
        return tuple(args), {}
    if not isinstance(kwargs, Mapping):
        raise TypeError(f"task {name!r}: kwargs must be a dict, not "
                        f"{type(kwargs).__name__} {kwargs!r:.60}")
    for key in kwargs:
        if type(key) is not str:
            raise TypeError(f"task {name!r}: keyword argument names must be strings, not "
                            f"{type(key).__name__} {key!r:.60}")
    return tuple(args), dict(kwargs)


def check_name(value: Any, option: str, where: str) -> str:
    """A queue name or task id: a non-empty str that is valid UTF-8."""
    if not isinstance(value, str):
        raise TypeError(f"{where}: {option} must be a str, not {type(value).__name__} "
                        f"{value!r:.60}")
    if not value or not (value.isascii() or _is_utf8(value)):
        raise ConfigurationError(f"{where}: {option}={value!r:.60} is not allowed: use a "
                                 f"non-empty str of valid UTF-8")
    return value


def _is_utf8(text: str) -> bool:
    try:
        text.encode()
        return True
    except UnicodeEncodeError:
        return False


class _Arity(NamedTuple):
    low: int                        # positional arguments required
    high: int                       # positional arguments allowed
    names: tuple[str, ...]          # the positional parameters' names, in order
    by_keyword: frozenset[str] | None   # names accepted by keyword; None: any (**kwargs)
    signature: inspect.Signature


def _arity(task: Task) -> _Arity | bool:
    """What check_arguments needs of the task's function, or False when the check is
    off (typing=False) or the signature cannot be read."""
    if task.option("typing") is False:
        return False
    import inspect  # here: it costs `import localq` several ms, and is needed once
    try:
        signature = inspect.signature(task.run)
    except (TypeError, ValueError):
        return False
    params = list(signature.parameters.values())
    if task.option("bind"):
        params = params[1:]             # self
        signature = signature.replace(parameters=params)
    kinds = inspect.Parameter
    positional = [p for p in params if p.kind in (kinds.POSITIONAL_ONLY,
                                                  kinds.POSITIONAL_OR_KEYWORD)]
    low = sum(p.default is kinds.empty for p in positional)
    high = sys.maxsize if any(p.kind is kinds.VAR_POSITIONAL for p in params) \
        else len(positional)
    if any(p.kind is kinds.KEYWORD_ONLY and p.default is kinds.empty for p in params) or \
            any(p.kind is kinds.POSITIONAL_ONLY for p in params):
        low, high = 1, -1               # rare shapes: always bind()
    by_keyword = None if any(p.kind is kinds.VAR_KEYWORD for p in params) else frozenset(
        p.name for p in params if p.kind in (kinds.POSITIONAL_OR_KEYWORD, kinds.KEYWORD_ONLY))
    return _Arity(low, high, tuple(p.name for p in positional), by_keyword, signature)


def check_priority(priority: Any, where: str) -> int:
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise TypeError(f"{where}: priority must be an integer from 0 to 9 (9 runs first), "
                        f"not {type(priority).__name__} {priority!r:.60}")
    if not 0 <= priority <= 9:
        raise ConfigurationError(f"{where}: priority must be an integer from 0 to 9 (9 runs "
                                 f"first), not {priority!r}")
    return priority


def job_options(task: Task, time_limit: float | None, soft_time_limit: float | None) -> str | None:
    """The options that travel with a job: per-call limits, and acks_late when False."""
    return encode_options(time_limit, soft_time_limit, bool(task.option("acks_late")))


@functools.cache
def _signature_type() -> type[Signature]:
    """canvas.Signature, imported once (canvas imports this module): ``task.s()`` is
    called once per member of a group of 100,000."""
    from .canvas import Signature
    return Signature
