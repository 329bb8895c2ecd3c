"""The README's commands table, top to bottom, in one fresh copy of the project, as a new user
would type it; each row's output is checked against an independent computation."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from detflow.artifact import read_dataset
from detflow.determinism import content_digest
from dvc_project import TRIALS, lock_md5s, metrics, start_queue, wait_for_queue
from how_to import how_to_reference
from project_copy import environment, make_copy

pytestmark = pytest.mark.e2e

README = Path(__file__).resolve().parents[1] / "README.md"
RESET = "git checkout -- params.yaml"

# The table's commands in the order written. `test_the_table_lists_these_commands_in_order`
# keeps this list and the README in step.
TABLE = [
    "dvc repro",
    "dvc repro",
    "python -m detflow.show",
    "dvc metrics show",
    "dvc exp run -S torch_seed=1",
    "dvc metrics diff",
    RESET,
    "dvc exp run -n seed0 -S torch_seed=0",
    "dvc exp run -n seed1 -S torch_seed=1",
    "dvc metrics diff --all seed0 seed1",
    RESET,
    "dvc exp run -S 'torch_seed=[0,1,2]'",
    RESET,
    "dvc exp run -S torch_seed=0..4",
    RESET,
    "dvc exp run --queue -S 'torch_seed=0,1,2'",
    "dvc queue start",
    "dvc queue status",
    "dvc exp show",
    "python -m detflow.collect",
    "dvc exp run -S pre_task=null",
    "python -m detflow.pinpoint",
    RESET,
    "dvc exp run -S pre_task=null -S pinpoint=true",
    RESET,
    "dvc exp run -S task=detflow.tasks.train -S pre_task=detflow.seeding.seed_everything "
    "-S train.num_workers=2",
    RESET,
    "dvc exp run -S portable=true",
    RESET,
    "dvc plots show",
    "dvc plots diff seed0 seed1",
    "dvc exp run -S strict=true -S pre_task=null",
    RESET,
]


def table_commands(text: str) -> list[str]:
    """Every `command` in the first column of the README's commands table, in order."""
    table = text.split("## Commands", 1)[1].split("\n## ", 1)[0]
    commands = []
    for line in table.splitlines():
        if line.startswith("| `"):
            first_cell = line.split(" | ")[0]
            commands.extend(re.findall(r"`([^`]+)`", first_cell))
    return commands


def test_the_table_lists_these_commands_in_order():
    assert table_commands(README.read_text()) == TABLE


def run(repo: Path, command: str, check: bool = True) -> str:
    """One README command, as typed: `dvc` and `python` are this environment's."""
    argv = shlex.split(command)
    if argv[0] in ("dvc", "python"):
        argv = [sys.executable, *(["-m", "dvc"] if argv[0] == "dvc" else []), *argv[1:]]
    done = subprocess.run(argv, cwd=repo, env=environment(), capture_output=True, text=True)
    output = done.stdout + done.stderr
    assert (done.returncode == 0) == check, f"`{command}` exited {done.returncode}:\n{output}"
    return output


def stdout(repo: Path, command: str) -> str:
    """A command's standard output alone (for --json and --csv)."""
    argv = [sys.executable, "-m", "dvc", *shlex.split(command)[1:]]
    done = subprocess.run(argv, cwd=repo, env=environment(), capture_output=True, text=True)
    assert done.returncode == 0, f"`{command}` failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def committed(repo: Path, path: str) -> str:
    return subprocess.run(
        ["git", "show", f"HEAD:{path}"], cwd=repo, capture_output=True, text=True, check=True
    ).stdout


def comments(repo: Path) -> list[str]:
    lines = (repo / "params.yaml").read_text().splitlines()
    return [line for line in lines if line.startswith("#")]


def reset(repo: Path) -> None:
    run(repo, RESET)
    assert (repo / "params.yaml").read_text() == committed(repo, "params.yaml")


def metric_row(table: str, name: str) -> list[str]:
    """The cells of `name`'s row in a `dvc metrics diff` table."""
    row = next(line for line in table.splitlines() if f" {name} " in line)
    return row.split()


@pytest.fixture
def fresh_clone(tmp_path):
    previous = os.umask(0o022)  # the common umask; outputs must be 0644 under it
    yield make_copy(tmp_path / "project")
    os.umask(previous)


def test_the_commands_table_in_order_in_one_clone(fresh_clone):
    repo = fresh_clone
    committed_metrics = json.loads(committed(repo, "metrics.json"))
    original_comments = comments(repo)

    # dvc repro: every stage runs, the trials agree, and the cross-machine line is right.
    log = run(repo, "dvc repro")
    assert "Running stage 'task@a'" in log
    # Once task@a has reproduced the bytes the committed dvc.lock names, DVC restores the
    # other trials from them instead of running them (the README says so); else it runs them.
    for trial in TRIALS[1:]:
        ran = f"Running stage 'task@{trial}'" in log
        assert ran or f"Stage 'task@{trial}' is cached - skipping run" in log
    md5s = lock_md5s(repo)
    assert len({md5s[f"data/trials/{t}.nc"] for t in TRIALS}) == 1
    result = read_dataset(repo / "data/result.nc")
    for seed in (0, 1):
        for trial in TRIALS:
            got = result["out"].sel(torch_seed=seed, trial_id=trial).values
            assert got.tobytes() == how_to_reference(seed).tobytes()
    found = metrics(repo)
    assert found["deterministic"] is True and found["digest"] == content_digest(result)
    if found["digest"] == committed_metrics["digest"]:
        assert "cross-machine: this machine reproduced the committed result bit for bit" in log
    else:
        assert "cross-machine: this machine did NOT reproduce the committed result" in log
        assert "largest difference" in log
    for output in ("data/result.nc", "metrics.json", "data/plots/out.csv", "data/trials/a.nc"):
        assert stat.S_IMODE((repo / output).stat().st_mode) == 0o644, output

    # A second run runs no trial and no aggregate: only the environment stage, whose file
    # keeps its bytes, and the report, which prints the verdict again.
    again = run(repo, "dvc repro")
    assert "Stage 'task@a' didn't change, skipping" in again
    assert "Running stage 'task@" not in again and "Running stage 'aggregate'" not in again
    assert "deterministic: all 3 trials agree bitwise" in again and "cross-machine: " in again

    shown = run(repo, "python -m detflow.show")
    assert "<xarray.DataArray 'out' (torch_seed: 2, trial_id: 3, out_dim0: 1)>" in shown
    assert "deterministic: True (disagreeing torch_seed: none)" in shown
    assert "cross-machine: " in shown

    listed = run(repo, "dvc metrics show")
    # The summary: verdict, digest, means; the per-seed values and provenance are in
    # evidence.json, where they do not drown DVC's tables.
    assert "deterministic" in listed and "digest" in listed and "mean.out" in listed
    assert "provenance" not in listed and "seeds.0" not in listed

    # One seed; then the plain `dvc metrics diff`: HEAD's value, the workspace's, the change.
    run(repo, "dvc exp run -S torch_seed=1")
    assert read_dataset(repo / "data/result.nc")["out"].shape == (1, 3, 1)
    assert comments(repo) == original_comments
    diff = run(repo, "dvc metrics diff")
    _, _, head, workspace, change = metric_row(diff, "mean.out")
    expected_head = committed_metrics["mean"]["out"]
    expected_workspace = float(how_to_reference(1)[0])
    assert float(head) == pytest.approx(expected_head, rel=1e-4)
    assert float(workspace) == pytest.approx(expected_workspace, rel=1e-4)
    assert float(change) == pytest.approx(expected_workspace - expected_head, abs=1e-4)
    reset(repo)

    run(repo, "dvc exp run -n seed0 -S torch_seed=0")
    run(repo, "dvc exp run -n seed1 -S torch_seed=1")
    side_by_side = json.loads(stdout(repo, "dvc metrics diff --all --json seed0 seed1"))
    side_by_side = side_by_side["metrics.json"]
    assert side_by_side["mean.out"]["old"] == pytest.approx(float(how_to_reference(0)[0]))
    assert side_by_side["mean.out"]["new"] == pytest.approx(float(how_to_reference(1)[0]))
    assert (side_by_side["deterministic"]["old"], side_by_side["deterministic"]["new"]) == (
        True,
        True,
    )
    assert "mean.out" in run(repo, "dvc metrics diff --all seed0 seed1")
    reset(repo)

    run(repo, "dvc exp run -S 'torch_seed=[0,1,2]'")
    result = read_dataset(repo / "data/result.nc")
    assert result["out"].shape == (3, 3, 1)
    assert result["out"].sel(torch_seed=2, trial_id="c").values.tobytes() == (
        how_to_reference(2).tobytes()
    )
    reset(repo)

    run(repo, "dvc exp run -S torch_seed=0..4")
    assert read_dataset(repo / "data/result.nc")["torch_seed"].values.tolist() == [0, 1, 2, 3, 4]
    reset(repo)

    run(repo, "dvc exp run --queue -S 'torch_seed=0,1,2'")
    start_queue(repo)  # `dvc queue start`, its workers detached from this test's pipes
    status = wait_for_queue(repo, expected=3)  # `dvc queue status` until all have ended
    assert status.count("Success") == 3, status
    rows = list(csv.DictReader(io.StringIO(stdout(repo, "dvc exp show --csv"))))
    queued = [row for row in rows if row["State"] == "Success"]  # only queued runs have a State
    assert len(queued) == 3 and all(row["n_torch_seeds"] == "1" for row in queued), rows
    assert "seed0" in run(repo, "dvc exp show")

    # Every experiment of the commit so far: seeds 0 to 4, repeats compared bitwise.
    collected_log = run(repo, "python -m detflow.collect")
    assert "deterministic: every trial agrees bitwise within each seed" in collected_log
    collected = read_dataset(repo / "data/collected.nc")
    assert collected["torch_seed"].values.tolist() == [0, 1, 2, 3, 4]
    assert collected["out"].sel(torch_seed=4, trial_id="a").values.tobytes() == (
        how_to_reference(4).tobytes()
    )

    run(repo, "dvc exp run -S pre_task=null")
    found = metrics(repo)
    assert (found["deterministic"], found["disagreeing_seeds"]) == (False, "0,1")
    assert len({lock_md5s(repo)[f"data/trials/{t}.nc"] for t in TRIALS}) == 3
    # It exits 1: a divergence was found (what a script gates on).
    found = run(repo, "python -m detflow.pinpoint", check=False)
    assert "metrics.json says torch_seed 0,1 disagree" in found
    assert "first divergence: op #2 aten.uniform_.default (forward) in module Linear" in found
    assert "Traceback" not in found
    reset(repo)

    shown = run(repo, "dvc exp run -S pre_task=null -S pinpoint=true")
    assert "python -m detflow.pinpoint" in shown  # the aggregate names the command
    report = json.loads((repo / "pinpoint.json").read_text())
    assert (report["ran"], report["diverged"], report["op"]) == (
        True,
        True,
        "aten.uniform_.default",
    )
    reset(repo)

    run(
        repo,
        "dvc exp run -S task=detflow.tasks.train -S pre_task=detflow.seeding.seed_everything "
        "-S train.num_workers=2",
    )
    found = metrics(repo)
    assert found["deterministic"] is True
    assert found["provenance"]["deterministic_algorithms"] == "True"
    result = read_dataset(repo / "data/result.nc")
    assert result["loss"].dims == ("torch_seed", "trial_id", "epoch")
    assert result["torch_seed"].values.tolist() == [0, 1]  # the committed seeds, not a row's
    reset(repo)

    run(repo, "dvc exp run -S portable=true")
    found = metrics(repo)
    assert found["deterministic"] is True
    assert found["provenance"]["cpu_capability"] == "DEFAULT"
    assert found["provenance"]["intra_op_threads"] == "1"
    assert found["provenance"]["mkl_cbwr"] == "COMPATIBLE"
    reset(repo)

    run(repo, "dvc plots show")
    page = (repo / "dvc_plots/index.html").read_text()
    assert '"trial_id": "a"' in page  # the data, not only the template
    status = subprocess.run(
        ["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True, check=True
    ).stdout
    assert "dvc_plots" not in status
    run(repo, "dvc plots diff seed0 seed1")
    page = (repo / "dvc_plots/index.html").read_text()
    assert '"rev": "seed0"' in page and '"rev": "seed1"' in page
    # The data of each revision, not only the template: seed 0's and seed 1's values.
    for rev, seed in (("seed0", 0), ("seed1", 1)):
        points = re.findall(rf'"value": "([^"]+)", "rev": "{rev}"', page)
        assert points and {np.float32(point) for point in points} == {how_to_reference(seed)[0]}

    failed = run(repo, "dvc exp run -S strict=true -S pre_task=null", check=False)
    assert "detflow: error: strict: trials disagree for torch_seed 0,1" in failed
    assert "Traceback" not in failed
    reset(repo)
