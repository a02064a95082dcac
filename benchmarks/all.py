#!/usr/bin/env python3
"""Every benchmark of this folder in turn, then one table of the issue-7 targets.

    python benchmarks/all.py [--quick] [--json PATH]

Runs throughput.py, map_bench.py, scale.py, limits_bench.py and rate_bench.py,
one after the other, each as a subprocess of this Python, from the project
root; their output goes to the terminal as they run. Each is given
``--json FILE`` (in a temporary folder) and the summary is read from those
files, never from the printed text. --quick passes each script its own quick
flags: ``--quick`` to all but map_bench.py, which gets ``--repeat 1`` (still
100,000 items, the size the target is set for).

The summary: for each issue-7 target, the figure measured, the same figure for
multiprocessing.Pool(2) where the script measures one (throughput.py,
map_bench.py), the ratio localq/Pool (for rates higher is better, for times
lower), and OK or MISS; then the targets of limits_bench.py and rate_bench.py
(issues 4 and 5), and how each script ended. The targets that compare localq
with Huey, Celery and the rest come from the peer harness, not from here.

Exit code 1 when a script failed or a figure of a target is missing; a MISS is
a result, not a failure. --json PATH saves the summary and every script's
figures. Stdlib only.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import _common as c

# script, its flags in --quick mode, the name of its figures in the summary
SCRIPTS = [
    ("throughput.py", ["--quick"], "throughput"),
    ("map_bench.py", ["--repeat", "1"], "map"),
    ("scale.py", ["--quick"], "scale"),
    ("limits_bench.py", ["--quick"], "limits"),
    ("rate_bench.py", ["--quick"], "rate"),
]

IDLE_MAX = 1.0      # "≈ 0 % CPU": under 1 % of one core, as throughput.py checks it


def run_script(script: str, flags: list[str], json_path: str) -> tuple[int, float]:
    """Run one script, its output straight to this terminal; (exit code, seconds)."""
    cmd = [sys.executable, os.path.join(c.HERE, script), *flags, "--json", json_path]
    print(f"\n=== {' '.join(['benchmarks/' + script, *flags])}", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=c.ROOT)
    try:
        code = proc.wait()
    except KeyboardInterrupt:
        proc.wait()     # it had the SIGINT too: let it stop its own workers
        raise
    seconds = time.perf_counter() - t0
    print(f"=== {script}: exit code {code}, {seconds:.1f}s", flush=True)
    return code, seconds


def load(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------- the summary

show = c.show       # rate, ms, s, pct, ratio, bytes


class Row:
    """One line of the summary."""

    def __init__(self, figure: str, target: str, unit: str, value: float | None,
                 pool: float | None = None, ok: bool | None = None, note: str = "",
                 info: bool = False) -> None:
        self.figure, self.target, self.unit = figure, target, unit
        self.value, self.pool, self.ok, self.note, self.info = value, pool, ok, note, info

    def cells(self) -> tuple[str, ...]:
        ratio = "-"
        if self.value is not None and self.pool:
            r = self.value / self.pool
            ratio = f"{r:.2f}x" if r >= 0.1 else f"{r:.4f}x"
        verdict = "info" if self.info else c.verdict(None if self.value is None else self.ok)
        pool = "-" if self.pool is None else show(self.pool, self.unit)
        return (self.figure, self.target, show(self.value, self.unit), pool, ratio, verdict,
                self.note)


def throughput_rows(data: dict | None) -> list[Row]:
    figs = (data or {}).get("figures", {})
    n = f"N={data['n']:,}" if data else ""

    def row(key: str, figure: str, target: str, test, note: str = n) -> Row:
        f = figs.get(key, {})
        value = f.get("localq")
        return Row(figure, target, f.get("unit", ""), value, f.get("pool"),
                   None if value is None else test(value), note)

    return [
        row("stream", "streaming end to end, 2 children", ">= 25,000 jobs/s",
            lambda v: v >= 25_000),
        row("enqueue", "delay(), one producer", ">= 30,000/s", lambda v: v >= 30_000,
            f"{n}, no worker running; Pool: apply_async"),
        row("drain", "backlog drain", ">= 150,000 jobs/s", lambda v: v >= 150_000),
        row("rtt_p50", "round trip p50, idle", "<= 0.5 ms", lambda v: v <= 0.5,
            "200 sequential delay().get()"),
        row("rtt_p95", "round trip p95, idle", "<= 1 ms", lambda v: v <= 1.0,
            "200 sequential delay().get()"),
        row("start_cli", "worker start to first result, CLI", "<= 0.1 s", lambda v: v <= 0.1,
            "median of 3; Pool: Pool(2) to first result"),
        row("start_embedded", "worker start to first result, embedded", "<= 0.1 s",
            lambda v: v <= 0.1, "median of 3, app.worker()"),
        row("idle_worker", "idle worker (supervisor + children)", f"~0 % (< {IDLE_MAX:g} %)",
            lambda v: v < IDLE_MAX, figs.get("idle_worker", {}).get("note", "")),
        row("idle_client", "idle get() (client blocked)", f"~0 % (< {IDLE_MAX:g} %)",
            lambda v: v < IDLE_MAX, figs.get("idle_client", {}).get("note", "")),
    ]


def map_rows(data: dict | None) -> list[Row]:
    median = (data or {}).get("median", {})
    items = data["items"] if data else 100_000
    value = median.get("localq")
    note = (f"median of {data['repeat']}; Pool(2).map, default chunksize; chunksize=1: "
            f"{show(median.get('pool_chunksize1'), 'rate')}" if data else "")
    return [Row(f"app.map of {items:,} no-op items", ">= 50,000 items/s", "rate", value,
                median.get("pool"), None if value is None else value >= 50_000, note)]


def scale_rows(data: dict | None) -> list[Row]:
    targets = {t["key"]: t for t in (data or {}).get("targets", [])}
    figs = (data or {}).get("figures", {})
    n = f"{data['n']:,}" if data else "N"
    base = f"{data['base']:,}" if data else "10,000"
    rows = []
    for key, label in [("enqueue", "enqueue"), ("drain_first", "drain, first 10,000"),
                       ("drain_all", "drain, whole backlog"), ("stream", "streaming")]:
        t, f = targets.get(key, {}), figs.get(key, {})
        rows.append(Row(f"{n} queued: {label}", f">= 0.80x of at {base}", "ratio",
                        t.get("value"), ok=t.get("ok"),
                        note=f"{show(f.get('base'), 'rate')} -> {show(f.get('big'), 'rate')}"))
    t = targets.get("rss", {})
    rows.append(Row(f"{n} queued: supervisor RSS", "flat: <= 1.2x", "ratio", t.get("value"),
                    ok=t.get("ok"), note="end of the drain / after 10,000 done: "
                    + t.get("shown", "n/a")))
    f = figs.get("bytes_job", {})
    g = figs.get("bytes_job_ckpt", {})
    rows.append(Row(f"{n} queued: db + wal per finished job", "reported", "bytes",
                    f.get("big"), info=True, note=f"after wal_checkpoint(TRUNCATE): "
                    f"{show(g.get('big'), 'bytes')}; at {base}: {show(f.get('base'), 'bytes')}"))
    t = targets.get("expiry", {})
    expiry = (data or {}).get("expiry", {})
    rows.append(Row("result_expires: drain while cleaning", ">= 0.90x of nothing to clean",
                    "ratio", t.get("value"), ok=t.get("ok"),
                    note=f"{data['expire_backlog']:,} jobs beside {n} expired results: "
                    f"{show(expiry.get('old', {}).get('median'), 'rate')} vs "
                    f"{show(expiry.get('default', {}).get('median'), 'rate')}" if data else ""))
    return rows


def summary(results: dict[str, dict], quick: bool) -> tuple[list[str], list[Row]]:
    data = {name: r["data"] for name, r in results.items()}
    rows = (throughput_rows(data.get("throughput")) + map_rows(data.get("map"))
            + scale_rows(data.get("scale")))
    lines = [f"issue 7 targets{' (quick: smaller runs, rougher figures)' if quick else ''}: "
             f"{c.machine()}, {c.git_commit('commit ')}", ""]
    lines += c.table([("figure", "target", "localq", "Pool(2)", "localq/Pool", "verdict",
                       "note")] + [r.cells() for r in rows], note=True)
    lines += ["", "(the targets beside Huey, Celery and the rest come from the peer harness, "
              "not from these scripts)", "", "other targets:"]
    for name, script in [("limits", "limits_bench.py"), ("rate", "rate_bench.py")]:
        d = data.get(name)
        if d is None:
            lines.append(f"  {script}: no figures")
            continue
        for t in d.get("targets", []):
            if "shown" in t:
                shown = t["shown"]
            else:
                shown = "n/a" if t.get("max") is None else \
                    f"max {t['max']:.1f} ms, p50 {t['p50']:.1f} ms"
            lines.append(f"  {script}: {c.target_line(t['text'], shown, t.get('ok'))}")
    lines += ["", "scripts:"]
    for name, r in results.items():
        errors = (r["data"] or {}).get("errors") or []
        state = "no --json file" if r["data"] is None else f"{len(errors)} error(s)"
        lines.append(f"  {r['script']}: exit code {r['code']}, {r['seconds']:.1f}s, {state}"
                     + (f": {errors[0]}" if errors else ""))
    return lines, rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="each script's quick mode: " + "; ".join(
                            f"{s} {' '.join(q)}" for s, q, _ in SCRIPTS))
    c.add_json_option(parser)
    args = parser.parse_args()
    json_path = c.json_path(args)
    started = time.perf_counter()
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="localq-all-") as folder:
        for script, quick_flags, name in SCRIPTS:
            path = os.path.join(folder, f"{name}.json")
            code, seconds = run_script(script, quick_flags if args.quick else [], path)
            results[name] = {"script": script, "code": code, "seconds": seconds,
                             "data": load(path)}
    wall = time.perf_counter() - started
    lines, rows = summary(results, args.quick)
    lines.append(f"total {wall:.1f}s")
    print("\n" + "\n".join(lines), flush=True)
    if json_path:
        c.write_json(json_path, {
            "quick": args.quick, **c.run_info(), "seconds": wall,
            "summary": [dict(zip(("figure", "target", "localq", "pool", "ratio", "verdict",
                                  "note"), r.cells()), value=r.value, pool_value=r.pool,
                             unit=r.unit) for r in rows],
            "scripts": results})
    failed = any(r["code"] != 0 or r["data"] is None for r in results.values())
    missing = any(r.value is None and not r.info for r in rows)
    return 1 if failed or missing else 0


if __name__ == "__main__":
    sys.exit(main())
