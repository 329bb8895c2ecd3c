"""README "Scaling out", exactly as written: launchers, the queue, several machines, collect."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from detflow.artifact import read_dataset
from dvc_project import (
    TRIALS,
    dvc,
    lock_md5s,
    sh,
    start_queue,
    wait_for_queue,
)
from how_to import how_to_reference
from project_copy import environment

pytestmark = pytest.mark.e2e

TESTS_DIR = Path(__file__).resolve().parent


def collect(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, "-m", "detflow.collect", *args],
        cwd=repo,
        capture_output=True,
        text=True,
        env=environment(),
    )
    assert (done.returncode == 0) == check, f"{done.stdout}\n{done.stderr}"
    return done


def test_launcher_gives_the_in_process_trial_md5s(repo):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    before = lock_md5s(repo)
    log = dvc(repo, "exp", "run", "-S", "launcher={name: joblib, n_jobs: 2}")
    assert all(f"Running stage 'task@{t}'" in log for t in TRIALS)
    after = lock_md5s(repo)
    assert {t: after[f"data/trials/{t}.nc"] for t in TRIALS} == {
        t: before[f"data/trials/{t}.nc"] for t in TRIALS
    }


def test_queued_seeds_collect_into_the_direct_repro(repo):
    dvc(repo, "exp", "run", "--queue", "-S", "torch_seed=range(0,4)")
    start_queue(repo, "-j", "2")
    status = wait_for_queue(repo, expected=4)
    assert status.count("Success") == 4, status

    done = collect(repo)
    assert "collected 4 experiments into data/collected.nc" in done.stdout
    assert "deterministic: every trial agrees bitwise within each seed" in done.stdout
    assert "reading experiments" in done.stderr  # the progress bar
    collected = read_dataset(repo / "data/collected.nc")
    assert collected["out"].shape == (4, len(TRIALS), 1)
    assert collected["torch_seed"].values.tolist() == [0, 1, 2, 3]
    # Nothing was checked out: the workspace still has the baseline's params and result.
    assert yaml.safe_load((repo / "params.yaml").read_text())["torch_seed"] == [0, 1]

    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["torch_seed"] = [0, 1, 2, 3]
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    dvc(repo, "repro")
    direct = read_dataset(repo / "data/result.nc")
    assert collected["out"].values.tobytes() == direct["out"].values.tobytes()
    assert collected["out"].sel(torch_seed=3, trial_id="b").values.tobytes() == (
        how_to_reference(3).tobytes()
    )


def test_two_machines_push_and_a_third_collects_with_the_shared_seed_verified(repo, tmp_path):
    remote, store = tmp_path / "remote.git", tmp_path / "dvc-store"
    sh(tmp_path, "git", "init", "-q", "--bare", str(remote))
    dvc(repo, "remote", "add", "-d", "store", str(store))
    sh(repo, "git", "commit", "-qam", "a DVC remote that all machines share")
    sh(repo, "git", "remote", "add", "origin", str(remote))
    sh(repo, "git", "push", "-q", "origin", "HEAD")
    dvc(repo, "push")

    machines = {"machine1": "[0,1,2]", "machine2": "[2,3,4]"}  # seed 2 runs on both
    for name, seeds in machines.items():
        clone = tmp_path / name
        sh(tmp_path, "git", "clone", "-q", str(remote), str(clone))
        dvc(clone, "exp", "run", "-n", name, "-S", f"torch_seed={seeds}")
        dvc(clone, "exp", "push", "origin", name)

    third = tmp_path / "machine3"
    sh(tmp_path, "git", "clone", "-q", str(remote), str(third))
    for name in machines:
        dvc(third, "exp", "pull", "origin", name)
    done = collect(third)
    assert "torch_seed 2 ran in more than one experiment" in done.stdout
    assert "deterministic: every trial agrees bitwise within each seed and across experiments" in (
        done.stdout
    )
    collected = read_dataset(third / "data/collected.nc")
    assert collected["torch_seed"].values.tolist() == [0, 1, 2, 3, 4]
    assert collected["out"].shape == (5, len(TRIALS), 1)
    assert sorted(collected["experiments"].sel(torch_seed=2).item().split(",")) == sorted(machines)
    report = json.loads((third / "data/collected.json").read_text())
    assert report["cross_checked_seeds"] == [2]
    assert report["deterministic"] is True
    assert {name: info["torch_seed"] for name, info in report["experiments"].items()} == {
        "machine1": [0, 1, 2],
        "machine2": [2, 3, 4],
    }
    assert not (third / "data/result.nc").exists()  # read through DVC, never checked out
    named = collect(third, "machine1", "machine2", "--out", "data/named.nc")
    assert "collected 2 experiments into data/named.nc" in named.stdout
    assert read_dataset(third / "data/named.nc").identical(collected)


def test_mixed_configs_are_refused_then_grouped(repo):
    dvc(repo, "exp", "run", "-n", "narrow", "-S", "torch_seed=0")
    dvc(repo, "exp", "run", "-n", "wide", "-S", "torch_seed=1", "-S", "module.out_features=2")
    refused = collect(repo, check=False)
    [line] = refused.stderr.strip().splitlines()[-1:]
    assert line.startswith("detflow: error: experiments ")
    assert "differ in module.out_features=" in line
    assert "pass --group-by-config" in line
    assert not (repo / "data/collected.nc").exists()

    grouped = collect(repo, "--group-by-config")
    shapes = sorted(
        read_dataset(path)["out"].shape for path in (repo / "data").glob("collected-*.nc")
    )
    assert shapes == [(1, len(TRIALS), 1), (1, len(TRIALS), 2)]
    assert "(module.out_features=1)" in grouped.stdout
    assert "(module.out_features=2)" in grouped.stdout


def test_a_seed_that_differs_between_machines_is_reported_and_fails_strict(repo):
    """Two "machines" whose numerics differ (an env var shifts the task's output): each
    experiment is deterministic on its own; collect finds the shared seed that is not."""
    # Project code, as the trial stage requires, reading a variable it declares.
    shutil.copy(TESTS_DIR / "tasks_for_tests.py", repo / "tasks" / "for_tests.py")
    task = "task=tasks.for_tests.machine_dependent"
    for machine, seeds in (("1", "[0,1]"), ("2", "[1,2]")):
        env = {**environment(), "DETFLOW_TEST_MACHINE": machine}
        run = ["exp", "run", "-n", f"machine{machine}", "-S", f"torch_seed={seeds}", "-S", task]
        run += ["-S", "env_vars=[DETFLOW_TEST_MACHINE]"]
        done = subprocess.run(
            [sys.executable, "-m", "dvc", *run],
            cwd=repo,
            env=env,
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr
        assert "deterministic: all 3 trials agree bitwise" in done.stdout

    done = collect(repo, "--strict", check=False)
    assert "NOT deterministic: copies disagree for torch_seed 1" in done.stdout
    assert "torch_seed 1: 'out' first differs in trial machine2/a at index [0]" in done.stdout
    assert (
        done.stderr.strip()
        .splitlines()[-1]
        .startswith(
            "detflow: error: strict: copies of a seed disagree (details in data/collected.json)"
        )
    )
    report = json.loads((repo / "data/collected.json").read_text())
    assert report["disagreeing_seeds"] == "1"
    assert report["disagreements"][0]["max_abs_diff"] > 0
    assert read_dataset(repo / "data/collected.nc")["torch_seed"].values.tolist() == [0, 1, 2]
