"""Settings: Celery's lowercase names where they mean something on one host.

``app.conf`` reads and writes like Celery's (``app.conf.task_default_queue``,
``app.conf.update(...)``, ``app.config_from_object(...)``). An unknown name is
an error that names it; a Celery setting that means nothing here (a broker
URL, a prefetch multiplier) is accepted with one warning, so an existing
Celery configuration module loads unchanged.
"""
from __future__ import annotations

import difflib
import importlib
import warnings
from typing import Any, Iterator, Mapping

from .exceptions import ConfigurationError

DEFAULTS: dict[str, Any] = {
    "task_default_queue": "default",
    "task_default_priority": 0,
    "task_serializer": "json",
    "result_serializer": None,          # None: the task's serializer
    "accept_content": ("json",),        # decoded by workers; declared serializers add to it
    "result_accept_content": None,      # None: accept_content
    "task_acks_late": True,
    "task_reject_on_worker_lost": False,
    "task_ignore_result": False,
    "task_time_limit": None,
    "task_soft_time_limit": None,
    "task_default_rate_limit": None,
    "task_annotations": None,
    "task_routes": None,
    "task_always_eager": False,
    "task_eager_propagates": False,
    "task_store_eager_result": False,
    "result_expires": 86400,            # seconds; None or 0 keeps results forever
    "worker_concurrency": None,         # None: the number of CPUs
    "worker_max_tasks_per_child": None,
    "worker_max_memory_per_child": None,  # KiB of resident memory, as in Celery
    "worker_hijack_root_logger": True,
    "imports": (),
    "include": (),
    # localq's own
    "database_synchronous": "NORMAL",   # FULL: survive power loss, ~10x slower enqueue
    "worker_heartbeat_interval": 2.0,
    "worker_lost_after": 30.0,          # a silent worker is presumed dead after this
}

# Celery settings that have no meaning on one host with one SQLite file.
IGNORED = {
    "broker_url", "broker_transport", "broker_transport_options", "broker_connection_retry",
    "broker_connection_retry_on_startup", "broker_connection_max_retries", "broker_pool_limit",
    "broker_heartbeat", "broker_use_ssl", "broker_login_method", "broker_read_url",
    "broker_write_url", "result_backend", "result_backend_transport_options",
    "result_extended", "result_persistent", "result_compression",
    "result_cache_max", "task_compression", "task_track_started",
    "task_send_sent_event", "task_create_missing_queues", "task_queues", "task_default_exchange",
    "task_default_exchange_type", "task_default_routing_key", "task_default_delivery_mode",
    "worker_prefetch_multiplier", "worker_send_task_events", "worker_pool",
    "worker_pool_restarts", "worker_disable_rate_limits", "worker_enable_remote_control",
    "worker_cancel_long_running_tasks_on_connection_loss", "worker_redirect_stdouts",
    "worker_redirect_stdouts_level", "worker_direct", "worker_timer_precision",
    "worker_state_db", "worker_log_format", "worker_task_log_format", "timezone", "enable_utc",
    "event_queue_expires", "event_queue_ttl", "event_serializer", "security_key",
    "security_certificate", "security_cert_store", "control_queue_ttl", "beat_schedule",
    "beat_scheduler", "beat_max_loop_interval", "redis_max_connections", "redis_socket_timeout",
}


class Settings(Mapping[str, Any]):
    """``app.conf``: attribute or item access, checked names."""

    def __init__(self) -> None:
        object.__setattr__(self, "_values", dict(DEFAULTS))
        object.__setattr__(self, "_warned", set())
        object.__setattr__(self, "version", 0)   # bumped on every change: caches key on it

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(_unknown_message(name)) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self.update({name: value})

    def __getitem__(self, name: str) -> Any:
        if name not in self._values:
            raise KeyError(_unknown_message(name))
        return self._values[name]

    def __setitem__(self, name: str, value: Any) -> None:
        self.update({name: value})

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def update(self, other: Mapping[str, Any] | None = None, **kwargs: Any) -> None:  # type: ignore[override]
        items = dict(other or {}, **kwargs)
        for name in items:   # check all before changing any
            if name not in DEFAULTS and name not in IGNORED:
                raise ConfigurationError(_unknown_message(name))
        for name, value in items.items():
            if name in IGNORED:
                if name not in self._warned:
                    self._warned.add(name)
                    warnings.warn(f"localq ignores the Celery setting {name!r}: it has no "
                                  f"meaning with one SQLite file on one host", stacklevel=3)
                continue
            self._values[name] = _check(name, value)
        object.__setattr__(self, "version", self.version + 1)

    def from_object(self, obj: Any, namespace: str | None = None) -> None:
        if isinstance(obj, str):
            obj = _import_object(obj)
        prefix = f"{namespace}_" if namespace else ""
        items: dict[str, Any] = {}
        names = obj.keys() if isinstance(obj, Mapping) else dir(obj)
        for key in names:
            if key.startswith("_") or (prefix and not key.startswith(prefix)):
                continue
            name = key[len(prefix):]
            if namespace:
                name = name.lower()
            elif not name.islower():
                continue     # like Celery: only lowercase names are settings
            value = obj[key] if isinstance(obj, Mapping) else getattr(obj, key)
            if callable(value) and not isinstance(value, type) and name not in DEFAULTS:
                continue     # helper functions in a config module
            if type(value).__name__ == "module":
                continue
            items[name] = value
        self.update(items)


def _check(name: str, value: Any) -> Any:
    if name in ("imports", "include"):
        if isinstance(value, str):
            return (value,)
        return tuple(value or ())
    if name in ("task_serializer", "result_serializer") and value is not None:
        from .serializer import check_serializer
        return check_serializer(value)
    if name == "accept_content" or (name == "result_accept_content" and value is not None):
        from .serializer import check_content_names
        return check_content_names(value, name)
    if name == "task_default_rate_limit":
        from .limits import parse_rate
        parse_rate(value, where=name)
    if name == "task_annotations" and value is not None:
        if not isinstance(value, Mapping) or not all(isinstance(v, Mapping)
                                                      for v in value.values()):
            raise ConfigurationError("task_annotations must be a dict such as "
                                     "{'module.task': {'rate_limit': '10/s'}, '*': {...}}")
        from .limits import parse_rate
        from .task import ANNOTATABLE
        for scope, options in value.items():
            unknown = set(options) - set(ANNOTATABLE)
            if unknown:
                warnings.warn(f"task_annotations[{scope!r}]: localq ignores "
                              f"{', '.join(sorted(unknown))} (it annotates "
                              f"{', '.join(ANNOTATABLE)})", stacklevel=4)
            if "rate_limit" in options:
                parse_rate(options["rate_limit"], where=f"task_annotations[{scope!r}] rate_limit")
    if name == "database_synchronous" and str(value).upper() not in ("NORMAL", "FULL"):
        raise ConfigurationError("database_synchronous must be 'NORMAL' or 'FULL'")
    return value


def _unknown_message(name: str) -> str:
    close = difflib.get_close_matches(name, list(DEFAULTS), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown setting {name!r}{hint}"


def _import_object(path: str) -> Any:
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"cannot import configuration {path!r}: {exc}") from None
    return getattr(module, attr) if attr else module
