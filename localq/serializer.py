"""Codecs: task arguments, results and exceptions to and from database values.

JSON is the default: readable in the database and safe to load. Pickle is an
explicit opt-in (``serializer="pickle"``). JSON payloads are stored as TEXT,
pickle payloads as BLOB. Nothing here touches the database.
"""
from __future__ import annotations

import builtins
import importlib
import json
import pickle
from typing import Any

from .exceptions import ConfigurationError, EncodeError, TaskError

SERIALIZERS = ("json", "pickle")


def _not_json(value: Any) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _make_dumps() -> Any:
    """json.dumps(separators=(",", ":"), ensure_ascii=False), minus the ~1 us that
    JSONEncoder.encode spends building a C encoder on every call: build it once.
    (No circular-reference markers: a cycle fails as RecursionError instead.)"""
    from json import encoder
    make = getattr(encoder, "c_make_encoder", None)
    if make is None:        # a Python without the C accelerator
        return json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
    chunks = make(None, _not_json, encoder.encode_basestring, None, ":", ",", False, False,
                  True)
    join = "".join
    return lambda value: join(chunks(value, 0))


_dumps = _make_dumps()


def _make_loads() -> Any:
    """json.loads for the text we wrote, minus json's two whitespace regexes per call:
    the C scanner reads the value straight; anything else (surrounding whitespace,
    trailing data, bytes) goes through json.loads and its errors."""
    from json import scanner
    make = getattr(scanner, "c_make_scanner", None)
    if make is None:
        return json.loads
    scan = make(json.JSONDecoder())

    def loads(text: Any) -> Any:
        try:
            value, end = scan(text, 0)
        except Exception:              # StopIteration, TypeError for bytes, ...
            return json.loads(text)
        return value if end == len(text) else json.loads(text)
    return loads


_loads = _make_loads()


def check_serializer(name: str) -> str:
    if name not in SERIALIZERS:
        raise ConfigurationError(
            f"unknown serializer {name!r}: use one of {', '.join(SERIALIZERS)}")
    return name


def encode_value(serializer: str, value: Any) -> str | bytes:
    if serializer == "json":
        return _dumps(value)
    return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


def decode_value(serializer: str, payload: str | bytes | None) -> Any:
    if payload is None:
        return None
    if serializer == "json":
        return _loads(payload)
    return pickle.loads(payload if isinstance(payload, bytes) else payload.encode())


def encode_call(serializer: str, task_name: str, args: tuple | list, kwargs: dict) -> str | bytes:
    """Encode ``[args, kwargs]``; on failure name the task and the argument at fault."""
    try:
        return encode_value(serializer, [list(args), kwargs])
    except Exception as exc:  # find the argument to name; the whole call failed
        culprit = "an argument"
        for i, arg in enumerate(args):
            if not _encodes(serializer, arg):
                culprit = f"positional argument {i} ({_short(arg)})"
                break
        else:
            for key, arg in kwargs.items():
                if not isinstance(key, str) and serializer == "json":
                    culprit = f"keyword {key!r} (keys must be strings)"
                    break
                if not _encodes(serializer, arg):
                    culprit = f"keyword argument {key!r} ({_short(arg)})"
                    break
        raise EncodeError(
            f"cannot send task {task_name!r}: {culprit} cannot be encoded with the "
            f"{serializer} serializer ({exc}). Pass plain data (str, int, float, bool, "
            f"None, list, dict), or opt in to serializer='pickle'. Nothing was stored."
        ) from None


def decode_call(serializer: str, payload: str | bytes) -> tuple[list, dict]:
    args, kwargs = decode_value(serializer, payload)
    return args, kwargs


def _encodes(serializer: str, value: Any) -> bool:
    try:
        encode_value(serializer, value)
        return True
    except Exception:
        return False


def _short(value: Any) -> str:
    text = repr(value)
    text = text if len(text) <= 60 else text[:57] + "..."
    return f"{type(value).__name__} {text}"


# ------------------------------------------------------------------ exceptions

def exception_type_name(exc: BaseException) -> str:
    cls = type(exc)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def encode_exception(serializer: str, exc: BaseException) -> str | bytes:
    """Store what is needed to raise the same type again: its name and its args."""
    if serializer == "pickle":
        try:
            return pickle.dumps(exc, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:
            pass  # fall through to the portable form
    try:
        args = list(exc.args)
        _dumps(args)
    except Exception:
        args = [str(exc)]
    return _dumps({"exc_type": exception_type_name(exc), "exc_message": str(exc),
                   "exc_args": args})


def decode_exception(payload: str | bytes | None, exc_type: str | None,
                     traceback: str | None) -> BaseException:
    """Rebuild the stored exception, or a :class:`TaskError` naming its type."""
    if isinstance(payload, bytes):
        try:
            exc = pickle.loads(payload)
            if isinstance(exc, BaseException):
                return exc
        except Exception:
            pass
        return TaskError(exc_type or "Exception", "(stored exception could not be loaded)",
                         traceback)
    try:
        info = _loads(payload) if payload else {}
    except ValueError:
        info = {}
    name = info.get("exc_type") or exc_type or "Exception"
    message = info.get("exc_message", "")
    cls = _find_exception_class(name)
    if cls is not None:
        try:
            return cls(*info.get("exc_args", [message]))
        except Exception:
            pass
    return TaskError(name, message, traceback)


def _find_exception_class(name: str) -> type[BaseException] | None:
    module_name, _, attr = name.rpartition(".")
    try:
        if not module_name:
            obj: Any = getattr(builtins, attr)
        else:
            obj = importlib.import_module(module_name)
            for part in attr.split("."):
                obj = getattr(obj, part)
    except Exception:
        # A qualname with dots inside a module: try shorter module paths.
        parts = name.split(".")
        obj = None
        for cut in range(len(parts) - 1, 0, -1):
            try:
                mod: Any = importlib.import_module(".".join(parts[:cut]))
                for part in parts[cut:]:
                    mod = getattr(mod, part)
                obj = mod
                break
            except Exception:
                continue
    if isinstance(obj, type) and issubclass(obj, BaseException):
        return obj
    return None
