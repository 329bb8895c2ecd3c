"""The stages as users run them: one clear error line, a traceback only on request."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

TESTS = Path(__file__).resolve().parent


def run_stage(module: str, cwd: Path, *args: str, verbose: bool = False):
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    env.pop("DETFLOW_VERBOSE", None)
    if verbose:
        env["DETFLOW_VERBOSE"] = "1"
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True
    )


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"torch_seed": -3}, "detflow: error: torch_seed -3 is out of range"),
        ({"trial_id": []}, "detflow: error: trial_id must be a non-empty list"),
        (
            {"task": "tasks_for_tests.raises_on_seed_one"},
            "failed on torch_seed 1: ValueError: boom",
        ),
    ],
)
def test_trial_errors_are_one_line(tmp_path, project_params, edit, message):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({**project_params, **edit}))
    done = run_stage("detflow.trial", tmp_path, "--out", "trials/a.nc")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "trials" / "a.nc").exists()


def test_verbose_shows_the_traceback(tmp_path, project_params):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({**project_params, "torch_seed": "x"}))
    done = run_stage("detflow.trial", tmp_path, "--out", "a.nc", verbose=True)
    assert done.returncode == 1
    assert "Traceback" in done.stderr
    assert done.stderr.strip().endswith(
        "detflow: error: torch_seed 'x' is not a seed range: write first..last, e.g. 0..49, "
        "or give an int or a list of ints"
    )
    flag = run_stage("detflow.trial", tmp_path, "--out", "a.nc", "--verbose")
    assert "Traceback" in flag.stderr


def test_invalid_yaml_is_one_line(tmp_path):
    (tmp_path / "params.yaml").write_text("torch_seed: [0,\n")
    done = run_stage("detflow.aggregate", tmp_path)
    assert done.returncode == 1
    assert (
        done.stderr.strip()
        == "detflow: error: params.yaml is not valid YAML at line 2: fix its syntax"
    )
