"""Running one job: decode, call the task, and turn what happened into an outcome.

Used by the child processes and by eager mode, so that both go through the
same serializer, the same retry rules and the same errors: an eager test
cannot pass where a real worker would fail. A Task subclass's hooks
(``before_start``, ``on_success``, ``on_failure``, ``on_retry``, ``after_return``)
run here too, while ``task.request`` is still the job's.

A task that raises ``Ignore`` or ``Reject`` ends its job itself, and it ends here
in a final state (or, ``Reject(requeue=True)``, back in its queue): SUCCESS or
FAILURE when the task set one with ``update_state`` first (held here, not shown
while the task runs), else REVOKED. See ``_self_ended``.

Whatever a job brings or leaves becomes an outcome the supervisor can store: a
payload in a serializer the app does not accept is refused undecoded
(ContentDisallowed), a result that does not encode (a set in JSON, a lone
surrogate) fails the job with EncodeError, an invalid retry request (an ETA of
NaN) fails it too, and exception text is made valid UTF-8.
"""
from __future__ import annotations

import logging
import math
import os
import signal
import time
import traceback as tb_module
from typing import TYPE_CHECKING, Any

from ..builtins import builtin
from ..exceptions import (
    ConfigurationError,
    EncodeError,
    Ignore,
    NotRegistered,
    Reject,
    Retry,
    SoftTimeLimitExceeded,
    TaskError,
    TaskRevokedError,
)
from ..limits import backoff_countdown
from ..serializer import (
    check_accepted,
    decode_call,
    encode_call,
    encode_exception,
    encode_value,
    exception_from_fields,
    exception_type_name,
    safe_text,
    why,
)
from ..signals import task_failure, task_postrun, task_prerun, task_retry, task_success
from ..store import records
from ..store.records import Outcome
from ..task import ExceptionInfo, Request, check_call
from . import protocol

if TYPE_CHECKING:
    from ..task import Task
    from .options import WorkerApp


log = logging.getLogger("localq.worker")
# The worker's node name (``-n/--hostname``), set by the supervisor before its children
# fork: ``self.request.hostname``. None in eager mode, as in Celery.
hostname: list[str | None] = [None]
# In a worker's child: its channel to the supervisor (set by child_main), for
# update_state; and the seq and serializer of the job running here.
channel: list[Any] = [None]
_current: list[Any] = [0, "json"]
# States localq records itself: update_state may not set them.
OWN_STATES = frozenset(("PENDING", "RETRY", "REVOKED"))
# Final states a task may set for itself, to end with them by raising Ignore (Celery's
# idiom); held here, (state, meta), until the job ends: a job is final once.
HELD_STATES = frozenset(("SUCCESS", "FAILURE"))
_held: list[tuple[str, Any] | None] = [None]
# What a task raises to end its own job: only after_return and task_postrun follow, as
# in Celery (no on_success/on_failure, no errbacks, no retry).
SELF_ENDED = (Ignore, Reject)
IGNORED = "ignored: the task raised Ignore without setting a final state first"

def _soft_limit_handler(signum: int, frame: Any) -> None:
    raise SoftTimeLimitExceeded("soft time limit exceeded")


def install_soft_limit_handler() -> None:
    signal.signal(signal.SIGALRM, _soft_limit_handler)


def execute(app: WorkerApp, seq: int, job_id: str, task_name: str, serializer: str, payload: Any,
            options: dict | None, retries: int, pid: int, soft_limit: float | None,
            is_eager: bool = False) -> Outcome:
    """Run one job and return its outcome tuple. Never raises for task errors."""
    started = time.time()
    task = app.tasks.get(task_name) or builtin(app, task_name)
    if task is None:
        exc: BaseException = NotRegistered(
            f"task {task_name!r} is not registered in the worker's app {app.main_name!r}: "
            f"import the module that defines it in the app (imports=[...]) or check the name")
        return _failure(seq, "json", exc, None, started, pid)
    plan = getattr(task, "_execute_plan", _NO_PLAN)
    if plan[0] != app.conf.version:
        plan = task._execute_plan = _plan(app, task)  # type: ignore[attr-defined]
    _, accept, ignore_result, result_serializer = plan
    if serializer not in accept:
        # Only what the app opted in to: a row saying "pickle" must not run code in a
        # worker whose app accepts JSON alone.
        try:
            check_accepted(serializer, accept, f"the arguments of job {job_id} ({task_name})",
                           "accept_content")
        except Exception as exc:
            return _failure(seq, "json", exc, None, started, pid)
    try:
        args, kwargs = decode_call(serializer, payload)
    except Exception as exc:
        return _failure(seq, serializer, exc, tb_module.format_exc(), started, pid)
    options = options or {}
    _current[0], _current[1] = seq, serializer
    request = Request(id=job_id, task=task_name, args=args, kwargs=kwargs, retries=retries,
                      is_eager=is_eager, options=options, hostname=hostname[0],
                      eta=_iso(options.get("eta")))
    task.push_request(request)
    outer, _held[0] = _held[0], None     # a task may run another eagerly (apply())
    try:
        if task_prerun.receivers:
            task_prerun.send(task, task_id=job_id, task=task, args=args, kwargs=kwargs)
        outcome, value, error, tb = _run(task, seq, serializer, args, kwargs, soft_limit,
                                         started, pid, ignore_result,
                                         result_serializer or serializer)
        if task._hooks:     # a Task subclass's hooks, still inside the job's request
            outcome = _call_hooks(task, outcome, value, error, tb, job_id, args, kwargs,
                                  serializer, started, pid)
        if outcome.state == "FAILURE" and options and options.get("errbacks") \
                and not isinstance(error, SELF_ENDED):
            _call_errbacks(app, request, error, tb, options["errbacks"])
        if task_postrun.receivers or task_success.receivers or task_failure.receivers \
                or task_retry.receivers:
            _send_signals(task, request, outcome, value, error, tb)
        return outcome
    finally:
        _held[0] = outer
        task.pop_request()


def update_state(task: Task, task_id: str | None, state: str, meta: Any) -> None:
    """``self.update_state``: a custom state (e.g. PROGRESS) and its meta, readable from
    any process as ``AsyncResult.state`` and ``.info`` while the job runs. In a worker's
    child it goes to the supervisor, which writes it with its next transaction (the child
    never opens the database); elsewhere it is written here, if the job is running.

    SUCCESS or FAILURE, for the running job itself only, is held until the task ends: a
    task that then raises Ignore ends in it (Celery's way of storing a result by hand);
    a task that returns, fails or retries ends as it does, and a later custom state
    replaces the held one (the last state set wins, as in Celery)."""
    if not isinstance(state, str) or not state or state in OWN_STATES:
        raise ValueError(f"update_state(state={state!r}): use a state of your own, such as "
                         f"'PROGRESS' (localq records {', '.join(sorted(OWN_STATES))} "
                         f"itself; STARTED is allowed, to attach meta; SUCCESS and FAILURE "
                         f"only before raise Ignore())")
    request = task.request
    job_id = task_id or request.id
    if job_id is None:
        raise ValueError(f"{task.name}.update_state() outside a job: pass task_id=")
    running_here = job_id == request.id and not request.called_directly
    if state in HELD_STATES:
        if not running_here:
            raise ValueError(f"{task.name}.update_state(state={state!r}): a job's final "
                             f"state is set only by the task running it, for itself, "
                             f"before raise Ignore() (job {job_id} is not running here); "
                             f"for progress, use a state of your own, such as 'PROGRESS'")
        _held[0] = (state, meta)
        return
    if running_here:
        _held[0] = None         # the last state the task set for itself wins
    if running_here and request.is_eager:
        return          # eager mode stores nothing, as for results
    serializer = task.app.conf.result_serializer or (
        _current[1] if running_here else task.option("serializer"))
    try:
        encoded = encode_value(serializer, meta)
    except Exception as exc:                      # raised in the task, which may catch it
        raise EncodeError(f"{task.name}.update_state(state={state!r}): the meta cannot be "
                          f"encoded with the {serializer} serializer ({why(exc)}): pass "
                          f"plain data, such as {{'done': 3, 'total': 10}}") from None
    if running_here and channel[0] is not None:
        protocol.send(channel[0], protocol.state_message(_current[0], state, encoded))
    else:
        task.app.store.set_task_state(job_id, state, encoded, time.time())  # type: ignore[attr-defined]


def _iso(eta: float | None) -> str | None:
    """Celery's ``request.eta``: the ISO 8601 time the job was sent to run at, or None."""
    if not eta:
        return None
    from datetime import datetime, timezone
    return datetime.fromtimestamp(eta, timezone.utc).isoformat()


def _send_signals(task: Task, request: Request, outcome: Outcome, value: Any,
                  exc: BaseException | None, tb: str | None) -> None:
    """task_success, task_failure or task_retry, then task_postrun, with Celery's
    arguments, in the process that ran the job (task_postrun alone when the task ended
    itself: Ignore, Reject)."""
    state, args, kwargs = outcome.state, request.args, request.kwargs
    if isinstance(exc, SELF_ENDED):
        pass
    elif state == "SUCCESS":
        task_success.send(task, result=value)
    elif state == "FAILURE":
        exc = exc if exc is not None else Exception(outcome.exc_message)
        task_failure.send(task, task_id=request.id, exception=exc, args=args, kwargs=kwargs,
                          traceback=exc.__traceback__, einfo=ExceptionInfo(exc, tb))
    elif state == "RETRY":
        reason = exc.exc if isinstance(exc, Retry) and exc.exc is not None else exc
        task_retry.send(task, request=request, reason=reason,
                        einfo=ExceptionInfo(reason, outcome.traceback) if reason else None)
    task_postrun.send(task, task_id=request.id, task=task, args=args, kwargs=kwargs,
                      retval=value if state == "SUCCESS" else exc, state=state)


# What execute() asks of a task for every job, asked once per version of the app's
# settings (each lookup through options and settings costs ~0.5 us; together a fifth of
# a child's time per no-op job): (version, accepted serializers, ignore_result, the
# result serializer if one is set). Kept on the task, as its own option cache is.
_Plan = tuple[int, frozenset[str], bool, str | None]
_NO_PLAN: _Plan = (-1, frozenset(), False, None)


def _plan(app: WorkerApp, task: Task) -> _Plan:
    return (app.conf.version, task.accepted_content(), bool(task.option("ignore_result")),
            app.conf.result_serializer)


def _run(task: Task, seq: int, serializer: str, args: tuple | list, kwargs: dict,
         soft_limit: float | None, started: float, pid: int, ignore_result: bool,
         result_serializer: str) -> tuple[Outcome, Any, BaseException | None, str | None]:
    """Call the task (after its before_start hook, which may fail it as the task may):
    (outcome, its value, the exception that ended it, its traceback)."""
    try:
        if soft_limit:
            signal.setitimer(signal.ITIMER_REAL, soft_limit)
        try:
            if task._hooks:
                task.before_start(task.request.id, tuple(args), kwargs)   # type: ignore[arg-type]
            value = task(*args, **kwargs)
        finally:
            if soft_limit:
                signal.setitimer(signal.ITIMER_REAL, 0)
    except SELF_ENDED as asked:
        return _self_ended(task, seq, serializer, asked, started, pid, ignore_result,
                           result_serializer)
    except Retry as asked:
        return _retry(task, seq, serializer, asked, started, pid), None, asked, None
    except Exception as exc:
        auto = _autoretry(task, exc)
        if isinstance(auto, Retry):
            return _retry(task, seq, serializer, auto, started, pid), None, auto, None
        # retry() itself raised when max_retries was reached: that is the failure
        final = auto if auto is not None else exc
        tb = tb_module.format_exc()
        return _failure(seq, serializer, final, tb, started, pid), None, final, tb
    return _succeeded(task, seq, serializer, value, started, pid, ignore_result,
                      result_serializer)


def _succeeded(task: Task, seq: int, serializer: str, value: Any, started: float, pid: int,
               ignore_result: bool, result_serializer: str
               ) -> tuple[Outcome, Any, BaseException | None, str | None]:
    """A SUCCESS with ``value`` (the task's, or the meta it set before Ignore), or a
    FAILURE if the value cannot be encoded."""
    if ignore_result:
        return records.succeeded(seq, None, started, time.time(), pid), value, None, None
    try:
        result = encode_value(result_serializer, value)
    except Exception as exc:
        err = EncodeError(f"the result of task {task.name!r} cannot be encoded with the "
                          f"{result_serializer} serializer: {why(exc)} (value: "
                          f"{value!r:.80}). Return plain data, or opt in to "
                          f"serializer='pickle'.")
        return _failure(seq, serializer, err, None, started, pid), None, err, None
    return records.succeeded(seq, result, started, time.time(), pid), value, None, None


def _self_ended(task: Task, seq: int, serializer: str, asked: Ignore | Reject, started: float,
                pid: int, ignore_result: bool, result_serializer: str
                ) -> tuple[Outcome, Any, BaseException | None, str | None]:
    """The task raised Ignore or Reject: (outcome, value, the Ignore or Reject, traceback).

    Where Celery leaves such a job in limbo (its state as it was, or PENDING), here it
    ends: Ignore ends it in the final state the task held (``update_state``), else
    REVOKED; Reject puts it back (requeue) or ends it REVOKED. Logged as Celery does."""
    held, _held[0] = _held[0], None
    request = task.request
    if isinstance(asked, Reject):
        log.warning("Task %s[%s] %r", task.name, request.id, asked)
        if asked.requeue:
            return records.put_back(seq), None, asked, None
        return revoked_outcome(seq, serializer, f"rejected: {asked.reason}", time.time(), pid,
                               started), None, asked, None
    log.info("Task %s[%s] ignored", task.name, request.id)
    if held is None:
        return revoked_outcome(seq, serializer, IGNORED, time.time(), pid, started), None, \
            asked, None
    state, meta = held
    if state == "SUCCESS":
        outcome, value, _, tb = _succeeded(task, seq, serializer, meta, started, pid,
                                           ignore_result, result_serializer)
        return outcome, value, asked, tb
    exc = held_exception(meta)
    tb = "".join(tb_module.format_exception(exc)) if exc.__traceback__ is not None else None
    return _failure(seq, serializer, exc, tb, started, pid), None, asked, tb


def held_exception(meta: Any) -> BaseException:
    """The exception of ``update_state(state="FAILURE", meta=...)``: ``meta`` itself, or
    Celery's stored form (``{"exc_type": "ValueError", "exc_message": ...}``, the class
    found among the modules already imported), else a TaskError holding ``meta``."""
    if isinstance(meta, BaseException):
        return meta
    if isinstance(meta, dict) and isinstance(meta.get("exc_type"), str):
        name, module = meta["exc_type"], meta.get("exc_module")
        if isinstance(module, str) and module != "builtins" and "." not in name:
            name = f"{module}.{name}"
        message = meta.get("exc_message", "")
        args = list(message) if isinstance(message, (list, tuple)) else [message]
        return exception_from_fields(name, args, " ".join(map(str, args)))
    return TaskError("FAILURE", f"update_state(state='FAILURE', meta={meta!r:.200})")


def _call_hooks(task: Task, outcome: Outcome, value: Any, exc: BaseException | None,
                tb: str | None, job_id: str, args: tuple | list, kwargs: dict, serializer: str,
                started: float, pid: int) -> Outcome:
    """Celery's task hooks, with Celery's signatures and order: on_success,
    on_failure or on_retry, then after_return (not after a retry). As in Celery, an
    on_success that raises fails the job; an error in another hook is logged and the
    outcome stands. A job the task ended itself (Ignore, Reject) gets after_return
    alone, with the Ignore or Reject as its value (Celery's)."""
    state, args = outcome.state, tuple(args)
    if isinstance(exc, SELF_ENDED):
        _logged(task.after_return, state, exc, job_id, args, kwargs, None)
        return outcome
    if state == "SUCCESS":
        try:
            task.on_success(value, job_id, args, kwargs)
        except Exception as hook_exc:
            tb = tb_module.format_exc()
            outcome, exc, state = (_failure(outcome.seq, serializer, hook_exc, tb, started, pid),
                                   hook_exc, "FAILURE")
    if state == "RETRY":
        assert isinstance(exc, Retry)
        reason = exc.exc if exc.exc is not None else exc    # retry() without exc=
        _logged(task.on_retry, reason, job_id, args, kwargs,
                ExceptionInfo(reason, outcome.traceback))
        return outcome
    if state == "FAILURE":
        assert exc is not None
        _logged(task.on_failure, exc, job_id, args, kwargs, ExceptionInfo(exc, tb))
    _logged(task.after_return, state, value if state == "SUCCESS" else exc, job_id, args,
            kwargs, None)
    return outcome


def _call_errbacks(app: WorkerApp, request: Request, exc: BaseException | None,
                   tb: str | None, errbacks: list) -> None:
    """Celery's new-style errbacks (``link_error`` to a task taking request, exc,
    traceback): called here, in the worker, with the failed job's request."""
    for errback in errbacks:
        task = app.tasks.get(errback.get("task"))
        if task is None:
            log.error("link_error %s of job %s: no such task in this worker",
                      errback.get("task"), request.id)
            continue
        _logged(task, request, exc, tb, *errback.get("args", ()), **errback.get("kwargs", {}))


def _logged(hook: Any, *args: Any) -> None:
    try:
        hook(*args)
    except Exception:
        log.exception("%s raised (the job's outcome stands)", getattr(hook, "__qualname__",
                                                                      hook))


def _autoretry(task: Task, exc: Exception) -> BaseException | None:
    """Celery's autoretry_for: a Retry, the exception retry() raised, or None."""
    autoretry = task.option("autoretry_for")
    if not autoretry or not isinstance(exc, tuple(autoretry)):
        return None
    dont = task.option("dont_autoretry_for")
    if dont and isinstance(exc, tuple(dont)):
        return None
    kwargs = dict(task.option("retry_kwargs") or {})
    backoff = task.option("retry_backoff")
    if backoff:
        kwargs["countdown"] = backoff_countdown(
            task.request.retries, float(backoff), float(task.option("retry_backoff_max")),
            bool(task.option("retry_jitter")))
    try:
        task.retry(exc=exc, **kwargs)
    except Retry as retry:
        return retry
    except BaseException as final:
        return final
    return None


def _retry(task: Task, seq: int, serializer: str, retry: Retry, started: float,
           pid: int) -> Outcome:
    exc = retry.exc
    now = time.time()
    when = retry.when or now
    if not isinstance(when, (int, float)) or not math.isfinite(when):
        # Retry(when=nan) raised by hand: the request is invalid, and ends the job
        return _failure(seq, serializer, ConfigurationError(
            f"retry requested with an ETA of {when!r}: not a finite time"), None, started, pid)
    payload = None               # None: the next attempt gets the same arguments
    call = getattr(retry, "call", None)
    if call is not None:         # retry(args=..., kwargs=...): the next attempt's
        request = task.request
        args = request.args if call[0] is None else call[0]
        kwargs = request.kwargs if call[1] is None else call[1]
        try:
            payload = encode_call(serializer, task.name, *check_call(task.name, args, kwargs))
        except Exception as err:
            return _failure(seq, serializer, err, tb_module.format_exc(), started, pid)
    exc_type = exception_type_name(exc) if exc is not None else "localq.exceptions.Retry"
    tb = "".join(tb_module.format_exception(exc)) if exc is not None else None
    when = max(when, now)
    # The next attempt's options carry its ETA (its request.eta), as Celery's new message does
    options = records.encode_with_eta(task.request.options, when)
    return records.retrying(seq, exc_type, safe_text(tb), started, now, pid, when,
                            safe_text(str(exc)) if exc is not None else "retry requested",
                            payload, options)


def revoked_outcome(seq: int, serializer: str, why: str, ended: float,
                    pid: int | None = None, started: float | None = None) -> Outcome:
    """A job that ends REVOKED without running (revoked, expired), terminated, or that
    ended itself so (Ignore, Reject: ``started`` is when it started)."""
    return records.revoked(seq, encode_exception(serializer, TaskRevokedError(why)), ended,
                           pid, why, started)


def _failure(seq: int, serializer: str, exc: BaseException, tb: str | None, started: float,
             pid: int) -> Outcome:
    return records.failed(seq, encode_exception(serializer, exc), exception_type_name(exc),
                          safe_text(tb), started, time.time(), pid, safe_text(str(exc)))


class LimitCache:
    """job_limits() for jobs without per-call options, remembered per task until the
    app's settings change: the supervisor and the children ask for every job."""

    def __init__(self, app: WorkerApp) -> None:
        self.app = app
        self.version = -1
        self.by_task: dict[str, tuple[dict, float | None, float | None]] = {}

    def get(self, task_name: str, options: str | None) -> tuple[dict, float | None,
                                                               float | None]:
        if options is not None:          # per-call limits travel with the job
            return job_limits(self.app.tasks.get(task_name), options)
        if self.version != self.app.conf.version:
            self.version = self.app.conf.version
            self.by_task.clear()
        try:
            return self.by_task[task_name]
        except KeyError:
            limits = job_limits(self.app.tasks.get(task_name), None)
            self.by_task[task_name] = limits
            return limits


def job_limits(task: Task | None, options: str | None
               ) -> tuple[dict, float | None, float | None]:
    """(per-call options, soft limit, hard limit) for a job: the call's, else the
    task's (annotations, decorator, then the settings the worker set)."""
    opts = records.decode_options(options)
    soft = opts.get("soft_time_limit")
    hard = opts.get("time_limit")
    if task is not None:
        soft = soft if soft is not None else task.option("soft_time_limit")
        hard = hard if hard is not None else task.option("time_limit")
    return opts, (float(soft) if soft else None), (float(hard) if hard else None)


def run_eager(task: Task, args: tuple, kwargs: dict, options: dict) -> Any:
    """Eager mode: run here, but through the serializer and the same retry rules, so
    that what fails on a worker fails here too. Retries run at once, and so does a job
    that rejected itself with requeue (not counted as a retry)."""
    from ..ids import new_id
    from ..result import EagerResult
    serializer = options.get("serializer") or task.option("serializer")
    payload = encode_call(serializer, task.name, args, kwargs)   # same TypeError as delay()
    job_id = options.get("task_id") or new_id()
    retries = 0
    while True:
        outcome = execute(task.app, 0, job_id, task.name, serializer, payload, None, retries,
                          os.getpid(), None, is_eager=True)
        if outcome.state == "PENDING":          # Reject(requeue=True): again, as it was
            continue
        if outcome.state != "RETRY":
            break
        if outcome.result[0] is not None:      # retry(args=..., kwargs=...)
            payload = outcome.result[0]
        retries += 1
    state, result, exc_type, tb = outcome.state, outcome.result, outcome.exc_type, \
        outcome.traceback
    eager: EagerResult[Any] = EagerResult(job_id, task.app, state, serializer, result,
                                          exc_type, tb, retries, task.name)
    if state == "FAILURE" and task.app.conf.task_eager_propagates:
        raise eager.result      # Celery's task_eager_propagates: raise at the call
    return eager
