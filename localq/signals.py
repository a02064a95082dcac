"""Signals with Celery's API, names, senders and arguments (``celery.signals``).

``@task_success.connect`` (or ``connect(handler, sender=...)``) registers a
receiver; ``send(sender, **named)`` calls every receiver connected for that
sender (or for any sender) as ``receiver(signal=..., sender=..., **named)`` and
returns ``[(receiver, response), ...]``. As in Celery, an exception a receiver
raises is logged and returned in place of its response: a broken handler never
fails a job or stops a worker. A sender given as a string (a task name) matches
by value, any other by identity, as in Celery. Receivers are held by strong
references (Celery holds them weakly by default: ``weak=`` is accepted).

Where each is sent (the process matters: a receiver runs where its signal is sent):

- the producer (the process that calls ``delay``/``apply_async``/``send_task``):
  ``before_task_publish``, ``after_task_publish`` (sender: the task's name);
- the worker's child that runs the job (the caller, in eager mode):
  ``task_prerun``, ``task_postrun``, ``task_success``, ``task_failure``,
  ``task_retry`` (sender: the task);
- the supervisor: ``task_revoked`` (sender: the task, or None for a task it does
  not know), ``worker_init`` (before the children start), ``worker_ready``,
  ``worker_shutdown`` (sender: the worker);
- each child, once: ``worker_process_init`` right after the fork, before its
  first job (the place to open a database connection of the task's own), and
  ``worker_process_shutdown`` as it exits (``pid``, ``exitcode``).

The app's own ``app.on_after_configure`` and ``app.on_after_finalize`` are
Signals too (see ``Localq.finalize``).
"""
from __future__ import annotations

import logging
from typing import Any, Callable

log = logging.getLogger("localq.signals")

_ANY = object()      # the key of receivers connected for every sender


def _key(sender: Any) -> Any:
    """How a sender is matched: a string by its value, anything else by identity."""
    if sender is None:
        return _ANY
    return sender if isinstance(sender, (str, bytes)) else id(sender)


class Signal:
    """Celery's ``Signal``: ``connect``, ``disconnect``, ``send``."""

    def __init__(self, name: str | None = None, providing_args: Any = None) -> None:
        self.name = name or "signal"
        # (receiver key, sender key, receiver); a list: few receivers, kept in order
        self.receivers: list[tuple[Any, Any, Callable[..., Any]]] = []

    def __repr__(self) -> str:
        return f"<Signal: {self.name}>"

    def connect(self, receiver: Callable[..., Any] | None = None, sender: Any = None,
                weak: bool = True, dispatch_uid: Any = None) -> Any:
        """``sig.connect(fun)``, ``@sig.connect`` or ``@sig.connect(sender=...)``.
        Returns the receiver (so that the decorated function stays itself)."""
        if receiver is None:
            def decorate(fun: Callable[..., Any]) -> Callable[..., Any]:
                return self.connect(fun, sender=sender, weak=weak, dispatch_uid=dispatch_uid)
            return decorate
        if not callable(receiver):
            raise TypeError(f"{self.name}.connect: the receiver must be callable, not "
                            f"{type(receiver).__name__}")
        ident = (dispatch_uid if dispatch_uid is not None else id(receiver), _key(sender))
        if not any(r[0] == ident for r in self.receivers):
            self.receivers.append((ident, ident[1], receiver))
        return receiver

    def disconnect(self, receiver: Callable[..., Any] | None = None, sender: Any = None,
                   weak: bool = True, dispatch_uid: Any = None) -> bool:
        """Remove a receiver connected with the same ``sender`` (or ``dispatch_uid``);
        True if one was removed."""
        ident = (dispatch_uid if dispatch_uid is not None else id(receiver), _key(sender))
        before = len(self.receivers)
        self.receivers = [r for r in self.receivers if r[0] != ident]
        return len(self.receivers) != before

    def send(self, sender: Any, **named: Any) -> list[tuple[Callable[..., Any], Any]]:
        """Call the receivers for ``sender`` and for any sender, in the order they
        were connected."""
        if not self.receivers:
            return []
        key = _key(sender)
        responses = []
        for _, wanted, receiver in list(self.receivers):
            if wanted is not _ANY and wanted != key:
                continue
            try:
                response = receiver(signal=self, sender=sender, **named)
            except Exception as exc:
                log.exception("Signal handler %r raised: %r", receiver, exc)
                response = exc
            responses.append((receiver, response))
        return responses

    send_robust = send


before_task_publish = Signal("before_task_publish")
after_task_publish = Signal("after_task_publish")
task_prerun = Signal("task_prerun")
task_postrun = Signal("task_postrun")
task_success = Signal("task_success")
task_failure = Signal("task_failure")
task_retry = Signal("task_retry")
task_revoked = Signal("task_revoked")
worker_init = Signal("worker_init")
worker_ready = Signal("worker_ready")
worker_shutdown = Signal("worker_shutdown")
worker_process_init = Signal("worker_process_init")
worker_process_shutdown = Signal("worker_process_shutdown")

__all__ = ["Signal", "before_task_publish", "after_task_publish", "task_prerun",
           "task_postrun", "task_success", "task_failure", "task_retry", "task_revoked",
           "worker_init", "worker_ready", "worker_shutdown", "worker_process_init",
           "worker_process_shutdown"]
