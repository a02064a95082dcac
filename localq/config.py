"""Settings: Celery's names, where they mean something on one host.

``app.conf`` reads and writes like Celery's (``app.conf.task_default_queue``,
``app.conf.update(...)``, ``app.config_from_object(...)``). An unknown name is
an error that names it; a Celery setting that means nothing here (a broker
URL, a prefetch multiplier) is accepted with one warning, so an existing
Celery configuration module loads unchanged.

``config_from_object`` also reads Celery's pre-4.0 uppercase names
(``CELERY_ANNOTATIONS``, ``BROKER_URL``, ...: the table is in ``celery_names``)
and Django's namespaced ones (``namespace="CELERY"``: ``CELERY_TASK_...``).
As in Celery, one object may not mix old and new names. Other uppercase
names in a configuration object are reported in one warning rather than an
error: a config module holds constants of its own, and the warning is what
catches a misspelt or retired setting name.
"""
from __future__ import annotations

import difflib
import importlib
import warnings
from typing import Any, Iterator, Mapping

from .celery_names import CELERY_SETTINGS, OLD_NAMES, REMOVED
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
    "worker_hijack_root_logger": True,  # False: the worker leaves the root logger alone
    "worker_log_level": None,           # CELERYD_LOG_LEVEL (Celery 3): the worker's -l default
    "imports": (),
    "include": (),
    "beat_schedule": {},                # periodic tasks: beat.py
    "timezone": None,                   # a zoneinfo name: crontabs run on its wall clock
    "enable_utc": True,                 # without timezone: UTC, else the host's zone
    # localq's own
    "database_synchronous": "NORMAL",   # FULL: survive power loss, ~10x slower enqueue
    "worker_heartbeat_interval": 2.0,
    "worker_lost_after": 30.0,          # a silent worker is presumed dead after this
}

# Celery settings that have no meaning on one host with one SQLite file.
IGNORED = CELERY_SETTINGS - DEFAULTS.keys()
# Settings stored, whose one value here cannot be changed: the other value warns once.
NO_EFFECT: dict[str, tuple[Any, str]] = {
    "task_store_eager_result": (True, "eager mode runs the job in the caller and opens no "
                                      "database, so the result is only in the EagerResult"),
}


class Settings(Mapping[str, Any]):
    """``app.conf``: attribute or item access, checked names."""

    def __init__(self) -> None:
        object.__setattr__(self, "_values", {k: dict(v) if isinstance(v, dict) else v
                                             for k, v in DEFAULTS.items()})
        object.__setattr__(self, "_warned", set())
        object.__setattr__(self, "_limit_pairs", set())  # (hard, soft) already warned of
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
        """Set settings by their names (a pre-4.0 name is read as its new name)."""
        items = dict(other or {}, **kwargs)
        self.apply({OLD_NAMES.get(k, k): v for k, v in items.items()},
                   {OLD_NAMES.get(k, k): k for k in items})

    def apply(self, items: Mapping[str, Any], spelled: Mapping[str, str]) -> None:
        """Set ``items`` (new names), warning by the name as the user wrote it."""
        for name in items:   # check all before changing any
            if name not in DEFAULTS and name not in IGNORED:
                raise ConfigurationError(_unknown_message(spelled.get(name, name)))
        checked = {name: _check(name, value) for name, value in items.items()
                   if name not in IGNORED}
        for name in items:
            if name in IGNORED:
                label = spelled.get(name, name)
                self.warn_once(name, f"localq ignores the Celery setting {label!r}"
                               + (f" ({name})" if label != name else "")
                               + ": it has no meaning with one SQLite file on one host")
        self._values.update(checked)
        for name, (value, meaning) in NO_EFFECT.items():
            if name in checked and bool(checked[name]) == value:
                self.warn_once(name, f"localq ignores {spelled.get(name, name)}={value!r}: "
                               f"{meaning}")
        if checked.keys() & {"task_time_limit", "task_soft_time_limit", "task_annotations"}:
            self._check_configured_limits()
        object.__setattr__(self, "version", self.version + 1)

    def warn_once(self, key: Any, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, stacklevel=_caller_level())

    def check_limits(self, task_name: str, hard: Any, soft: Any, where: str) -> None:
        """Warn once per task when its soft time limit cannot fire (above the hard one,
        the job is killed first), unless the settings already said so of this pair."""
        if _soft_after_hard(hard, soft) and (hard, soft) not in self._limit_pairs:
            self.warn_once(("limits", task_name), _limits_message(hard, soft, where))

    def _check_configured_limits(self) -> None:
        hard, soft = self._values["task_time_limit"], self._values["task_soft_time_limit"]
        scopes: list[tuple[str, Any, Any]] = [("settings", hard, soft)]
        annotations = self._values["task_annotations"] or {}
        star = annotations.get("*") or {}
        for scope, options in annotations.items():
            merged = {"time_limit": hard, "soft_time_limit": soft, **star, **options}
            scopes.append((f"task_annotations[{scope!r}]", merged["time_limit"],
                           merged["soft_time_limit"]))
        for where, hard, soft in scopes:
            if _soft_after_hard(hard, soft):
                self._limit_pairs.add((hard, soft))
                self.warn_once(("limits", where), _limits_message(hard, soft, where))

    def from_object(self, obj: Any, namespace: str | None = None,
                    silent: bool = False) -> bool:
        """Celery's ``config_from_object``: an object, a module, or its name
        (``"pkg.celeryconfig"``, ``"pkg.settings:CeleryConfig"``)."""
        if isinstance(obj, str):
            obj = _import_object(obj, silent)
            if obj is None:
                return False
        found = _public_names(obj)
        if namespace:
            items, spelled = _namespaced(found, namespace)
        else:
            items, spelled = self._plain(found)
        self.apply(items, spelled)
        return True

    def _plain(self, found: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
        """Lowercase names as they are, pre-4.0 names translated; never both kinds."""
        new = {k: v for k, v in found.items() if k.islower()}
        old = {k: v for k, v in found.items() if k in OLD_NAMES}
        celery_new = new.keys() & CELERY_SETTINGS      # localq's own names have no old form
        if old and celery_new:
            _refuse_mixing(old, new, celery_new)
        retired = sorted(k for k in found if k in REMOVED)
        for key in retired:
            self.warn_once(key, f"localq ignores {key}: Celery stopped reading it in 4.0 and "
                           f"it sets nothing here either: use {REMOVED[key]} instead")
        unknown = sorted(k for k in found if k.isupper() and k not in OLD_NAMES
                         and k not in REMOVED and k not in self._warned)
        if unknown:
            self._warned.update(unknown)
            hints = [f"{k} (did you mean {OLD_NAMES[close[0]]!r}?)"
                     if (close := difflib.get_close_matches(k, list(OLD_NAMES), n=1)) else k
                     for k in unknown]
            what = "not a Celery setting name" if len(unknown) == 1 \
                else "not Celery setting names"
            warnings.warn(f"localq ignores {', '.join(hints)}: {what}, old or new (a Django "
                          f"settings module is read with namespace='CELERY')",
                          stacklevel=_caller_level())
        items = dict(new)
        spelled = {k: k for k in new}
        for key, value in old.items():
            name = OLD_NAMES[key]
            if name not in items:
                items[name] = value
                spelled[name] = key
        return items, spelled


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
    if name == "beat_schedule":
        if value is None:
            return {}
        if not isinstance(value, Mapping) or not all(
                isinstance(entry, Mapping) and "task" in entry and "schedule" in entry
                for entry in value.values()):
            raise ConfigurationError("beat_schedule must be a dict such as {'hourly report': "
                                     "{'task': 'reports.build', 'schedule': 3600}}")
        from .schedules import as_schedule
        for entry_name, entry in value.items():
            try:
                as_schedule(entry["schedule"])
            except ConfigurationError as exc:
                raise ConfigurationError(f"beat_schedule entry {entry_name!r}: {exc}") from None
        return dict(value)    # the rest is checked when a scheduler starts (beat.py)
    if name == "timezone" and value is not None:
        import zoneinfo
        try:
            zoneinfo.ZoneInfo(str(value))
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            if not zoneinfo.available_timezones():
                return value       # no time zone database on this host: nothing to check
            raise ConfigurationError(f"timezone {value!r} is not a time zone name such as "
                                     f"'Europe/Paris' or 'UTC'") from None
    if name == "worker_log_level" and value is not None:
        from .log import check_level
        try:
            return check_level(value)
        except ValueError as exc:
            raise ConfigurationError(f"{name}: {exc}") from None
    if name == "database_synchronous" and str(value).upper() not in ("NORMAL", "FULL"):
        raise ConfigurationError("database_synchronous must be 'NORMAL' or 'FULL'")
    return value


def _unknown_message(name: str) -> str:
    close = difflib.get_close_matches(name, list(DEFAULTS), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown setting {name!r}{hint}"


def _public_names(obj: Any) -> dict[str, Any]:
    """The names a configuration object defines, without private names, imported
    modules and helper functions."""
    found = {}
    for key in (obj.keys() if isinstance(obj, Mapping) else dir(obj)):
        if not isinstance(key, str) or key.startswith("_"):
            continue
        value = obj[key] if isinstance(obj, Mapping) else getattr(obj, key)
        if type(value).__name__ == "module":
            continue
        if callable(value) and not isinstance(value, type) and key not in DEFAULTS:
            continue
        found[key] = value
    return found


def _namespaced(found: dict[str, Any], namespace: str) -> tuple[dict[str, Any], dict[str, str]]:
    """Celery's ``namespace``: ``CELERY_TASK_ACKS_LATE`` is ``task_acks_late``. The
    prefix takes an underscore, and the rest is the new name in the prefix's case."""
    prefix = namespace.rstrip("_") + "_"
    items, spelled = {}, {}
    for key, value in found.items():
        if not key.startswith(prefix):
            continue
        name = key[len(prefix):].lower()
        if name not in DEFAULTS and name not in CELERY_SETTINGS:
            new = OLD_NAMES.get(key)
            if new is not None:
                raise ConfigurationError(
                    f"{key} is Celery's pre-4.0 name for {new}; with namespace={namespace!r} "
                    f"write {prefix}{new.upper() if prefix.isupper() else new} (the prefix "
                    f"and the new name), or load the object without a namespace")
            raise ConfigurationError(f"{_unknown_message(name)}, read from {key} with "
                                     f"namespace={namespace!r}")
        items[name] = value
        spelled[name] = key
    return items, spelled


def _refuse_mixing(old: Mapping[str, Any], new: Mapping[str, Any],
                   celery_new: set[str]) -> None:
    """As Celery: one style per object; an old and a new name for the same setting
    are allowed together when they agree."""
    twice = {k for k in old if OLD_NAMES[k] in new}
    for key in sorted(twice):
        if old[key] != new[OLD_NAMES[key]]:
            raise ConfigurationError(f"{key} and {OLD_NAMES[key]} are the same setting, "
                                     f"given two different values: keep one")
    old_left = sorted(set(old) - twice)
    new_left = sorted(celery_new - {OLD_NAMES[k] for k in twice})
    if old_left and new_left:
        renames = ", ".join(f"{k} -> {OLD_NAMES[k]}" for k in old_left)
        raise ConfigurationError(
            f"cannot mix Celery's pre-4.0 setting names ({', '.join(old_left)}) with the new "
            f"ones ({', '.join(new_left)}) in one configuration: rename the old ones "
            f"({renames})")


def _soft_after_hard(hard: Any, soft: Any) -> bool:
    try:
        return bool(hard) and bool(soft) and float(soft) > float(hard)
    except (TypeError, ValueError):
        return False           # not numbers: the option's own check reports it


def _limits_message(hard: Any, soft: Any, where: str) -> str:
    return (f"{where}: soft_time_limit {soft}s is above time_limit {hard}s, so the soft "
            f"limit can never fire (the job is killed at {hard}s first): make "
            f"soft_time_limit smaller than time_limit")


def _caller_level() -> int:
    """The stack level of the first frame outside localq, for warnings."""
    import sys
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_globals.get("__name__", "").startswith("localq."):
        frame, level = frame.f_back, level + 1   # type: ignore[assignment]
    return level


def _import_object(path: str, silent: bool = False) -> Any:
    """``"pkg.mod"``, ``"pkg.mod:attr"`` or, as Celery also reads it, ``"pkg.mod.attr"``."""
    module_name, colon, attr = path.partition(":")
    try:
        try:
            obj = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            parent, _, last = module_name.rpartition(".")
            if colon or not parent or exc.name != module_name:
                raise
            obj, attr = importlib.import_module(parent), last
            if not hasattr(obj, last):
                raise exc from None
    except ImportError as exc:
        if silent:
            return None
        raise ConfigurationError(f"cannot import configuration {path!r}: {exc}") from None
    for part in attr.split(".") if attr else ():
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigurationError(f"cannot import configuration {path!r}: "
                                     f"{obj.__name__!r} has no attribute {part!r}") from None
    return obj
