"""A temporary git copy of the project, and helpers to run git and dvc in it."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from how_to import how_to_params
from project_copy import environment, make_copy

TRIALS = ("a", "b", "c")


def sh(repo: Path, *command: str, check: bool = True, env: dict | None = None) -> str:
    """Run ``command`` in ``repo``; ``env`` adds to the environment (e.g. another CPU path)."""
    done = subprocess.run(
        command, cwd=repo, env={**environment(), **(env or {})}, capture_output=True, text=True
    )
    if not check:
        assert done.returncode != 0, f"{' '.join(command)} should have failed:\n{done.stdout}"
        return done.stdout + done.stderr
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def dvc(repo: Path, *args: str, check: bool = True, env: dict | None = None) -> str:
    return sh(repo, sys.executable, "-m", "dvc", *args, check=check, env=env)


def start_queue(repo: Path, *args: str) -> None:
    """`dvc queue start`: its workers outlive it, so their output must not go to a pipe that
    this test would wait on."""
    command = [sys.executable, "-m", "dvc", "queue", "start", *args]
    done = subprocess.run(command, cwd=repo, env=environment(), stdout=subprocess.DEVNULL)
    assert done.returncode == 0, f"{' '.join(command)} failed"


def wait_for_queue(repo: Path, expected: int, timeout: float = 900) -> str:
    """Poll `dvc queue status` until ``expected`` tasks have ended; then stop the workers.

    Counting ended tasks, not looking for "Queued" or "Running": while a worker picks a task
    up, `dvc queue status` can list it as neither. With several workers, DVC 3.67 can also
    leave one idle after the queue is empty (it logs "shutting down due to empty queue" and
    keeps running), so leftovers are terminated.
    """
    deadline = time.monotonic() + timeout
    while True:
        status = dvc(repo, "queue", "status")
        ended = sum(
            line.split()[-1] in ("Success", "Failed")
            for line in status.splitlines()[1:]
            if line.split()
        )
        if ended >= expected:
            break
        assert time.monotonic() < deadline, f"the queue did not finish:\n{status}"
        time.sleep(3)
    for pid_file in (repo / ".dvc/tmp/exps/celery").glob("dvc-exp-worker-*.pid"):
        with contextlib.suppress(ValueError, ProcessLookupError):
            os.kill(int(pid_file.read_text()), signal.SIGTERM)
    return status


def lock_md5s(repo: Path) -> dict[str, str]:
    """Output path -> md5, as dvc.lock records them."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    return {
        out["path"]: out["md5"]
        for stage in lock["stages"].values()
        for out in stage.get("outs", [])
    }


def metrics(repo: Path) -> dict:
    """The report: metrics.json's summary with evidence.json's details (seeds, provenance)."""
    return {
        **json.loads((repo / "evidence.json").read_text()),
        **json.loads((repo / "metrics.json").read_text()),
    }


@pytest.fixture(scope="session")
def baseline(tmp_path_factory) -> Path:
    """The project after `git init`, `dvc repro` and a commit: what a user has after setup."""
    # The tests' own params, not the shipped params.yaml (which the commands-table test runs).
    repo = make_copy(tmp_path_factory.mktemp("baseline") / "project", params_file=how_to_params())
    # -f: every trial computed here, none restored from the bytes the committed dvc.lock names
    log = dvc(repo, "repro", "-f")
    assert all(f"Running stage 'task@{t}'" in log for t in TRIALS)
    assert "Running stage 'aggregate'" in log
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "--allow-empty", "-qm", "dvc repro")  # same bits: no change
    return repo


@pytest.fixture
def repo(baseline, tmp_path) -> Path:
    """A private copy of the baseline, so each test's experiments start from the same commit."""
    return Path(shutil.copytree(baseline, tmp_path / "project", symlinks=True))
