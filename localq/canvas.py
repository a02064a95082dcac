"""The canvas, with Celery's names: signatures, chain, group, chord, callbacks.

A :class:`Signature` is a dict in Celery's shape (``task``, ``args``, ``kwargs``,
``options``, ``subtask_type``, ``immutable``), so it travels as a task argument and
comes back with :func:`signature`. Sending one (or a chain, group or chord of
them) builds the whole workflow here, in the caller, and writes it in one
transaction (``Store.send_workflow``): every job it may run, ready or waiting for
its parent, and what each outcome sets off. The worker then carries it forward
in the transactions that write outcomes (store/canvas.py): no polling task, and
a kill -9 at any moment loses nothing and repeats nothing.

In eager mode (``task_always_eager``) every primitive runs here, in process,
through the same serializer as a worker (execute.run_eager).
"""
from __future__ import annotations

import inspect
import itertools
import json
import time
import uuid
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from .builtins import builtin
from .exceptions import ChordError, ConfigurationError, NotRegistered, TimeoutError
from .ids import format_id, new_seq, new_seqs
from .result import (
    AsyncResult,
    EagerResult,
    ResultSet,
    Waiter,
    assert_will_not_block,
    result_content,
)
from .serializer import check_accepted, decode_value, encode_call, encode_exception
from .store.canvas import GROUP_BODY, WAITING, RowClash
from .store.records import FINAL_STATES, JobRow, decode_options
from .task import Task, check_call, expires_at

if TYPE_CHECKING:
    from .app import Localq

# apply_async options a signature's job takes (others are warned about, as by apply_async)
SEND_OPTIONS = ("countdown", "eta", "expires", "queue", "priority", "task_id", "time_limit",
                "soft_time_limit", "serializer")
CANVAS_OPTIONS = ("link", "link_error", "group_id", "group_index", "parent_id", "root_id")


class Signature(dict):
    """One task call, not sent yet: ``add.s(2, 2)``; also the base of chain, group, chord."""

    def __init__(self, task: Any = None, args: Iterable | None = None,
                 kwargs: dict | None = None, options: dict | None = None,
                 subtask_type: str | None = None, immutable: bool = False,
                 app: Localq | None = None, **extra: Any) -> None:
        if isinstance(task, dict):          # signature(dict)
            d = task
            task, args, kwargs = d.get("task"), d.get("args"), d.get("kwargs")
            options, subtask_type = d.get("options"), d.get("subtask_type")
            immutable = bool(d.get("immutable", False))
        name = task.name if isinstance(task, Task) else task
        if app is None and isinstance(task, Task):
            app = task.app
        super().__init__(task=name, args=tuple(args or ()), kwargs=dict(kwargs or {}),
                         options=dict(options or {}), subtask_type=subtask_type,
                         immutable=immutable, **extra)
        self._app = app

    @classmethod
    def of_call(cls, task: Task, args: tuple, kwargs: dict, immutable: bool) -> Signature:
        """``task.s(...)``: the common case, built without __init__'s conversions (the
        caller's ``*args``/``**kwargs`` are fresh)."""
        sig = cls.__new__(cls)
        dict.__init__(sig, task=task.name, args=args, kwargs=kwargs, options={},
                      subtask_type=None, immutable=immutable)
        sig._app = task.app
        return sig

    # Celery's attribute names
    @property
    def name(self) -> str:
        return self["task"]

    task = name

    @property
    def args(self) -> tuple:
        return tuple(self["args"])

    @property
    def kwargs(self) -> dict:
        return self["kwargs"]

    @property
    def options(self) -> dict:
        return self["options"]

    @property
    def immutable(self) -> bool:
        return bool(self["immutable"])

    @property
    def subtask_type(self) -> str | None:
        return self["subtask_type"]

    @property
    def app(self) -> Localq:
        if self._app is None:
            self._app = _find_app(self)
        return self._app

    @property
    def type(self) -> Task:
        """The task this signature calls (NotRegistered when its app has none)."""
        task = self.app.tasks.get(self.name) or builtin(self.app, self.name)
        if task is None:
            raise NotRegistered(f"signature of task {self.name!r}: no task of that name is "
                                f"registered in {self.app!r}: define it (@app.task) or "
                                f"import its module")
        return task

    def __repr__(self) -> str:
        call = ", ".join([*map(repr, self.args),
                          *(f"{k}={v!r}" for k, v in self.kwargs.items())])
        return f"{self.name}({call}){'!' if self.immutable else ''}"

    # -------------------------------------------------------------- building

    def clone(self, args: Iterable | None = None, kwargs: dict | None = None,
              **options: Any) -> Signature:
        """A copy; ``args`` go first (Celery's partial arguments), ``kwargs`` and
        ``options`` are merged in (an immutable signature keeps its own)."""
        d = _deep(self)
        if not self.immutable:
            d["args"] = (*(args or ()), *d["args"])
            d["kwargs"] = {**d["kwargs"], **(kwargs or {})}
        d["options"] = {**d["options"], **options}
        return type(self).from_dict(d, self._app)

    @classmethod
    def from_dict(cls, d: dict, app: Localq | None = None) -> Signature:
        return Signature(d, app=app)

    def set(self, immutable: bool | None = None, **options: Any) -> Signature:
        if immutable is not None:
            self["immutable"] = immutable
        self["options"].update(options)
        return self

    def set_immutable(self, immutable: bool) -> None:
        self["immutable"] = immutable

    def link(self, callback: Signature) -> Signature:
        """Run ``callback`` with this task's result after it succeeds."""
        self["options"].setdefault("link", []).append(_check_sig(callback, "link"))
        return callback

    def link_error(self, errback: Signature) -> Signature:
        """Run ``errback`` when this task fails."""
        self["options"].setdefault("link_error", []).append(_check_sig(errback, "link_error"))
        return errback

    def __or__(self, other: Any) -> Signature:
        if isinstance(other, Signature):
            return chain(self, other)
        return NotImplemented

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the task here and now, with these arguments first (Celery's)."""
        return self.type(*args, *self.args, **{**self.kwargs, **kwargs})

    # -------------------------------------------------------------- sending

    def delay(self, *args: Any, **kwargs: Any) -> Any:
        return self.apply_async(args, kwargs)

    def apply_async(self, args: Iterable | None = None, kwargs: dict | None = None,
                    **options: Any) -> Any:
        """Send it (the arguments given here go first), in one transaction with all it
        sets off. Returns its AsyncResult (GroupResult for a group)."""
        sig = self.clone(args, kwargs, **options) if (args or kwargs or options) else self
        return send(sig)

    def apply(self, args: Iterable | None = None, kwargs: dict | None = None,
              **options: Any) -> Any:
        """Run it here and now, as eager mode does."""
        sig = self.clone(args, kwargs, **options) if (args or kwargs or options) else self
        return _Eager(sig.app).run(sig, None)


def _deep(sig: dict) -> dict:
    """A copy of a signature's dict, nested signatures and option lists copied too."""
    d = dict(sig)
    d["args"] = tuple(d.get("args") or ())
    d["kwargs"] = {k: _copy_value(v) for k, v in (d.get("kwargs") or {}).items()}
    d["options"] = {k: _copy_value(v) for k, v in (d.get("options") or {}).items()}
    return d


def _copy_value(v: Any) -> Any:
    if isinstance(v, Signature):
        return v.clone()
    if isinstance(v, list):
        return [_copy_value(x) for x in v]
    return v


def signature(varies: Any, *args: Any, app: Localq | None = None, **kwargs: Any) -> Signature:
    """Celery's ``signature``: a Signature from a dict (one that travelled as a task
    argument), a task name, or a Signature (returned as it is)."""
    if isinstance(varies, Signature):
        return varies
    if isinstance(varies, dict):
        kind = varies.get("subtask_type")
        sig: Signature
        if kind == "chain":
            sig = chain(*(signature(t, app=app) for t in varies["kwargs"]["tasks"]))
        elif kind == "group":
            sig = group([signature(t, app=app) for t in varies["kwargs"]["tasks"]])
        elif kind == "chord":
            sig = chord([signature(t, app=app) for t in varies["kwargs"]["header"]],
                        signature(varies["kwargs"]["body"], app=app))
        elif kind == "chunks":
            kw = varies["kwargs"]
            sig = chunks(signature(kw["task"], app=app), kw["it"], kw["n"])
        elif kind is None:
            if not isinstance(varies.get("task"), str):
                raise TypeError(f"signature({varies!r:.80}): not a signature: a dict with "
                                f"'task' (a task name), 'args', 'kwargs' and 'options'")
            sig = Signature(varies, app=app)
        else:
            raise TypeError(f"signature(): unknown subtask_type {kind!r}")
        sig["options"].update(_options_from_dict(varies.get("options") or {}, app))
        sig["immutable"] = bool(varies.get("immutable", False))
        if sig.subtask_type is None:
            sig.type        # an unregistered name is an error here, not on a worker
        return sig
    if isinstance(varies, str):
        sig = Signature(varies, args, kwargs.pop("kwargs", None) or kwargs, app=app)
        sig.type
        return sig
    raise TypeError(f"signature({varies!r:.80}): expected a Signature, a dict in its shape "
                    f"or a task name")


def _options_from_dict(options: dict, app: Localq | None) -> dict:
    out = dict(options)
    for key in ("link", "link_error"):
        if key in out:
            value = out[key]
            items = value if isinstance(value, (list, tuple)) else [value]
            out[key] = [signature(v, app=app) for v in items]
    return out


def _find_app(sig: dict) -> Localq:
    from .app import Localq
    apps = [a for a in list(Localq._instances) if sig.get("task") in a.tasks]
    if not apps:
        raise NotRegistered(f"signature of task {sig.get('task')!r}: no app in this process "
                            f"registers a task of that name: define it (@app.task), import "
                            f"its module, or pass app=")
    return apps[0]


def _check_sig(value: Any, where: str) -> Signature:
    if isinstance(value, Signature):
        return value
    if isinstance(value, dict) and "task" in value:
        return signature(value)
    raise TypeError(f"{where}: expected a signature (task.s(...), task.si(...)), not "
                    f"{type(value).__name__} {value!r:.60}")


def maybe_signature(value: Any, app: Localq | None = None) -> Signature | None:
    return None if value is None else signature(value, app=app)


# ------------------------------------------------------------------ chain, group, chord

class chain(Signature):  # noqa: N801 - Celery's name
    """Run tasks one after the other, each result first in the next one's arguments."""

    def __init__(self, *tasks: Any, **options: Any) -> None:
        if len(tasks) == 1 and not isinstance(tasks[0], dict) and \
                not isinstance(tasks[0], str) and hasattr(tasks[0], "__iter__"):
            tasks = tuple(tasks[0])
        flat: list[Signature] = []
        for t in tasks:
            t = _check_sig(t, "chain")
            if isinstance(t, chain) and not t.options:
                flat.extend(t.tasks)
            else:
                flat.append(t)
        if not flat:
            raise ValueError("chain() needs at least one signature")
        app = next((t._app for t in flat if t._app is not None), None)
        super().__init__("localq.chain", (), {"tasks": flat}, options, "chain", app=app)

    @property
    def tasks(self) -> list[Signature]:
        return self["kwargs"]["tasks"]

    def clone(self, args: Iterable | None = None, kwargs: dict | None = None,
              **options: Any) -> Signature:
        tasks = [t.clone() for t in self.tasks]
        if args and not self.immutable:
            tasks[0] = tasks[0].clone(args)
        new = chain(*tasks, **{**self.options, **options})
        new["immutable"] = self.immutable
        return new

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Send it (Celery's ``(a.s() | b.s())()``), these arguments to its first task."""
        return self.apply_async(args, kwargs)

    def __or__(self, other: Any) -> Signature:
        if isinstance(other, Signature):
            return chain(*self.tasks, other)
        return NotImplemented

    def __repr__(self) -> str:
        return " | ".join(map(repr, self.tasks))

    @property
    def app(self) -> Localq:
        return self._app or self.tasks[0].app


class _Lazy:
    """The members of a group or chord header given as an iterator (a generator): read
    once, by the first send, one at a time, so that 100,000 signatures are never all
    in memory; or all at once by the first look at ``.tasks``. Not JSON: a signature
    that travels as an argument holds a list."""

    def __init__(self, items: Iterator, where: str) -> None:
        self.items: Iterator | None = items
        self.where = where

    def take(self) -> Iterator[Signature]:
        if self.items is None:
            raise ValueError(f"this {self.where}'s tasks came from an iterator, which its "
                             f"first send read: build it again, or from a list")
        items, self.items = self.items, None
        where = self.where
        return (t if type(t) is Signature else _check_sig(t, where) for t in items)


def _members_of(tasks: tuple, where: str) -> tuple[Any, Localq | None]:
    """(a list of signatures or a _Lazy, the app of the first one)."""
    if len(tasks) == 1 and isinstance(tasks[0], Iterator):
        first = next(tasks[0], None)
        if first is None:
            return [], None
        first = _check_sig(first, where)
        return _Lazy(itertools.chain([first], tasks[0]), where), first._app
    if len(tasks) == 1 and not isinstance(tasks[0], dict) and hasattr(tasks[0], "__iter__"):
        tasks = tuple(tasks[0])
    sigs = [_check_sig(t, where) for t in tasks]
    return sigs, next((t._app for t in sigs if t._app is not None), None)


def _listed_members(sig: Signature, key: str) -> list[Signature]:
    members = sig["kwargs"][key]
    if isinstance(members, _Lazy):
        members = sig["kwargs"][key] = list(members.take())
    return members


def _iter_members(sig: Signature, key: str) -> Iterator[Signature]:
    members = sig["kwargs"][key]
    return members.take() if isinstance(members, _Lazy) else iter(members)


class group(Signature):  # noqa: N801 - Celery's name
    """Run tasks in parallel; the result is a GroupResult, in the order given."""

    def __init__(self, *tasks: Any, **options: Any) -> None:
        members, app = _members_of(tasks, "group")
        super().__init__("localq.group", (), {"tasks": members}, options, "group", app=app)

    @property
    def tasks(self) -> list[Signature]:
        return _listed_members(self, "tasks")

    def clone(self, args: Iterable | None = None, kwargs: dict | None = None,
              **options: Any) -> Signature:
        new = group([t.clone(args) for t in self.tasks], **{**self.options, **options})
        new["immutable"] = self.immutable
        return new

    def __call__(self, *args: Any, **options: Any) -> Any:  # type: ignore[override]
        """Send it (Celery's ``group(...)()``), these arguments to each member."""
        return self.apply_async(args, **options)

    def __or__(self, other: Any) -> Signature:
        if isinstance(other, Signature):
            return chord(self.tasks, other)
        return NotImplemented

    def __repr__(self) -> str:
        return f"group([{', '.join(map(repr, self.tasks))}])"

    @property
    def app(self) -> Localq:
        if self._app is None and self.tasks:
            self._app = self.tasks[0].app
        if self._app is None:
            raise ConfigurationError("an empty group has no app: pass app=... to "
                                     "apply_async, or put a task in it")
        return self._app


class chord(Signature):  # noqa: N801 - Celery's name
    """A group (the header) and a body that runs once, with the header's results in
    order, after every header task succeeded: ``chord(header, body)`` or
    ``chord(header)(body)``."""

    def __init__(self, header: Any, body: Any = None, **options: Any) -> None:
        app: Localq | None = None
        if isinstance(header, group):
            app = header._app
            header = header["kwargs"]["tasks"]
        elif isinstance(header, Signature):
            header = [header]
        members: Any = header
        if not isinstance(header, _Lazy):
            members, app = _members_of((header,), "chord header")
        body_sig = None if body is None else _check_sig(body, "chord body")
        if app is None and body_sig is not None:
            app = body_sig._app
        super().__init__("localq.chord", (), {"header": members, "body": body_sig}, options,
                         "chord", app=app)

    @property
    def tasks(self) -> list[Signature]:
        return _listed_members(self, "header")

    @property
    def body(self) -> Signature | None:
        return self["kwargs"]["body"]

    def __call__(self, body: Any = None, **options: Any) -> Any:  # type: ignore[override]
        """``chord(header)(body)``: send the chord with this body."""
        sig = chord(self["kwargs"]["header"], body if body is not None else self.body,
                    **{**self.options, **options})
        return sig.apply_async()

    def clone(self, args: Iterable | None = None, kwargs: dict | None = None,
              **options: Any) -> Signature:
        body = self.body.clone() if self.body is not None else None
        new = chord([t.clone(args) for t in self.tasks], body, **{**self.options, **options})
        new["immutable"] = self.immutable
        return new

    def __repr__(self) -> str:
        return f"chord([{', '.join(map(repr, self.tasks))}], {self.body!r})"

    @property
    def app(self) -> Localq:
        if self._app is None:
            first = self.tasks[0] if self.tasks else self.body
            if first is None:
                raise ConfigurationError("a chord with no header and no body has no app")
            self._app = first.app
        return self._app


class xmap(Signature):  # noqa: N801 - Celery's name
    """``task.map(it)``: one job that returns ``[task(item) for item in it]``."""
    name_of = "localq.map"

    def __init__(self, task: Signature, it: Iterable, **options: Any) -> None:
        super().__init__(self.name_of, (), {"task": dict(task), "it": list(it)}, options,
                         immutable=True, app=task._app)


class xstarmap(xmap):  # noqa: N801 - Celery's name
    """``task.starmap(it)``: one job that returns ``[task(*args) for args in it]``."""
    name_of = "localq.starmap"


class chunks(Signature):  # noqa: N801 - Celery's name
    """``task.chunks(it, n)``: the items in jobs of ``n`` (xstarmap each); sent, a
    GroupResult whose members are lists."""

    def __init__(self, task: Signature, it: Iterable, n: int, **options: Any) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"chunks(..., n={n!r}): n must be a positive integer")
        super().__init__("localq.chunks", (), {"task": dict(task), "it": list(it), "n": n},
                         options, "chunks", app=task._app)

    def group(self) -> group:
        task = signature(self["kwargs"]["task"], app=self._app)
        items, n = self["kwargs"]["it"], self["kwargs"]["n"]
        return group([xstarmap(task, items[i:i + n]) for i in range(0, len(items), n)],
                     **self.options)

    def apply_async(self, args: Iterable | None = None, kwargs: dict | None = None,
                    **options: Any) -> Any:
        return self.group().apply_async(args, kwargs, **options)


def _normal(sig: Signature) -> Signature:
    """The one shape of each kind: a Signature rebuilt as chain/group/chord when it came
    from a dict; a group followed by more steps in a chain becomes a chord (Celery's)."""
    kind = sig.subtask_type
    if kind is not None and not isinstance(sig, (chain, group, chord, chunks)):
        sig = signature(dict(sig), app=sig._app)
    if isinstance(sig, chunks):
        return sig.group()
    if isinstance(sig, chain):
        steps: list[Signature] = []
        for t in sig.tasks:
            t = _normal(t)
            if isinstance(t, chain) and not t.options:
                steps.extend(t.tasks)
            else:
                steps.append(t)
        merged: list[Signature] = []
        for t in steps:
            header = merged[-1] if merged else None
            if isinstance(header, group):
                merged.pop()
                t = chord(header.tasks, t, **header.options)
            merged.append(t)
        if len(merged) == 1:
            only = merged[0]
            return only.clone(**sig.options) if sig.options else only
        out = chain(*merged, **sig.options)
        out._app = sig._app
        return out
    return sig


# ------------------------------------------------------------------ sending

def send(sig: Signature) -> Any:
    """Send a signature of any kind: one transaction for the whole workflow."""
    app = sig.app
    sig = _normal(sig)
    if app.conf.task_always_eager:
        if isinstance(sig, (group, chord)):
            sig.tasks           # read an iterator once, for the checks and the run
        _Build(app).node(sig, waiting=False, parent=None, member=None)   # the same checks
        return _Eager(app).run(sig, None)
    if sig.subtask_type is None and not any(k in sig.options for k in CANVAS_OPTIONS):
        # A lone task: the ordinary send path (Celery's apply_async).
        return sig.type.apply_async(sig.args, sig.kwargs, **sig.options)
    lazy = isinstance(sig, (group, chord)) and \
        isinstance(sig["kwargs"]["tasks" if isinstance(sig, group) else "header"], _Lazy)
    for attempt in range(3):
        build = _Build(app)
        node = build.node(sig, waiting=False, parent=None, member=None)
        try:
            app.store.send_workflow(build.batches(), build.groups)
            break
        except RowClash as clash:
            # Two senders drew the same row numbers (rare), or a task_id is taken.
            if lazy or attempt == 2:
                raise ConfigurationError(
                    f"{clash}. Send it again (built from a list, a workflow is sent again "
                    f"by itself; from an iterator it cannot be)") from None
    app.nudge_workers()
    return node.result


class _Node:
    """A built piece of a workflow: the jobs that start it (seq, takes its parent's
    result), the job whose result is its result (None for a group), its result."""
    __slots__ = ("entries", "tail", "tail_id", "result", "tail_task")

    def __init__(self, entries: list[tuple[int, bool]], tail: int | None,
                 tail_id: str | None, result: Any, tail_task: Task | None) -> None:
        self.entries, self.tail, self.tail_id = entries, tail, tail_id
        self.result, self.tail_task = result, tail_task


RUN_SIZE = 1000      # bulk-sent members per INSERT, at most (and row numbers per lock)
# What a batch of a workflow inserts: job rows, canvas rows (seq, spec), runs (_Run.bound)
Batch = tuple[list[JobRow], list[tuple[int, str]], list[tuple]]


class _Run:
    """Bulk-sent members of one group in a row, of one task with JSON arguments: their
    row numbers and places in the group both consecutive, so that the store inserts them
    with one statement (store/canvas.py's ``insert``: the payloads as one JSON array,
    every other column bound once), ~2x cheaper per row than a row's 16 values."""
    __slots__ = ("name", "check", "gid", "first_seq", "first_index", "next_index",
                 "room", "payloads", "fixed")

    def __init__(self, task: Task, d: Any, gid: str, index: int, seq: int, room: int,
                 now: float) -> None:
        self.name, self.check, self.gid = task.name, task.check_arguments, gid
        self.first_seq, self.first_index, self.next_index = seq, index, index
        self.room = room
        self.payloads: list[str | bytes] = []
        self.fixed = (task.name, d.queue, d.lane, d.priority, d.options,
                      None if d.expires is None else expires_at(d.expires, now), now, gid)

    def add(self, args: Any, kwargs: Any) -> None:
        self.check(args, kwargs)
        self.payloads.append(encode_call("json", self.name, args, kwargs))
        self.next_index += 1
        self.room -= 1

    def bound(self) -> tuple:
        """(first seq, task, queue, lane, priority, options, expires, created, group id,
        first index, the payloads as a JSON array of strings, how many)."""
        return (self.first_seq, *self.fixed, self.first_index,
                json.dumps(self.payloads, ensure_ascii=False, separators=(",", ":")),
                len(self.payloads))


class _Build:
    """A workflow as rows: jobs, canvas specs (seq -> ok/err actions), groups."""

    def __init__(self, app: Localq) -> None:
        self.app = app
        self.now = time.time()
        self.rows: list[JobRow] = []
        self._specs: dict[int, dict[str, list]] = {}
        self.groups: list[tuple] = []
        self.root_id: str | None = None
        self.fixed_args = False     # the next task built gets no parent's result
        self.types: dict[str, tuple[Task, Any]] = {}
        self.block: range = range(0)        # row numbers taken for bulk-sent members
        self.used = 0                       # ... of which used
        self.fixed_specs: list[tuple[int, str]] = []
        self.pending: list[Iterator[None]] = []    # members read while they are inserted
        self.runs: list[_Run] = []                 # bulk-sent members, in runs
        self.run: _Run | None = None               # the run being built
        self.in_runs = 0                           # members in self.runs and self.run

    def spec(self, seq: int) -> dict[str, list]:
        return self._specs.setdefault(seq, {"ok": [], "err": []})

    def batches(self, size: int = 1000) -> Iterator[Batch]:
        """The rows and canvas specs, in batches, built as they are inserted: the
        members of a top-level group or chord header (``pending``) are read from their
        iterator here, so that a chord of 100,000 is never in memory at once. The
        trade-off: the send holds the write lock while it encodes them (~15 us each)."""
        yield self._take()
        while self.pending:
            for _ in self.pending.pop(0):
                if len(self.rows) + self.in_runs >= size:
                    yield self._take()
            yield self._take()

    def _take(self) -> Batch:
        """What was built since the last take. A job's spec is complete by then: later
        steps only add to the specs of jobs they build."""
        rows, self.rows = self.rows, []
        specs, self.fixed_specs = self.fixed_specs, []
        specs.extend((seq, json.dumps({k: v for k, v in spec.items() if v},
                                      separators=(",", ":")))
                     for seq, spec in self._specs.items())
        self._specs = {}
        self._close_run()
        runs, self.runs = [r.bound() for r in self.runs], []
        self.in_runs = 0
        return rows, specs, runs

    def node(self, sig: Signature, waiting: bool, parent: str | None,
             member: tuple[str, int] | None) -> _Node:
        sig = _push_options(_normal(sig))
        if isinstance(sig, chain):
            return self.chain(sig, waiting, parent, member)
        if isinstance(sig, chord):
            return self.chord(sig, waiting, parent, member)
        if isinstance(sig, group):
            if member is not None:
                raise ConfigurationError(
                    f"{sig!r} inside a group or a chord's header, as its last step: localq "
                    f"cannot wait on a group's result there. Make it a chord (group | task)")
            return self.group(sig, waiting, parent)
        return self.task(sig, waiting, parent, member)

    def task(self, sig: Signature, waiting: bool, parent: str | None,
             member: tuple[str, int] | None) -> _Node:
        task = sig.type
        args, kwargs = check_call(task.name, sig.args, sig.kwargs)
        opts = sig.options
        send = {k: opts[k] for k in SEND_OPTIONS if k in opts}
        ignored = {k: v for k, v in opts.items() if k not in SEND_OPTIONS
                   and k not in CANVAS_OPTIONS}
        if ignored:
            from .app import _warn_ignored
            _warn_ignored(ignored)
        receives = waiting and not sig.immutable and not self.fixed_args
        self.fixed_args = False
        task.check_arguments((None, *args) if receives else args, kwargs)
        row = self.app.new_job(task, args, kwargs, now=self.now, **send)
        if row.seq is None:
            row = row._replace(seq=new_seq())
        if receives and row.serializer != "json":
            raise ConfigurationError(
                f"{sig!r} receives another task's result in a canvas, but its arguments "
                f"are encoded with {row.serializer!r}: the canvas carries results as JSON. "
                f"Use serializer='json', or make it immutable (task.si(...))")
        seq, job_id = row.seq, row.id
        assert seq is not None
        if self.root_id is None:
            self.root_id = job_id
        extra: dict[str, Any] = {"root_id": self.root_id}
        if parent is not None:
            extra["parent_id"] = parent
        errbacks = []
        for e in _listed(opts.get("link_error")):
            e = _check_sig(e, "link_error")
            if _new_style_errback(e):
                errbacks.append(dict(e))
            else:       # Celery's old style: sent with the failed task's id
                self.fixed_args = True
                node = self.node(e.clone((job_id,)) if not e.immutable else e, True,
                                 job_id, None)
                for entry, _ in node.entries:
                    self.spec(seq)["err"].append(["go", entry, 0])
                    self.spec(seq)["ok"].append(["drop", entry])
        if errbacks:
            extra["errbacks"] = errbacks
        options = {**decode_options(row.options), **extra}
        row = row._replace(options=json.dumps(options, separators=(",", ":")),
                           eta=WAITING if waiting else row.eta, parent_id=parent,
                           root_id=self.root_id,
                           group_id=member[0] if member else None,
                           group_index=member[1] if member else None)
        self.rows.append(row)
        for link in _listed(opts.get("link")):
            node = self.node(_check_sig(link, "link"), True, job_id, None)
            self._then(seq, task, node, on_failure="drop")
        result: AsyncResult = AsyncResult(job_id, self.app)
        return _Node([(seq, not sig.immutable)], seq, job_id, result, task)

    def _then(self, seq: int, task: Task | None, node: _Node, on_failure: str) -> None:
        """``node`` starts when job ``seq`` succeeds, with its result when it takes one;
        on failure its entries are failed too (a chain) or dropped (a link)."""
        for entry, splice in node.entries:
            if splice:
                _json_result(self.app, task)
            self.spec(seq)["ok"].append(["go", entry, 1 if splice else 0])
            self.spec(seq)["err"].append([on_failure, entry])

    def chain(self, sig: chain, waiting: bool, parent: str | None,
              member: tuple[str, int] | None) -> _Node:
        steps = sig.tasks
        first: _Node | None = None
        last: _Node | None = None
        for i, step in enumerate(steps):
            is_last = i == len(steps) - 1
            if last is not None and last.tail is None:
                raise ConfigurationError(f"{sig!r}: a group can only be the last step of a "
                                         f"chain, or be followed by one task (a chord)")
            node = self.node(step, waiting or last is not None,
                             parent if last is None else last.tail_id,
                             member if is_last else None)
            if last is not None:
                assert last.tail is not None
                self._then(last.tail, last.tail_task, node, on_failure="fail")
                node.result.parent = last.result
            first = first or node
            last = node
        assert first is not None and last is not None
        return _Node(first.entries, last.tail, last.tail_id, last.result, last.tail_task)

    def group(self, sig: group, waiting: bool, parent: str | None) -> _Node:
        gid = sig.options.get("group_id") or str(uuid.uuid4())
        if not waiting and parent is None:
            # Nothing waits on its members: read them while they are inserted (batches).
            ids = MemberIds()
            self.pending.append(self._top_group(_iter_members(sig, "tasks"), gid, ids))
            return _Node([], None, None, GroupResult(gid, None, app=self.app, members=ids),
                         None)
        entries: list[tuple[int, bool]] = []
        results = []
        members = self._members(sig.tasks)
        for i, member in enumerate(members):
            node = self.node(member, waiting, parent, (gid, i))
            entries.extend(node.entries)
            results.append(node.result)
        self.groups.append((gid, len(members), None, None, 0, self.now))
        return _Node(entries, None, None, GroupResult(gid, results, app=self.app), None)

    def _top_group(self, members: Iterator[Signature], gid: str,
                   ids: MemberIds) -> Iterator[None]:
        count = 0
        for i, member in enumerate(self._flat(members)):
            count += 1
            if _plain(member):              # the bulk send's path
                ids.add_seq(self.plain(member, gid, i))
            else:
                ids.add_id(self.node(member, False, None, (gid, i)).tail_id)
            yield None
        self.groups.append((gid, count, None, None, 0, self.now))

    def plain(self, sig: Signature, gid: str, index: int) -> int:
        """The row of a group member with no options and nothing before it: a job like
        any delay()'s, plus its place in the group. Members in a row of one task with
        JSON arguments go into a run (one INSERT for up to RUN_SIZE of them)."""
        name = sig["task"]
        run = self.run
        if run is not None and run.name == name and run.next_index == index and \
                run.gid == gid and run.room:
            run.add(sig["args"], sig["kwargs"])
            self.in_runs += 1
            return run.first_seq + run.next_index - run.first_index - 1
        self._close_run()
        known = self.types.get(name)
        if known is None:
            task = sig.type
            known = self.types[name] = (task, task.send_defaults())
        task, d = known
        args, kwargs = sig["args"], sig["kwargs"]
        seq, room = self._seqs()
        if self.root_id is None:
            self.root_id = format_id(seq)
        if d.serializer == "json":
            self.run = _Run(task, d, gid, index, seq, room, self.now)
            self.run.add(args, kwargs)
            self.in_runs += 1
            return seq
        task.check_arguments(args, kwargs)
        self.used += 1
        # JobRow's fields as a plain tuple: what the INSERT binds, without the NamedTuple
        self.rows.append((seq, None, task.name, d.queue, d.lane, d.priority,  # type: ignore[arg-type]
                          d.serializer, encode_call(d.serializer, task.name, args, kwargs),
                          d.options, 0.0, None if d.expires is None else
                          expires_at(d.expires, self.now), self.now, gid, index, None, None))
        return seq

    def _seqs(self) -> tuple[int, int]:
        """The next free row number of the block, and how many free ones follow it in a
        row (itself included): row numbers are taken RUN_SIZE at a time, one lock each."""
        if self.used >= len(self.block):
            self.block, self.used = new_seqs(RUN_SIZE), 0
        return self.block[self.used], len(self.block) - self.used

    def _close_run(self) -> None:
        run = self.run
        if run is not None:
            self.runs.append(run)
            self.used += len(run.payloads)
            self.run = None

    def _members(self, tasks: Iterable[Signature]) -> list[Signature]:
        return list(self._flat(tasks))

    def _flat(self, tasks: Iterable[Signature]) -> Iterator[Signature]:
        for t in tasks:
            if type(t) is Signature and t["subtask_type"] is None:
                yield t              # a task's signature (the bulk send's members)
                continue
            t = _normal(t)
            if isinstance(t, group):
                yield from self._flat(t.tasks)     # Celery flattens a group in a group
            else:
                yield t

    def _header(self, header: Iterator[Signature], gid: str, waiting: bool,
                parent: str | None, body_seq: int | None, splice: int,
                entries: list[tuple[int, bool]], results: list,
                ids: MemberIds) -> Iterator[None]:
        """Build a chord's header, one member per step; then its counter. A bulk-sent
        member has no canvas row: its group id counts it (store/canvas.py's settle)."""
        bulk = not waiting and parent is None
        count = 0
        for i, h in enumerate(header):
            count += 1
            if bulk and _plain(h):     # the bulk send's path
                ids.add_seq(self.plain(h, gid, i))
                if splice:
                    _json_result(self.app, self.types[h["task"]][0])
                yield None
                continue
            node = self.node(h, waiting, parent, (gid, i))
            assert node.tail is not None
            if splice:
                _json_result(self.app, node.tail_task)
            self.spec(node.tail)["ok"].append(["chord", gid])
            self.spec(node.tail)["err"].append(["chord", gid])
            if not bulk:
                entries.extend(node.entries)
                results.append(node.result)
            ids.add_id(node.tail_id)
            yield None
        self.groups.append((gid, count, count, body_seq, splice, self.now))

    def chord(self, sig: chord, waiting: bool, parent: str | None,
              member: tuple[str, int] | None) -> _Node:
        if sig.body is None:
            raise ConfigurationError(f"{sig!r} has no body: chord(header, body) or "
                                     f"chord(header)(body)")
        gid = sig.options.get("group_id") or str(uuid.uuid4())
        members = self._flat(_iter_members(sig, "header") if not waiting and parent is None
                             else sig.tasks)
        first = next(members, None)
        header: Iterator[Signature] = iter(()) if first is None else \
            itertools.chain([first], members)
        body_sig = _normal(sig.body)
        if first is None:      # Celery runs the body at once with []
            if isinstance(body_sig, group):     # each member, and nothing else
                body_sig = group([m.clone(([],)).set(immutable=True) if m.subtask_type is None else
                                  m.clone(([],)) for m in body_sig.tasks], **body_sig.options)
            else:
                body_sig = body_sig.clone(([],))
                self.fixed_args = True
        body = self.node(body_sig, True if first is not None else waiting, None, member)
        body_seq: int | None
        if isinstance(body_sig, group):
            # Each member of a group body gets the header's results (Celery's): they are
            # listed under the negated seq of the first, which no job has.
            body_seq, splice = None, GROUP_BODY
            if first is not None and body.entries:
                body_seq = body.entries[0][0]
                self.fixed_specs.append((-body_seq, json.dumps(
                    {"bodies": [[seq, 1 if takes else 0] for seq, takes in body.entries]})))
        elif len(body.entries) != 1:
            raise ConfigurationError(
                f"{sig!r}: a chord's body must start with one task or be a group; a chain "
                f"or chord that starts with a group cannot. Make the body a chain that "
                f"starts with one task, or send the inner group as its own chord")
        else:
            body_seq, splice = body.entries[0][0], 1 if body.entries[0][1] else 0
        entries: list[tuple[int, bool]] = []
        results: list = []
        ids = MemberIds()
        steps = self._header(header, gid, waiting, parent, body_seq, splice, entries,
                             results, ids)
        if first is not None and not waiting and parent is None:
            # Nothing waits on the header's members: read them while they are inserted.
            self.pending.append(steps)
            body.result.parent = GroupResult(gid, None, app=self.app, members=ids)
        else:
            for _ in steps:
                pass
            body.result.parent = GroupResult(gid, results, app=self.app)
        if first is None:
            entries = [(seq, False) for seq, _ in body.entries]
        return _Node(entries, body.tail, body.tail_id, body.result, body.tail_task)


# Options given to a chain, group or chord that its tasks take (as in Celery): a chain's
# go to its first task (its links to its last), a group's to every member, a chord's to
# its header (its links to its body). A task's own options win.
PUSHED = ("countdown", "eta", "expires", "queue", "priority", "time_limit", "soft_time_limit",
          "serializer")


def _push_options(sig: Signature) -> Signature:
    if not isinstance(sig, (chain, group, chord)):
        return sig
    pushed = {k: v for k, v in sig.options.items() if k in PUSHED}
    links = {k: _listed(sig.options[k]) for k in ("link", "link_error") if k in sig.options}
    if not pushed and not links:
        return sig
    rest = {k: v for k, v in sig.options.items() if k not in PUSHED and k not in links}

    def given(member: Signature, options: dict) -> Signature:
        extra = {k: v for k, v in options.items() if k not in member.options}
        for key, more in links.items() if options is not pushed else ():
            extra[key] = _listed(member.options.get(key)) + more
        return member.clone(**extra) if extra else member

    if isinstance(sig, chain):
        tasks = list(sig.tasks)
        tasks[0] = given(tasks[0], pushed)
        tasks[-1] = given(tasks[-1], {})
        out: Signature = chain(*tasks, **rest)
    elif isinstance(sig, chord):
        body = sig.body if sig.body is None else given(sig.body, {})
        out = chord(_Lazy((given(m, pushed) for m in _iter_members(sig, "header")),
                          "chord header"), body, **rest)
    else:
        members = (given(given(m, pushed), {}) for m in _iter_members(sig, "tasks"))
        out = group(**rest)
        out["kwargs"]["tasks"] = _Lazy(members, "group")
    out._app = sig._app
    out["immutable"] = sig.immutable
    return out


def _plain(sig: Signature) -> bool:
    return type(sig) is Signature and not sig["options"] and sig["subtask_type"] is None


def _listed(value: Any) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _new_style_errback(sig: Signature) -> bool:
    """Celery's new-style errback takes (request, exc, traceback): called in the worker."""
    if sig.subtask_type is not None:
        return False
    try:
        params = inspect.signature(sig.type.run).parameters.values()
    except (TypeError, ValueError):
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if sig.type.option("bind"):
        positional = positional[1:]
    return len(positional) - len(sig.args) >= 3


def _json_result(app: Localq, task: Task | None) -> None:
    """A result that goes on to another job travels as JSON text."""
    if task is None:
        return
    serializer = app.conf.result_serializer or task.option("serializer")
    if serializer != "json":
        raise ConfigurationError(
            f"task {task.name!r} passes its result on in a canvas, but its results are "
            f"encoded with {serializer!r}: the canvas carries results as JSON. Use "
            f"serializer='json' for the tasks of a chain or chord, or make the next step "
            f"immutable (task.si(...))")


# ------------------------------------------------------------------ GroupResult

class MemberIds:
    """The ids of a group's members in order, as its sender knows them, compactly: row
    numbers in a row (a bulk send's) as ranges, other members' ids as they are. Filled
    while the group is inserted; what a GroupResult lists, whatever expiry did since."""
    __slots__ = ("parts", "count")

    def __init__(self) -> None:
        self.parts: list[range | str | None] = []
        self.count = 0

    def add_seq(self, seq: int) -> None:
        parts = self.parts
        last = parts[-1] if parts else None
        if type(last) is range and last.stop == seq:
            parts[-1] = range(last.start, seq + 1)
        else:
            parts.append(range(seq, seq + 1))
        self.count += 1

    def add_id(self, job_id: str | None) -> None:
        self.parts.append(job_id)
        self.count += 1

    def __len__(self) -> int:
        return self.count

    def ids(self) -> Iterator[str]:
        for part in self.parts:
            if type(part) is range:
                yield from map(format_id, part)
            else:
                yield part      # type: ignore[misc]

    def last(self) -> str | None:
        if not self.parts:
            return None
        part = self.parts[-1]
        return format_id(part[-1]) if type(part) is range else part


class GroupResult(ResultSet):
    """The results of a group, in order: Celery's GroupResult, a ResultSet with an id.
    ``GroupResult.restore(id)`` (or ``app.GroupResult(id)``) finds a stored one from any
    process. A group sent to the file is counted and waited on there (its progress by
    group id), unless its members were changed here (``add``, ``remove``...): then, as a
    group run eagerly, member by member (ResultSet's)."""

    def __init__(self, id: str, results: list | None = None, app: Localq | None = None,
                 parent: Any = None, eager: bool = False,
                 members: MemberIds | None = None) -> None:
        self.id = id
        # AsyncResults, or ids (made AsyncResults when asked for: a bulk send of 100,000
        # jobs does not build 100,000 objects nobody looks at); None: from ``members``
        # (the ids of a group sent here), else read from the file (a restored group)
        self._results = results
        self._members = members
        self._ids = results is not None and any(isinstance(r, str) for r in results)
        self._app = app
        self.parent = parent
        self._eager_run = eager
        self._changed = False

    def __repr__(self) -> str:
        return f"<GroupResult: {self.id}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, GroupResult) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    @classmethod
    def restore(cls, id: str, app: Localq | None = None) -> GroupResult | None:
        """The stored group with this id, None when there is none."""
        if app is None:
            from .app import Localq
            apps = list(Localq._instances)
            if len(apps) != 1:
                raise ConfigurationError("GroupResult.restore(id): pass app= (this process "
                                         "has several apps), or use app.GroupResult(id)")
            app = apps[0]
        if app.store.canvas_group(id) is None:
            return None
        return cls(id, None, app)

    def save(self, backend: Any = None) -> GroupResult:
        """Stored already when sent: nothing to do (Celery's)."""
        return self

    @property
    def results(self) -> list:
        if self._results is None and self._members is not None:
            app = self.app
            self._results = [AsyncResult(i, app) for i in self._members.ids()]
        elif self._results is None:
            app = self.app
            self._results = [AsyncResult(custom or format_id(seq), app)
                             for seq, custom in app.store.group_members(self.id)]
        elif self._ids:
            app = self.app
            self._results = [AsyncResult(r, app) if isinstance(r, str) else r
                             for r in self._results]
            self._ids = False
        return self._results

    children = results

    def __len__(self) -> int:
        if self._results is not None:
            return len(self._results)
        if self._members is not None:
            return len(self._members)
        return len(self.results)

    def _stored(self) -> bool:
        return not self._eager_run and not self._changed and self._app is not None

    def _edited(self) -> None:
        self._changed = True

    def completed_count(self) -> int:
        """How many succeeded (Celery's)."""
        if self._stored():
            return self.app.store.group_progress(self.id)[1]
        return super().completed_count()

    def ready(self) -> bool:
        if self._stored():
            total = len(self)
            return self.app.store.group_progress(self.id)[0] >= total
        return super().ready()

    def successful(self) -> bool:
        if self._stored():
            return self.app.store.group_progress(self.id)[1] >= len(self)
        return super().successful()

    def forget(self) -> None:
        """Forget every member's result, then the group itself (Celery's)."""
        super().forget()
        if not self._eager_run:
            self.app.store.forget_group(self.id)

    def get(self, timeout: float | None = None, propagate: bool = True,
            interval: float | None = None, callback: Any = None,
            disable_sync_subtasks: bool = True, **ignored: Any) -> list:
        """Every member's value, in order; the first failure (in order) raises. Inside a
        task it raises RuntimeError, as ``AsyncResult.get`` does."""
        if not self._stored() or callback is not None:
            return super().get(timeout, propagate, interval, callback, disable_sync_subtasks)
        if disable_sync_subtasks:
            assert_will_not_block(f"the results of group {self.id}")
        app = self.app
        waiter: Waiter | None = None
        # Members mostly finish in order: while the last one is not final, one lookup by
        # key per wake-up instead of a pass over the group (the caller shares the CPU).
        # A group sent here or restored knows its members only as rows: the size and the
        # last one are read, not 1,000 AsyncResults built to look at one.
        last: AsyncResult | None
        if self._results is not None:
            total = len(self)
            last = self.results[-1] if total else None
        elif self._members is not None:
            total, tail_id = len(self._members), self._members.last()
            last = None if tail_id is None else AsyncResult(tail_id, app)
        else:
            total, tail = app.store.group_tail(self.id)
            last = None if tail is None else AsyncResult(tail[1] or format_id(tail[0]), app)
        try:
            while True:
                if last is not None and last.state not in FINAL_STATES and waiter is not None:
                    if not waiter.wait():
                        raise TimeoutError(f"the operation timed out: group {self.id} is not "
                                           f"done after {timeout}s")
                    continue
                done, ok, first = app.store.group_progress(self.id)
                if ok >= total:
                    return self._values()
                if first is not None and propagate:
                    member = self.results[first]
                    if member.ready():
                        member.get(propagate=True, disable_sync_subtasks=False)   # raises
                if done >= total:      # every member final: no get() below waits
                    return [r.get(propagate=propagate, disable_sync_subtasks=False)
                            for r in self.results]
                if waiter is None:
                    waiter = Waiter(app.path, timeout)
                if not waiter.wait():
                    raise TimeoutError(f"the operation timed out: group {self.id} has "
                                       f"{done} of {total} done after {timeout}s")
        finally:
            if waiter is not None:
                waiter.close()

    join = get
    join_native = get

    def _values(self) -> list:
        app = self.app
        forced = app.conf.result_serializer
        checked: set[tuple[str, str]] = set()      # (serializer, task): checked once
        out: list = []
        append = out.append
        for state, serializer, result, _, _, task, _, _ in app.store.group_results(self.id):
            serializer = forced or serializer
            if (serializer, task) not in checked:
                check_accepted(serializer, result_content(app, task),
                               f"a result of group {self.id}", "result_accept_content")
                checked.add((serializer, task))
            append(decode_value(serializer, result))
        return out


# ------------------------------------------------------------------ eager mode

class _Eager:
    """Eager mode: every primitive in process, each task through run_eager (the same
    serializer and retry rules as a worker)."""

    def __init__(self, app: Localq) -> None:
        self.app = app

    def run(self, sig: Signature, parent: Any, has_parent: bool = False) -> Any:
        """Run ``sig`` (with ``parent``'s value first unless it is immutable, when
        ``has_parent``); returns its result object."""
        sig = _normal(sig)
        if isinstance(sig, chain):
            result: Any = None
            value, given = parent, has_parent
            for step in sig.tasks:
                step_result = self.run(step, value, given)
                if result is not None:
                    step_result.parent = result
                result = step_result
                if isinstance(result, GroupResult):
                    continue
                if not result.successful():
                    break       # as on a worker, the steps after a failure do not run
                value, given = result.result, True
            return result
        if isinstance(sig, chord):
            members = [self.run(h, parent, has_parent) for h in sig.tasks]
            header = GroupResult(str(uuid.uuid4()), members, app=self.app, eager=True)
            failed = next((r for r in members if not r.successful()), None)
            assert sig.body is not None
            if failed is not None:
                exc = failed.result
                message = (f"Dependency {failed.id} raised "
                           f"{type(exc).__name__}({str(exc)!r})")
                body_result: Any = _eager_failure(self.app, sig.body, ChordError(message))
            else:
                body_result = self.run(sig.body, [r.result for r in members], True)
            body_result.parent = header
            return body_result
        if isinstance(sig, group):
            return GroupResult(str(uuid.uuid4()),
                               [self.run(m, parent, has_parent) for m in sig.tasks],
                               app=self.app, eager=True)
        task = sig.type
        args = sig.args if (sig.immutable or not has_parent) else (parent, *sig.args)
        send = {k: sig.options[k] for k in ("task_id", "serializer") if k in sig.options}
        from .worker.execute import run_eager
        result = run_eager(task, tuple(args), dict(sig.kwargs), send)
        if result.successful():
            for link in _listed(sig.options.get("link")):
                self.run(_check_sig(link, "link"), result.result, True)
        else:
            for errback in _listed(sig.options.get("link_error")):
                errback = _check_sig(errback, "link_error")
                if _new_style_errback(errback):
                    from .task import Request
                    errback.type(Request(id=result.id, task=task.name), result.result,
                                 result.traceback, *errback.args, **errback.kwargs)
                else:
                    self.run(errback, result.id, True)
        return result


def _eager_failure(app: Localq, sig: Signature, exc: BaseException) -> EagerResult:
    name = sig.name if sig.subtask_type is None else None
    return EagerResult(str(uuid.uuid4()), app, "FAILURE", "json",
                       encode_exception("json", exc),
                       f"{type(exc).__module__}.{type(exc).__qualname__}", None, 0, name)


