"""Codecs: task arguments, results and exceptions to and from database values.

JSON is the default: readable in the database and safe to load. Pickle is an
explicit opt-in (``serializer="pickle"``). JSON payloads are stored as TEXT,
pickle payloads as BLOB. Nothing here touches the database.

What is read back is decoded only with a serializer the app accepts (Celery's
``accept_content``, see :func:`accepted`); anything else is
:class:`ContentDisallowed`. An exception is rebuilt only from a class already
imported in this process: nothing named in the file is ever imported.

Every TEXT this module produces is valid UTF-8 (SQLite refuses anything else):
a str holding a lone surrogate (a non-UTF-8 file name read by ``os.listdir``)
is an :class:`EncodeError` in a value, and is escaped (``\\udce9``) in an
exception's message and traceback, which must always be storable.
"""
from __future__ import annotations

import builtins
import json
import pickle
import sys
from typing import Any, Iterable

from .exceptions import ConfigurationError, ContentDisallowed, EncodeError, TaskError

SERIALIZERS = ("json", "pickle")
# Celery's content types name the same serializers.
CONTENT_TYPES = {"application/json": "json", "application/x-python-serialize": "pickle"}


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


def accepted(accept: Iterable[str], *declared: str | None) -> frozenset[str]:
    """The serializers an app decodes: its ``accept_content`` (or
    ``result_accept_content``) plus those it declares itself (``task_serializer``,
    ``result_serializer``, a task's ``serializer``): declaring pickle opts in to it."""
    return frozenset(accept).union(d for d in declared if d)


def check_accepted(serializer: str, accept: frozenset[str], what: str, setting: str) -> None:
    """Raise :class:`ContentDisallowed` unless ``serializer`` is in ``accept``."""
    if serializer not in accept:
        raise ContentDisallowed(
            f"{what} is encoded with {serializer!r}, which this app does not accept "
            f"({setting}={sorted(accept)}): refused without decoding it. If the database "
            f"file is trusted, add {serializer!r} to {setting} (or declare "
            f"serializer={serializer!r} on the task).")


def check_content_names(value: Any, setting: str) -> tuple[str, ...]:
    """``accept_content``: serializer names or Celery's content types; others (yaml,
    msgpack: localq has no such codec) are an error, as an unknown serializer is."""
    names = [value] if isinstance(value, str) else value
    try:
        out = tuple(CONTENT_TYPES.get(n, n) for n in names)
    except TypeError:
        out = ("?",)
    bad = [n for n in out if n not in SERIALIZERS]
    if bad:
        raise ConfigurationError(
            f"{setting} must list serializers from {', '.join(SERIALIZERS)} (or Celery's "
            f"{', '.join(CONTENT_TYPES)}), not {value!r}")
    return out


def encode_value(serializer: str, value: Any) -> str | bytes:
    if serializer == "json":
        text = _dumps(value)
        if not text.isascii():      # ~20 ns for the usual ASCII text
            text.encode()           # UnicodeEncodeError on a lone surrogate
        return text
    return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


def decode_value(serializer: str, payload: str | bytes | None) -> Any:
    if payload is None:
        return None
    if serializer == "json":
        return _loads(payload)
    if serializer == "pickle":
        return pickle.loads(payload if isinstance(payload, bytes) else payload.encode())
    raise ContentDisallowed(f"unknown serializer {serializer!r}: refused without decoding")


def safe_text(text: str | None) -> str | None:
    """Text that SQLite can store: lone surrogates escaped as ``\\udce9``, else unchanged
    (in JSON text the escape decodes back to the same character)."""
    if text is None or text.isascii():
        return text
    try:
        text.encode()
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


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
            f"{serializer} serializer ({why(exc)}). Pass plain data (str, int, float, bool, "
            f"None, list, dict), or opt in to serializer='pickle'. Nothing was stored."
        ) from None


def why(exc: BaseException) -> str:
    """Why a value did not encode, in words (a lone surrogate needs explaining)."""
    if isinstance(exc, UnicodeEncodeError):
        bad = exc.object[exc.start:exc.end]
        return (f"it holds {bad!r}, a lone surrogate, which is not valid UTF-8: os.listdir "
                f"gives one for a file name that is not UTF-8, and "
                f"os.fsencode(name).decode('utf-8', 'replace') makes it valid")
    return str(exc)


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
    text = _dumps({"exc_type": exception_type_name(exc), "exc_message": str(exc),
                   "exc_args": args})
    return safe_text(text)       # type: ignore[return-value]


def decode_exception(payload: str | bytes | None, exc_type: str | None,
                     traceback: str | None, accept: frozenset[str] = frozenset(("json",)),
                     setting: str = "result_accept_content") -> BaseException:
    """Rebuild the stored exception, or a :class:`TaskError` naming its type.

    A pickled one (BLOB) is unpickled only when ``accept`` holds pickle; the class
    of a JSON one is looked up among the modules already imported, never imported.
    """
    if isinstance(payload, bytes):
        if "pickle" not in accept:
            return TaskError(exc_type or "Exception", _last_line_message(traceback) or
                             f"(stored pickled; not unpickled: pickle is not in {setting})",
                             traceback)
        try:
            exc = pickle.loads(payload)
            if isinstance(exc, BaseException):
                return exc
        except Exception:
            pass
        return TaskError(exc_type or "Exception", "(stored exception could not be loaded)",
                         traceback)
    info = stored_exception_info(payload)
    name = info.get("exc_type") or exc_type or "Exception"
    message = info.get("exc_message", "")
    return exception_from_fields(str(name), info.get("exc_args", [message]), str(message),
                                 traceback)


def exception_from_fields(name: str, args: list, message: str,
                          traceback: str | None = None) -> BaseException:
    """An exception of the class with this dotted name, found among the modules already
    imported (``find_exception_class``) and built with ``args``; a :class:`TaskError`
    naming it when there is no such class or it refuses those arguments."""
    cls = find_exception_class(name)
    if cls is not None:
        try:
            return cls(*args)
        except Exception:
            pass
    return TaskError(name, message, traceback)


def stored_exception_info(payload: str | bytes | None) -> dict:
    """The JSON form's fields (exc_type, exc_message, exc_args); {} for anything else."""
    if not payload or isinstance(payload, bytes):
        return {}
    try:
        info = _loads(payload)
    except ValueError:
        return {}
    return info if isinstance(info, dict) else {}


def _last_line_message(traceback: str | None) -> str | None:
    """"message" from a traceback's last line "pkg.Type: message"."""
    lines = (traceback or "").rstrip().splitlines()
    if not lines:
        return None
    return lines[-1].partition(": ")[2] or None


def find_exception_class(name: str) -> type[BaseException] | None:
    """The exception class with this dotted name among the modules already imported.

    A name read from the database file is never imported (``this.Zen`` would run
    code); the lookup reads module and class dicts only, so no module ``__getattr__``
    runs either. ``pkg.mod.Outer.Inner``: the longest imported module prefix wins.
    """
    parts = name.split(".")
    if len(parts) == 1:
        obj: Any = vars(builtins).get(name)
    else:
        obj = None
        for cut in range(len(parts) - 1, 0, -1):
            module = sys.modules.get(".".join(parts[:cut]))
            if module is None:
                continue
            obj = module
            for part in parts[cut:]:
                obj = vars(obj).get(part) if hasattr(obj, "__dict__") else None
                if obj is None:
                    break
            break
    if isinstance(obj, type) and issubclass(obj, BaseException):
        return obj
    return None
