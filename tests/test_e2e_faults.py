"""Faults under real `dvc repro`: a kill mid-write, a concurrent run, and recovery afterwards."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from detflow.artifact import read_dataset
from dvc_project import dvc, environment, metrics, sh

pytestmark = pytest.mark.e2e

STALL_HOOK = Path(__file__).resolve().parent / "stall_hook"


def set_params(repo: Path, **changes) -> None:
    path = repo / "params.yaml"
    values = yaml.safe_load(path.read_text())
    values.update(changes)
    path.write_text(yaml.safe_dump(values, sort_keys=False))


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def wait_for(predicate, what: str, timeout: float = 180.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def start_dvc(repo: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "dvc", *args],
        cwd=repo,
        env=env or environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def kill_mid_write(repo: Path, stall_dir: Path) -> str:
    """Run `dvc repro` until the first trial is half-way through its netCDF write; SIGKILL it."""
    stall_dir.mkdir()
    env = {
        **environment(),
        "DETFLOW_TEST_STALL_DIR": str(stall_dir),
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(STALL_HOOK), os.environ.get("PYTHONPATH")])
        ),
    }
    run = start_dvc(repo, "repro", env=env)
    marker = wait_for(lambda: next(stall_dir.glob("*.pid"), None), "the stalled write")
    os.kill(int(marker.name.split(".")[0]), signal.SIGKILL)
    output, _ = run.communicate(timeout=120)
    assert run.returncode != 0, output
    return marker.read_text()


def test_sigkill_mid_write_leaves_no_partial_file(repo, tmp_path):
    set_params(repo, torch_seed=[0, 1, 2])
    partial = kill_mid_write(repo, tmp_path / "stall")
    trials = repo / "data/trials"
    # The half-written file was a hidden temporary, never the output path.
    assert Path(partial).parent == trials and Path(partial).name.startswith(".a.nc.")
    assert not (trials / "a.nc").exists()
    # b and c had not started: their previous, complete files are still there.
    assert sorted(p.name for p in trials.glob("*.nc")) == ["b.nc", "c.nc"]
    assert read_dataset(trials / "b.nc")["torch_seed"].values.tolist() == [0, 1]

    log = dvc(repo, "repro")
    assert "Running stage 'task@a'" in log
    assert read_dataset(repo / "data/result.nc")["out"].shape == (3, 3, 1)
    assert metrics(repo)["deterministic"] is True


def test_a_second_concurrent_repro_fails_on_the_lock(repo):
    set_params(repo, torch_seed=[0, 1, 2])
    first = start_dvc(repo, "repro")
    # DVC removes a stage's outputs just before running it, holding the repo lock throughout.
    wait_for(lambda: not (repo / "data/trials/a.nc").exists(), "the first repro to start")
    second = subprocess.run(
        [sys.executable, "-m", "dvc", "repro"],
        cwd=repo,
        env=environment(),
        capture_output=True,
        text=True,
    )
    first_output, _ = first.communicate(timeout=300)
    assert second.returncode != 0
    # DVC's own lock message: the repo lock, or the read-write lock on the outputs.
    message = second.stderr + second.stdout
    assert "Unable to acquire lock" in message or "is busy, it is being blocked by" in message
    assert first.returncode == 0, first_output
    assert read_dataset(repo / "data/result.nc")["out"].shape == (3, 3, 1)
    assert metrics(repo)["deterministic"] is True


def corrupt_a_trial(repo: Path) -> None:
    (repo / "data/trials/b.nc").unlink()  # DVC keeps cache files read-only; replace, never edit
    (repo / "data/trials/b.nc").write_bytes(b"CDF\x01 truncated")
    output = dvc(repo, "repro", "--single-item", "aggregate", check=False)
    assert "data/trials/b.nc is not a readable netCDF file" in output


def strict_failure(repo: Path) -> None:
    output = dvc(repo, "exp", "run", "-S", "strict=true", "-S", "pre_task=null", check=False)
    assert "strict: trials disagree" in output


def killed_trial(repo: Path) -> None:
    set_params(repo, torch_seed=[0, 1, 2])
    kill_mid_write(repo, repo.parent / "stall")


@pytest.mark.parametrize("failure", [killed_trial, corrupt_a_trial, strict_failure])
def test_last_good_result_comes_back_after_a_failure(repo, failure):
    """The README's recovery, as written: `python -m detflow.restore` brings back the committed
    params, lock, metrics, plots and data/result.nc, once it has checked that DVC's cache holds
    the committed bytes."""
    kept = ("data/result.nc", "metrics.json", "data/plots/out.csv")
    good = {name: md5(repo / name) for name in kept}
    failure(repo)
    restored = sh(repo, sys.executable, "-m", "detflow.restore")
    assert "restored the result committed at HEAD" in restored
    assert {name: md5(repo / name) for name in kept} == good
    # Only the stages that run on every repro (environment, report) are "changed".
    status = dvc(repo, "status")
    assert status.split() == ["environment:", "always", "changed", "report:", "always", "changed"]


def test_two_exp_runs_in_one_workspace_never_pass_off_mixed_numbers(repo):
    """A second `dvc exp run` rewrites params.yaml under the first: the first's trial stage
    names that, the second fails on DVC's lock, and nothing reports numbers of other params."""
    tests_dir = Path(__file__).resolve().parent
    env = {**environment(), "PYTHONPATH": str(tests_dir)}
    set_params(repo, pre_task="tasks_for_tests.slow_seed", torch_seed=[0, 1, 2])
    first = start_dvc(repo, "exp", "run", env=env)
    wait_for(lambda: not (repo / "data/trials/a.nc").exists(), "the first run to start")
    second = subprocess.run(
        [sys.executable, "-m", "dvc", "exp", "run", "-S", "torch_seed=[5]"],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
    )
    first_output, _ = first.communicate(timeout=300)
    outputs = {"first": (first.returncode, first_output)}
    outputs["second"] = (second.returncode, second.stdout + second.stderr)
    first_code, first_log = outputs["first"]
    second_code, second_log = outputs["second"]
    # The second's -S rewrote params.yaml before DVC's lock stopped it; the first names that.
    locked = (
        "is busy, it is being blocked by" in second_log or "Unable to acquire lock" in second_log
    )
    assert second_code != 0 and locked, second_log
    assert first_code != 0, first_log
    assert "params.yaml no longer holds: run `dvc repro` again once no edit" in first_log
    assert "Traceback" not in first_log + second_log
    # Whatever the workspace holds now agrees with what dvc.lock says made it.
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    locked_seeds = lock["stages"]["aggregate"]["params"]["params.yaml"]["torch_seed"]
    if (repo / "data/result.nc").exists() and first.returncode == 0:
        result = read_dataset(repo / "data/result.nc")
        assert result["torch_seed"].values.tolist() == locked_seeds
