"""The pytest plugin, through real pytest runs of sample projects in tmp_path.

The plugin is found the way an installed localq is found: through its
``pytest11`` entry point. So that this holds whether or not localq is
installed in the running environment, each run gets a distribution record
(``localq-*.dist-info/entry_points.txt``) written from pyproject.toml's own
entry-point table, on PYTHONPATH next to the source tree. No ``-p`` option,
no conftest registering anything.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import tomllib
from pathlib import Path
from typing import Iterator

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "README.md"


def entry_point_site(tmp_path: Path) -> Path:
    """A folder holding localq's distribution record, as pip would install it."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    entry_points = project["entry-points"]["pytest11"]
    site = tmp_path / "site"
    info = site / f"localq-{project['version']}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: localq\n"
                                   f"Version: {project['version']}\n")
    (info / "entry_points.txt").write_text(
        "[pytest11]\n" + "".join(f"{k} = {v}\n" for k, v in entry_points.items()))
    return site


@pytest.fixture
def scratch() -> Iterator[Path]:
    """The sample run's TMPDIR: a short path, like /tmp, so that the wake-up sockets sit
    beside each temporary database. It must be empty after the run."""
    folder = Path(tempfile.mkdtemp(prefix="lq-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def run_pytest(tmp_path: Path, project: Path, *args: str, scratch: Path | None = None,
               **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items()
            if k not in ("PYTEST_ADDOPTS", "PYTEST_DISABLE_PLUGIN_AUTOLOAD", "PYTEST_PLUGINS")}
    if scratch is None:
        scratch = tmp_path / "tmp"
        scratch.mkdir(exist_ok=True)
    site = tmp_path / "site"
    if not site.exists():
        entry_point_site(tmp_path)
    base.update(PYTHONPATH=os.pathsep.join([str(site), str(ROOT)]), TMPDIR=str(scratch), **env)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           f"--basetemp={tmp_path / 'basetemp'}", *args],
                          cwd=project, env=base, capture_output=True, text=True, timeout=300)


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_until_dead(pids: list[int], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while any(pid_alive(p) for p in pids):
        assert time.monotonic() < deadline, [p for p in pids if pid_alive(p)]
        time.sleep(0.01)


def write(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(textwrap.dedent(text))
    return folder


USER_CODE = {
    "myproject.py": """
        import os
        from localq import Localq

        app = Localq(os.environ["USER_DB"])      # the production path

        @app.task
        def add(x, y):
            return x + y
    """,
    "conftest.py": """
        import pytest
        import myproject

        @pytest.fixture
        def localq_app():
            return myproject.app
    """,
    "test_twenty.py": """
        import os
        import tempfile

        import pytest

        import myproject
        from myproject import add, app


        def note_pids(worker):
            with open(f"/proc/{worker.pid}/task/{worker.pid}/children") as f:
                children = f.read().split()
            with open(os.environ["PIDS"], "a") as f:
                f.write(" ".join([str(worker.pid), *children]) + "\\n")
            return children


        @pytest.mark.parametrize("i", range(20))
        def test_a_real_worker_on_a_fresh_database(localq_worker, i):
            assert localq_worker.app is app
            assert app.path != os.environ["USER_DB"]
            assert app.path.startswith(tempfile.gettempdir())
            assert app.AsyncResult("same-id-in-every-test").state == "PENDING"
            result = add.apply_async((i, 1), task_id="same-id-in-every-test")
            assert result.get(timeout=10) == i + 1
            assert len(note_pids(localq_worker)) == 2          # real child processes


        def test_the_override_is_honoured(localq_app):
            assert localq_app is myproject.app
            assert localq_app.path != os.environ["USER_DB"]
    """,
}

NO_CONFTEST = {
    "test_default_app.py": """
        import os

        import pytest


        @pytest.fixture
        def mul(localq_app):
            @localq_app.task(name="mul")
            def mul(x, y):
                return x * y
            return mul


        def test_the_default_app_with_a_real_worker(mul, localq_worker):
            assert mul.delay(6, 7).get(timeout=10) == 42
            assert localq_worker.alive


        def test_the_default_app_is_kept_off_the_working_directory(localq_app):
            assert os.path.dirname(localq_app.path) != os.getcwd()
    """,
}


def test_a_project_that_overrides_localq_app_in_its_conftest(tmp_path, scratch):
    project = write(tmp_path / "project", USER_CODE)
    user_db = tmp_path / "production" / "jobs.db"
    user_db.parent.mkdir()
    pids = tmp_path / "pids"
    proc = run_pytest(tmp_path, project, scratch=scratch, USER_DB=str(user_db),
                      PIDS=str(pids))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "21 passed" in proc.stdout
    assert os.listdir(user_db.parent) == []                 # never opened, nothing beside it
    assert os.listdir(scratch) == []                        # every temporary folder removed
    started = [[int(p) for p in line.split()] for line in pids.read_text().splitlines()]
    assert len(started) == 20 and all(len(w) == 3 for w in started)   # a worker per test
    wait_until_dead([pid for worker in started for pid in worker])


PROD_NO_CONFTEST = {
    "tasks.py": """
        from localq import Localq

        app = Localq("prod_jobs.db")       # relative: in the project folder

        @app.task
        def add(x, y):
            return x + y
    """,
    "test_prod.py": """
        import os

        from tasks import add, app


        def test_a_worker_for_the_codes_app_without_conftest(localq_worker):
            assert localq_worker.app is app
            assert add.delay(2, 3).get(timeout=20) == 5


        def test_sending_without_any_fixture_stays_off_the_real_file():
            add.delay(1, 1)
            assert os.path.basename(app.path) != "prod_jobs.db" or \\
                os.path.dirname(app.path) != os.getcwd()
    """,
}



@pytest.mark.parametrize("files, real_db", [(NO_CONFTEST, "localq.db"),
                                            (PROD_NO_CONFTEST, "prod_jobs.db")],
                         ids=["a-fresh-default-app", "the-app-in-the-code"])
def test_a_project_without_conftest_never_opens_a_real_database(tmp_path, scratch, files,
                                                                real_db):
    project = write(tmp_path / "project", files)
    proc = run_pytest(tmp_path, project, scratch=scratch)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 passed" in proc.stdout
    assert not [n for n in os.listdir(project) if n.startswith(real_db)]
    assert os.listdir(scratch) == []


def test_with_autoloading_off_the_plugin_loads_with_p(tmp_path):
    project = write(tmp_path / "project", NO_CONFTEST)
    proc = run_pytest(tmp_path, project, PYTEST_DISABLE_PLUGIN_AUTOLOAD="1")
    assert proc.returncode != 0 and re.search(r"fixture 'localq_\w+' not found", proc.stdout)
    proc = run_pytest(tmp_path, project, "-p", "localq.pytest_plugin",
                      PYTEST_DISABLE_PLUGIN_AUTOLOAD="1")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def doc_files() -> dict[str, str]:
    """The files shown in the README (code blocks opening with ``# file:``)."""
    found = re.findall(r"```python\n# file: (\S+)\n(.*?)```", DOCS.read_text(), re.S)
    return {name: body for name, body in found}


def test_the_documented_examples_run(tmp_path):
    files = doc_files()
    assert {"squares.py", "nightly.py", "fastest.py", "tasks.py", "conftest.py",
            "test_tasks.py", "test_unit.py"} <= set(files)
    project = write(tmp_path / "docs", files)
    env = dict(os.environ, PYTHONPATH=str(ROOT))

    def script(*args: str) -> subprocess.CompletedProcess:
        proc = subprocess.run([sys.executable, *args], cwd=project, env=env, timeout=120,
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        return proc

    squares = script("squares.py")
    assert squares.stdout.splitlines() == [str([x * x for x in range(10)]), "[8, 9]", "998001"]
    assert squares.stderr.splitlines()[-1].startswith("map 1000/1000 (100%)")
    assert script("nightly.py").stdout == "49500\n"
    again = script("nightly.py", "--drop")
    assert again.stdout == "49500\n" and "reused 100" in again.stderr
    assert sorted(script("fastest.py").stdout.split()) == ["1", "4", "9"]

    proc = run_pytest(tmp_path, project, "test_tasks.py", "test_unit.py")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "4 passed" in proc.stdout


TWO_APPS = {
    "tasks.py": """
        from localq import Localq

        app = Localq("a.db")
        other = Localq("b.db")
    """,
    "test_two.py": """
        import tasks


        def test_which_app(localq_worker):
            pass
    """,
}


def test_with_two_apps_and_no_override_the_test_says_what_to_add(tmp_path, scratch):
    project = write(tmp_path / "project", TWO_APPS)
    proc = run_pytest(tmp_path, project, scratch=scratch)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "2 Localq apps exist (tasks:app, tasks:other)" in proc.stdout
    assert "def localq_app():" in proc.stdout and "return tasks.app" in proc.stdout
    assert not [n for n in os.listdir(project) if n.endswith(".db")]
