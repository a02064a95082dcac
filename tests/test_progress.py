"""progress=True: what a map shows on stderr, through a pipe and on a terminal.

Each test runs a real script (an embedded worker, a map) in ``tmp_path`` with
its stderr on a pipe or on a pseudo-terminal, and reads what it wrote.
"""
from __future__ import annotations

import io
import os
import pty
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from localq import progress

ROOT = Path(__file__).resolve().parent.parent
LINE = re.compile(r"^map (\d+)/(\d+) \(\d+%\)  [\d,.]+/s  elapsed \S+  left \S+"
                  r"(  reused \d+)?(  failed \d+)?$")

SCRIPT = """
import sys, time
from localq import Localq

app = Localq(sys.argv[1])

@app.task
def work(x, pause):
    if x == 13 and "--fail" in sys.argv:
        raise ValueError("thirteen")
    time.sleep(pause)
    return x

n, pause = int(sys.argv[2]), float(sys.argv[3])
resume = "p" if "--resume" in sys.argv else None
with app.worker(concurrency=2, loglevel="CRITICAL"):
    try:
        results = app.starmap(work, [(i, pause) for i in range(n)], progress=True,
                              resume=resume)
        print("sum", sum(results))
    except ValueError as exc:
        print("raised", exc)
"""


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "progress_script.py"
    path.write_text(textwrap.dedent(SCRIPT))
    return path


def env() -> dict:
    return dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p))


def run_piped(script: Path, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(script), str(script.parent / "p.db"), *args],
                          capture_output=True, text=True, env=env(), timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc


def test_through_a_pipe_plain_lines_ending_with_n_of_n(script):
    proc = run_piped(script, "500", "0")
    assert proc.stdout == f"sum {sum(range(500))}\n"
    assert "\r" not in proc.stderr and "\x1b" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert all(LINE.match(line) for line in lines), lines
    assert lines[-1].startswith("map 500/500 (100%)")
    assert len(lines) <= 3       # the start, maybe one every 5 s, the end: no flood


def test_on_a_terminal_the_line_is_redrawn_in_place(script):
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen([sys.executable, str(script), str(script.parent / "t.db"),
                                 "120", "0.005"], stdout=subprocess.PIPE, stderr=slave,
                                env=env())
        os.close(slave)
        slave = -1
        chunks = []
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:        # EIO: the other side is closed
                break
            if not data:
                break
            chunks.append(data)
        assert proc.wait(120) == 0
        proc.stdout.close()
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)
    shown = b"".join(chunks).decode()
    draws = shown.split("\r\x1b[2K")[1:]
    assert len(draws) >= 2, shown            # redrawn, not one line per update
    assert all(LINE.match(d.rstrip("\r\n")) for d in draws), draws
    assert draws[-1].startswith("map 120/120 (100%)") and draws[-1].endswith("\n")
    assert all("\n" not in d for d in draws[:-1])     # only the last line ends the line


def test_a_failed_map_shows_its_failures(script):
    proc = run_piped(script, "40", "0", "--fail")
    assert proc.stdout == "raised thirteen\n"
    last = proc.stderr.splitlines()[-1]
    assert LINE.match(last) and "failed 1" in last and "40/40" not in last


def test_a_resumed_map_shows_what_it_reused(script):
    run_piped(script, "200", "0", "--resume")
    proc = run_piped(script, "200", "0", "--resume")
    assert proc.stdout == f"sum {sum(range(200))}\n"
    lines = proc.stderr.splitlines()
    assert lines[-1].startswith("map 200/200 (100%)") and "reused 200" in lines[-1]


def test_plain_lines_are_spaced_in_time(monkeypatch):
    stream = io.StringIO()
    bar = progress.Progress(10, stream=stream)
    for done in range(11):
        bar.update(done)
    bar.close(10)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2      # the first update, then nothing for 5 s, then the end
    assert lines[0].startswith("map 0/10 (0%)") and lines[1].startswith("map 10/10 (100%)")

    monkeypatch.setattr(progress, "PLAIN_EVERY", 0.0)
    stream = io.StringIO()
    bar = progress.Progress(3, stream=stream)
    for done in range(4):
        bar.update(done, failures=done // 2)
    bar.close(3, 1)
    shown = [line.split("  ")[0] for line in stream.getvalue().splitlines()]
    assert shown[:4] == ["map 0/3 (0%)", "map 1/3 (33%)", "map 2/3 (67%)", "map 3/3 (100%)"]
    assert set(shown[4:]) <= {"map 3/3 (100%)"}
    assert stream.getvalue().splitlines()[-1].endswith("failed 1")
