"""Issue 19, through dvc: every input a task touches is tracked, or its stage refuses it by
name: helper code anywhere, data files and path params, environment variables, a cache the
task writes, code from outside the project, and an edit while the stage runs."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from detflow.artifact import read_dataset
from dvc_project import dvc
from project_copy import environment

pytestmark = pytest.mark.e2e


def configure(repo: Path, source: str, **params) -> None:
    """tasks/mine.py holds ``source``; params run its ``task`` once (one seed, one trial)."""
    (repo / "tasks" / "mine.py").write_text(source)
    values = yaml.safe_load((repo / "params.yaml").read_text())
    values.update(task="tasks.mine.task", torch_seed=[0], trial_id=["a"], **params)
    (repo / "params.yaml").write_text(yaml.safe_dump(values, sort_keys=False))


def out(repo: Path) -> float:
    return float(read_dataset(repo / "data/result.nc")["out"].values.ravel()[0])


def add_task_dep(repo: Path, dep: str) -> None:
    text = (repo / "dvc.yaml").read_text()
    (repo / "dvc.yaml").write_text(
        text.replace("      - tasks\n", f"      - tasks\n      - {dep}\n", 1)
    )


HELPERS = """
import helpers.scale
from tasks import util

def task(torch_seed):
    return {"out": [helpers.scale.FACTOR * util.OFFSET]}
"""


def test_helper_code_anywhere_in_the_project_is_tracked(repo):
    (repo / "helpers").mkdir()
    (repo / "helpers" / "__init__.py").touch()
    (repo / "helpers" / "scale.py").write_text("FACTOR = 2.0\n")
    (repo / "tasks" / "util.py").write_text("OFFSET = 1.0\n")
    configure(repo, HELPERS)
    refused = dvc(repo, "repro", check=False)
    assert "the task ran module helpers from helpers/__init__.py" in refused
    assert "add `- helpers` to stages.task.deps" in refused
    add_task_dep(repo, "helpers")
    dvc(repo, "repro")
    assert out(repo) == 2.0
    files = json.loads(read_dataset(repo / "data/trials/a.nc").attrs["code_files"])
    assert {"helpers/scale.py", "tasks/util.py", "tasks/mine.py"} <= set(files)
    (repo / "helpers" / "scale.py").write_text("FACTOR = 3.0\n")
    assert "Running stage 'task@a'" in dvc(repo, "repro")
    assert out(repo) == 3.0


READS = """
from pathlib import Path

def task(torch_seed):
    return {"out": [float(Path("%s").read_text())]}
"""


def test_data_files_and_path_params_are_tracked(repo):
    (repo / "input").mkdir()
    (repo / "input" / "scale.txt").write_text("2.0")
    configure(repo, READS % "input/scale.txt")
    refused = dvc(repo, "repro", check=False)
    assert "the task read input/scale.txt" in refused
    assert "add `- input/scale.txt` to stages.task.deps" in refused
    # In inputs/, the conventional place, it is a dep with no dvc.yaml edit.
    (repo / "inputs" / "scale.txt").write_text("2.0")
    configure(repo, READS % "inputs/scale.txt")
    dvc(repo, "repro")
    assert out(repo) == 2.0
    (repo / "inputs" / "scale.txt").write_text("4.0")
    assert "Running stage 'task@a'" in dvc(repo, "repro")
    assert out(repo) == 4.0
    # A param that names a file is an input too, refused before anything runs.
    configure(
        repo,
        "def task(torch_seed, scale_file):\n    return {'out': [1.0]}\n",
        scale_file="input/scale.txt",
    )
    refused = dvc(repo, "repro", check=False)
    assert "the param scale_file names input/scale.txt" in refused


ENV = """
import os

def task(torch_seed):
    return {"out": [float(os.environ.get("MYSCALE", "1"))]}
"""


def test_environment_variables_the_task_reads_are_declared(repo):
    configure(repo, ENV)
    refused = dvc(repo, "repro", check=False, env={"MYSCALE": "2"})
    assert "tasks/mine.py:5 reads the environment variable MYSCALE" in refused
    assert "add it to env_vars in params.yaml" in refused
    configure(repo, ENV, env_vars=["MYSCALE"])
    dvc(repo, "repro", env={"MYSCALE": "2"})
    assert out(repo) == 2.0
    assert json.loads(read_dataset(repo / "data/trials/a.nc").attrs["env_read"]) == {"MYSCALE": "2"}
    assert "Running stage 'task@a'" in dvc(repo, "repro", env={"MYSCALE": "5"})
    assert out(repo) == 5.0


CACHE = """
from pathlib import Path

def task(torch_seed):
    cache = Path("cache/features.txt")
    if not cache.exists():
        cache.parent.mkdir(exist_ok=True)
        cache.write_text(str(torch_seed + 1.0))
    return {"out": [float(cache.read_text())]}
"""


def test_a_cache_written_into_the_project_is_refused(repo):
    configure(repo, CACHE)
    refused = dvc(repo, "repro", check=False)
    assert "the task wrote cache/features.txt, inside the project but not an output" in refused


def test_code_from_outside_the_project_is_refused(repo, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "faraway.py").write_text("FACTOR = 2.0\n")
    configure(
        repo, "import faraway\n\ndef task(torch_seed):\n    return {'out': [faraway.FACTOR]}\n"
    )
    # A path entry, as a .pth file in site-packages adds one.
    refused = dvc(repo, "repro", check=False, env={"PYTHONPATH": str(outside)})
    assert f"the task ran module faraway from {outside / 'faraway.py'}" in refused
    assert "owned by no installed package" in refused


SLOW = """
import time
from pathlib import Path

def task(torch_seed, marker):
    Path(marker).write_text("started")
    time.sleep(4)
    return {"out": [float(Path("inputs/scale.txt").read_text())]}
"""


def test_an_input_edited_while_the_stage_runs_fails_it(repo, tmp_path):
    (repo / "inputs" / "scale.txt").write_text("2.0")
    marker = tmp_path / "started"
    configure(repo, SLOW, marker=str(marker))
    running = subprocess.Popen(
        [sys.executable, "-m", "dvc", "repro"],
        cwd=repo,
        env=environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert time.monotonic() < deadline and running.poll() is None, running.stdout.read()
        time.sleep(0.1)
    (repo / "inputs" / "scale.txt").write_text("3.0")
    log, _ = running.communicate(timeout=300)
    assert running.returncode != 0
    assert "inputs/scale.txt changed while this stage ran" in log


def test_launcher_jobs_are_watched_too(repo):
    """joblib runs each seed in a worker process: what the task reads there is checked too."""
    (repo / "input").mkdir()
    (repo / "input" / "scale.txt").write_text("2.0")
    configure(repo, READS % "input/scale.txt", launcher={"name": "joblib", "n_jobs": 2})
    refused = dvc(repo, "repro", check=False)
    assert "the task read input/scale.txt" in refused
