"""A temporary git copy of the project, and helpers to run git and dvc in it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from project_copy import environment, make_copy

TRIALS = ("a", "b", "c")


def sh(repo: Path, *command: str, check: bool = True) -> str:
    done = subprocess.run(command, cwd=repo, env=environment(), capture_output=True, text=True)
    if not check:
        assert done.returncode != 0, f"{' '.join(command)} should have failed:\n{done.stdout}"
        return done.stdout + done.stderr
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def dvc(repo: Path, *args: str, check: bool = True) -> str:
    return sh(repo, sys.executable, "-m", "dvc", *args, check=check)


def lock_md5s(repo: Path) -> dict[str, str]:
    """Output path -> md5, as dvc.lock records them."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    return {
        out["path"]: out["md5"]
        for stage in lock["stages"].values()
        for out in stage.get("outs", [])
    }


def metrics(repo: Path) -> dict:
    return json.loads((repo / "metrics.json").read_text())


def how_to_reference(seed: int) -> np.ndarray:
    torch.manual_seed(seed)
    return torch.nn.Linear(10, 1)(torch.arange(10.0)).detach().numpy()


@pytest.fixture(scope="session")
def baseline(tmp_path_factory) -> Path:
    """The project after `git init`, `dvc repro` and a commit: what a user has after setup."""
    repo = make_copy(tmp_path_factory.mktemp("baseline") / "project")
    log = dvc(repo, "repro")
    assert all(f"Running stage 'task@{t}'" in log for t in TRIALS)
    assert "Running stage 'aggregate'" in log
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "dvc repro")
    return repo


@pytest.fixture
def repo(baseline, tmp_path) -> Path:
    """A private copy of the baseline, so each test's experiments start from the same commit."""
    return Path(shutil.copytree(baseline, tmp_path / "project", symlinks=True))
