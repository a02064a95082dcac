"""The fault harness in CI: ``python benchmarks/chaos.py --quick`` finds no lost, stuck or
wrongly blamed job, no worker that died, and an intact database.

It runs the harness as a user would, as a subprocess, on every scenario.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# every scenario of the harness: each must print a row
SCENARIOS = ["kill-supervisor", "kill-child", "kill-producer", "sigstop",
                   "sigstop-in-write", "many-workers", "child-crash", "full-disk", "write-lock",
             "kill-chord"]


def _processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line or environment holds ``text``."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        for name in ("cmdline", "environ"):
            try:
                with open(f"/proc/{pid}/{name}", "rb") as f:
                    if text.encode() in f.read():
                        found.append(int(pid))
                        break
            except OSError:
                pass
    return found


@pytest.mark.slow
def test_chaos_quick_finds_no_fault():
    proc = subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "chaos.py"), "--quick"],
                            cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)      # it stops its own processes, then exits
        out, _ = proc.communicate(timeout=120)
        pytest.fail(f"chaos.py --quick ran over 600 s:\n{out}")
    folder = re.search(r"in (/\S+)$", out.splitlines()[0])
    assert folder, out
    header = [line for line in out.splitlines() if line.startswith("scenario ")]
    assert header and "blamed" in header[0] and "integrity" in header[0], out
    rows = {line.split()[0]: line for line in out.splitlines()
            if line.split() and line.split()[0] in SCENARIOS}
    assert sorted(rows) == sorted(SCENARIOS), out
    assert proc.returncode == 0, out
    assert all(line.rstrip().endswith(" OK") for line in rows.values()), out
    assert not os.path.exists(folder.group(1)), "the harness left its folder behind"
    assert not _processes_mentioning(folder.group(1)), "the harness left processes behind"
