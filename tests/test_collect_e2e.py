"""collect through real DVC experiments on two commits: a named experiment of the previous
commit is found (`dvc exp list --all-commits` lists it), and experiments of different code
are refused, naming the file that differs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dvc_project import dvc, sh
from project_copy import environment

pytestmark = pytest.mark.e2e


def collect(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "detflow.collect", *args],
        cwd=repo,
        capture_output=True,
        text=True,
        env=environment(),
    )


TASK = """from detflow.tasks import forward as how_to

SCALE = {scale}


def forward(module, data):
    return how_to(module, data)
"""


def commit_task(repo: Path, scale: int) -> None:
    """A project task (hashed into the trials' code_files as tasks/mine.py), committed."""
    (repo / "tasks/mine.py").write_text(TASK.format(scale=scale))
    sh(repo, "git", "add", "tasks/mine.py")
    sh(repo, "git", "commit", "-qm", f"tasks/mine.py: SCALE {scale}")


def exp_run(repo: Path, name: str, seed: int) -> None:
    dvc(repo, "exp", "run", "-n", name, "-S", "task=tasks.mine.forward", "-S", f"torch_seed={seed}")


def test_collect_finds_experiments_of_any_commit_and_refuses_other_code(repo):
    commit_task(repo, 1)
    exp_run(repo, "v1", 0)
    sh(repo, "git", "commit", "--allow-empty", "-qm", "the same code")
    exp_run(repo, "same", 1)
    # The next commit's code differs in one file: the trials rerun with other code.
    commit_task(repo, 2)
    exp_run(repo, "v2", 2)
    assert "v1" in dvc(repo, "exp", "list", "--all-commits")
    assert "v1" not in dvc(repo, "exp", "list")  # an experiment of an earlier commit

    merged = collect(repo, "v1", "same")
    assert merged.returncode == 0, merged.stderr
    assert "collected 2 experiments into data/collected.nc (torch_seed: 2," in merged.stdout

    mixed = collect(repo, "v1", "v2")
    assert mixed.returncode == 1, mixed.stdout
    line = mixed.stderr.strip().splitlines()[-1]
    assert line.startswith("detflow: error: experiments v2 (")
    assert "differ in code: tasks/mine.py differs: collect experiments of one config" in line
