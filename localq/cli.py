"""``python -m localq``: worker, status, show, purge, rate-limit, revoke.

Nothing imports this module; it imports the app and the supervisor.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from datetime import datetime
from typing import Sequence

from .app import Localq, load_app
from .exceptions import LocalqError
from .status import age

EPILOG = "Docs: README.md. Celery users: the worker flags follow `celery worker`."


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return args.run(args)
    except LocalqError as exc:
        print(f"localq: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m localq", epilog=EPILOG,
                                     description="A task queue for one host on one SQLite file.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def app_args(p: argparse.ArgumentParser, required: bool = True) -> None:
        p.add_argument("-A", "--app", required=required, metavar="MODULE:APP",
                       help="the app, as module:attribute (e.g. tasks:app)")
        p.add_argument("--db", metavar="PATH", help="use this database file instead of the "
                       "app's (for status/show/purge without the app)")

    w = sub.add_parser("worker", help="run a worker: a supervisor and its child processes")
    app_args(w)
    w.add_argument("-c", "--concurrency", type=int, default=None,
                   help="child processes (default: worker_concurrency, else the CPU count)")
    w.add_argument("-Q", "--queues", default=None, help="comma-separated queues "
                   "(default: task_default_queue, 'default')")
    w.add_argument("-l", "--loglevel", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    w.add_argument("--max-tasks-per-child", type=int, default=None)
    w.add_argument("--max-memory-per-child", type=int, default=None, metavar="KIB",
                   help="recycle a child whose resident memory passes this many KiB")
    w.add_argument("--time-limit", type=float, default=None, help="hard time limit, seconds")
    w.add_argument("--soft-time-limit", type=float, default=None, help="soft limit, seconds")
    w.set_defaults(run=cmd_worker)

    s = sub.add_parser("status", help="what is running, waiting and failing")
    app_args(s, required=False)
    s.set_defaults(run=cmd_status)

    sh = sub.add_parser("show", help="one job: state, result or error, every attempt")
    app_args(sh, required=False)
    sh.add_argument("id")
    sh.set_defaults(run=cmd_show)

    p = sub.add_parser("purge", help="delete waiting jobs")
    app_args(p, required=False)
    p.add_argument("-Q", "--queues", default=None, help="only these queues (comma-separated)")
    p.add_argument("-f", "--force", action="store_true", help="do not ask")
    p.set_defaults(run=cmd_purge)

    r = sub.add_parser("rate-limit", help="set a task's global rate limit at run time")
    app_args(r, required=False)
    r.add_argument("task", help="the task's name, e.g. tasks.add")
    r.add_argument("rate", help="N/s, N/m, N/h, a bare number (per second), or 0 for none")
    r.set_defaults(run=cmd_rate_limit)

    v = sub.add_parser("revoke", help="revoke jobs (a running one with --terminate)")
    app_args(v, required=False)
    v.add_argument("ids", nargs="+")
    v.add_argument("--terminate", action="store_true")
    v.set_defaults(run=cmd_revoke)
    return parser


def _existing_app(args: argparse.Namespace) -> Localq:
    """The app of a command that only reads or edits jobs: it never creates a database."""
    app = _app(args)
    if not os.path.exists(app.path):
        print(f"localq: there is no localq database at {app.path}: pass --app module:app or "
              f"--db PATH (or set $LOCALQ_DB), or run from the folder that holds it",
              file=sys.stderr)
        raise SystemExit(1)
    return app


def _app(args: argparse.Namespace) -> Localq:
    if args.app:
        try:
            app = load_app(args.app)
        except Exception as exc:  # one line, no traceback: it is the user's module
            kind = type(exc).__name__
            print(f"localq: cannot load the app {args.app!r}: {kind}: {exc}. Run from the "
                  f"folder that holds the module, or set PYTHONPATH.", file=sys.stderr)
            raise SystemExit(2) from None
    else:
        app = Localq(args.db)
    if args.db:
        app.path = args.db
    return app


def cmd_worker(args: argparse.Namespace) -> int:
    app = _app(args)
    from .embedded import _log_to_stderr
    from .supervisor import Supervisor
    _log_to_stderr(args.loglevel)
    logging.getLogger("localq").handlers[0].setFormatter(logging.Formatter(
        "[%(asctime)s: %(levelname)s/%(processName)s %(process)d] %(message)s"))
    try:
        app.import_task_modules()
    except ImportError as exc:
        print(f"localq: cannot import a module named in the app's imports/include: {exc}",
              file=sys.stderr)
        return 2
    if args.time_limit is not None:
        app.conf.task_time_limit = args.time_limit
    if args.soft_time_limit is not None:
        app.conf.task_soft_time_limit = args.soft_time_limit
    queues = [q.strip() for q in (args.queues or app.conf.task_default_queue).split(",")
              if q.strip()]
    concurrency = args.concurrency or app.conf.worker_concurrency or os.cpu_count() or 1
    return Supervisor(app, concurrency=concurrency, queues=queues,
                      max_tasks_per_child=args.max_tasks_per_child
                      or app.conf.worker_max_tasks_per_child,
                      max_memory_per_child=args.max_memory_per_child
                      or app.conf.worker_max_memory_per_child).run()


def _ago(ts: float | None, now: float) -> str:
    if not ts:
        return "-"
    secs = now - ts
    if secs < 0:
        return f"in {age(-secs)}"
    return f"{age(secs)} ago"


def cmd_status(args: argparse.Namespace) -> int:
    from .status import render_status
    print(render_status(_existing_app(args)))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    app = _existing_app(args)
    row = app.store.job(args.id)
    if row is None:
        print(f"localq: no job {args.id} in {app.path}", file=sys.stderr)
        return 1
    now = time.time()
    print(f"id:       {row['id']}\ntask:     {row['task']}\nstate:    {row['state']}\n"
          f"queue:    {row['queue']} (priority {row['priority']})\n"
          f"created:  {stamp(row['created'])} ({_ago(row['created'], now)})\n"
          f"retries:  {row['retries']}")
    if row["eta"]:
        print(f"eta:      {stamp(row['eta'])} ({_ago(row['eta'], now)})")
    result = app.AsyncResult(args.id)
    if row["state"] == "SUCCESS":
        print(f"result:   {result.result!r}")
    elif row["state"] in ("FAILURE", "REVOKED"):
        print(f"error:    {result.result!r}")
    print("attempts:")
    for a in result.attempts:
        took = f"{(a['ended'] - a['started']):.3f}s" if a["ended"] and a["started"] else "-"
        print(f"  #{a['attempt']}  {a['outcome']:<8} started {stamp(a['started'])}  took {took}"
              f"  pid {a['pid'] or '-'}  {a['exc_type'] or ''} {a['exc_message'] or ''}".rstrip())
    if row["traceback"]:
        print("traceback:\n" + row["traceback"].rstrip())
    return 0


def stamp(t: float | None) -> str:
    return datetime.fromtimestamp(t).isoformat(" ", "seconds") if t else "-"


def cmd_purge(args: argparse.Namespace) -> int:
    app = _existing_app(args)
    queues = [q.strip() for q in args.queues.split(",")] if args.queues else None
    where = f"queue(s) {', '.join(queues)}" if queues else "all queues"
    if not args.force:
        if not sys.stdin.isatty():
            print("localq: purge deletes waiting jobs; pass -f to confirm", file=sys.stderr)
            return 2
        answer = input(f"Delete every waiting job in {where} of {app.path}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing deleted")
            return 1
    count = app.control.purge(queues)
    print(f"purged {count} waiting job(s) from {where}")
    return 0


def cmd_rate_limit(args: argparse.Namespace) -> int:
    app = _app(args)
    app.control.rate_limit(args.task, None if args.rate.lower() == "none" else args.rate)
    print(f"rate limit of {args.task}: {args.rate} (global, for every worker on {app.path})")
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    app = _existing_app(args)
    app.control.revoke(args.ids, terminate=args.terminate)
    for job_id in args.ids:
        print(f"{job_id}: {app.AsyncResult(job_id).state}")
    return 0
