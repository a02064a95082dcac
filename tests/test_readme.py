"""Every Python example in the README runs, as a user would paste it into a file."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
# Blocks that open with "# file: NAME" belong together (a project with a conftest and
# tests, scripts run from the shell): test_plugin.py runs them as files of one project.
BLOCKS = [b for b in re.findall(r"```python\n(.*?)```", README, re.S)
          if not b.startswith("# file:")]


def test_readme_has_examples_and_the_two_commands():
    assert len(BLOCKS) >= 5
    bash = re.findall(r"```bash\n(.*?)```", README, re.S)
    assert "examples/quickstart.py" in bash[0]
    test_command = bash[1].strip()
    assert "pytest" in test_command
    assert test_command.split("&& ", 2)[2] in (ROOT / ".ci" / "run").read_text()


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index, tmp_path):
    script = tmp_path / f"example_{index}.py"
    script.write_text(BLOCKS[index])
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(ROOT), LOCALQ_DB=""))
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    expected = [m.group(1).split(" (")[0].strip() for m in
                re.finditer(r"^\s*print\(.*\)\s+#\s*(?!about)(.+)$", BLOCKS[index], re.M)
                if "or:" not in m.group(1)]
    printed = proc.stdout.splitlines()
    for want in expected:
        assert any(line.strip() == want for line in printed), (want, proc.stdout)


def test_quickstart_example_runs_on_the_default_database(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "quickstart.py")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={k: v for k, v in dict(os.environ, PYTHONPATH=str(ROOT)).items()
                               if k != "LOCALQ_DB"})
    assert proc.returncode == 0, proc.stderr
    assert "add(2, 3) = 5" in proc.stdout
    assert (tmp_path / "localq.db").exists()
    # add.delay() went through the script's inbox (a worker ran): gone at exit, copied
    assert not list((tmp_path / "localq.db.d").glob("inbox-*"))


def test_every_command_line_in_the_readme_parses():
    """Each `python -m localq ...` / `localq ...` line the README shows is accepted by the
    real parser (flags, their values and their order), so that a pasted line runs."""
    import shlex

    from localq.cli import _parser
    lines = [line.split("  #")[0].strip() for block in re.findall(r"```bash\n(.*?)```",
                                                                  README, re.S)
             for line in block.splitlines()]
    commands = [shlex.split(line) for line in lines
                if line.startswith(("python -m localq ", "localq "))]
    assert len(commands) >= 15
    for argv in commands:
        argv = argv[3:] if argv[0] == "python" else argv[1:]
        try:
            parsed = _parser().parse_args(argv)
        except SystemExit:
            pytest.fail(f"the README's `{shlex.join(argv)}` does not parse")
        assert parsed.command, argv
