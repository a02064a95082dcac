"""Typed tasks: mypy, run on a small file that uses localq, catches a misspelt method and
arguments of the wrong type, and passes a correct file."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import localq

try:
    import mypy  # noqa: F401
except ImportError:      # not a skip: a missing type checker would hide a broken contract
    pytest.fail("mypy is not installed: install the test extra (pip install -e '.[test]')",
                pytrace=False)

HEADER = """\
from typing import Any
from localq import Localq, Task, AsyncResult

app = Localq("jobs.db")

@app.task
def add(x: int, y: int) -> int:
    return x + y

@app.task(queue="math", max_retries=2)
def concat(a: str, b: str = "") -> str:
    return a + b

@app.task(bind=True, default_retry_delay=1)
def bound(self: Task[Any, Any], x: int) -> int:
    if self.request.retries < (self.max_retries or 0):
        raise self.retry(countdown=self.default_retry_delay)
    return x
"""

CORRECT = """
total: int = add.delay(1, 2).get(timeout=1)
joined: str = concat.apply_async(("a",), countdown=1).get()
direct: int = add(1, 2)
again: int = bound.delay(3).get()
pending: AsyncResult[int] = add.AsyncResult("some-id")
limit: float | None = add.time_limit
name: str = add.name
"""

WRONG = {
    "add.dealy(1, 2)": '"Task[[int, int], int]" has no attribute "dealy"; maybe "delay"?',
    'add.delay("x", None)': 'Argument 1 to "delay" of "Task" has incompatible type "str"',
    "add(1)": 'Missing positional argument "y" in call to "__call__" of "Task"',
    "text: str = add.delay(1, 2).get()": 'Incompatible types in assignment '
                                         '(expression has type "int", variable has type "str")',
    "bound.delay(1, 2)": 'Too many arguments for "delay" of "Task"',
    "add.maxretries": '"Task[[int, int], int]" has no attribute "maxretries"',
}


def mypy_errors(tmp_path: Path, body: str) -> list[str]:
    source = tmp_path / "uses_localq.py"
    source.write_text(HEADER + textwrap.dedent(body))
    env = dict(os.environ)
    # localq from this checkout, whatever the install kind (an editable install's import
    # hook is invisible to mypy); its own errors are not this test's business.
    env["MYPYPATH"] = str(Path(localq.__file__).resolve().parent.parent)
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-incremental", "--follow-imports=silent",
         "--show-error-codes", "--no-error-summary", "--hide-error-context",
         "--python-version", "3.11", source.name],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode in (0, 1), done.stdout + done.stderr     # 2: mypy itself failed
    return [line for line in done.stdout.splitlines() if ": error:" in line]


def test_a_correct_use_of_typed_tasks_passes_mypy(tmp_path):
    assert mypy_errors(tmp_path, CORRECT) == []


def test_mypy_catches_misspelt_methods_and_wrong_arguments(tmp_path):
    first_line = HEADER.count("\n") + 1
    errors = mypy_errors(tmp_path, "".join(f"{line}\n" for line in WRONG))
    for n, (line, expected) in enumerate(WRONG.items()):
        found = [e for e in errors if e.startswith(f"uses_localq.py:{first_line + n}:")]
        assert found and expected in found[0], (line, errors)
