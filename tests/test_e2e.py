"""The README's dvc commands, exactly as written, in a temporary git copy of the project."""

from __future__ import annotations

import csv
import io
import json

import pytest

from detflow.artifact import read_dataset
from dvc_project import (
    TRIALS,
    dvc,
    how_to_reference,
    lock_md5s,
    metrics,
    start_queue,
    wait_for_queue,
)

pytestmark = pytest.mark.e2e


def test_repro_builds_everything_with_one_trial_md5(repo):
    md5s = lock_md5s(repo)
    assert len({md5s[f"data/trials/{t}.nc"] for t in TRIALS}) == 1
    result = read_dataset(repo / "data/result.nc")
    assert result["out"].dims == ("torch_seed", "trial_id", "out_dim0")
    for seed in (0, 1):
        for trial in TRIALS:
            got = result["out"].sel(torch_seed=seed, trial_id=trial).values
            assert got.tobytes() == how_to_reference(seed).tobytes()
    assert metrics(repo)["deterministic"] is True


def test_second_repro_runs_nothing_and_force_keeps_the_md5(repo):
    before = lock_md5s(repo)["data/result.nc"]
    again = dvc(repo, "repro")
    assert "Running stage" not in again
    assert "Data and pipelines are up to date." in again
    forced = dvc(repo, "repro", "-f")
    assert "Running stage 'aggregate'" in forced
    assert lock_md5s(repo)["data/result.nc"] == before


def test_exp_run_seed_one_then_metrics_diff(repo):
    dvc(repo, "exp", "run", "-n", "seed0", "-S", "torch_seed=0")
    dvc(repo, "exp", "run", "-n", "seed1", "-S", "torch_seed=1")
    assert metrics(repo)["seeds"]["1"]["out"] == pytest.approx(float(how_to_reference(1)[0]))
    diff = json.loads(dvc(repo, "metrics", "diff", "--all", "--json", "seed0", "seed1"))
    changes = diff["metrics.json"]
    assert changes["mean.out"]["old"] != changes["mean.out"]["new"]
    assert (changes["deterministic"]["old"], changes["deterministic"]["new"]) == (True, True)
    # The plain command compares the workspace (seed 1) with the committed baseline.
    plain = dvc(repo, "metrics", "diff")
    assert "mean.out" in plain


def test_exp_run_three_seeds_gives_a_3x3x1_result(repo):
    dvc(repo, "exp", "run", "-S", "torch_seed=[0,1,2]")
    result = read_dataset(repo / "data/result.nc")
    assert result["out"].shape == (3, 3, 1)
    assert (
        result["out"].sel(torch_seed=2, trial_id="c").values.tobytes()
        == how_to_reference(2).tobytes()
    )
    assert metrics(repo)["deterministic"] is True


def test_queued_sweep_lists_three_successful_experiments(repo):
    dvc(repo, "exp", "run", "--queue", "-S", "torch_seed=0,1,2")
    start_queue(repo)
    status = wait_for_queue(repo, expected=3)
    rows = list(csv.DictReader(io.StringIO(dvc(repo, "exp", "show", "--csv"))))
    experiments = [row for row in rows if row["typ"] != "baseline"]
    assert [row["State"] for row in experiments] == ["Success"] * 3, status
    assert sorted(row["n_torch_seeds"] for row in experiments) == ["1", "1", "1"]
    assert all(row["deterministic"] == "True" for row in experiments)


def test_exp_run_seed_range_gives_a_5x3x1_result(repo):
    dvc(repo, "exp", "run", "-S", "torch_seed=0..4")
    result = read_dataset(repo / "data/result.nc")
    assert result["out"].shape == (5, 3, 1)
    assert result["torch_seed"].values.tolist() == [0, 1, 2, 3, 4]
    assert metrics(repo)["deterministic"] is True


def test_no_pre_task_is_not_deterministic(repo):
    dvc(repo, "exp", "run", "-S", "pre_task=null")
    found = metrics(repo)
    assert found["deterministic"] is False
    assert found["disagreeing_seeds"] == "0,1"
    assert found["seeds"]["0"]["deterministic"] is False
    md5s = lock_md5s(repo)
    assert len({md5s[f"data/trials/{t}.nc"] for t in TRIALS}) == 3


def test_training_task_is_deterministic_with_workers(repo):
    dvc(
        repo,
        "exp",
        "run",
        "-S",
        "task=detflow.tasks.train",
        "-S",
        "train.num_workers=2",
        "-S",
        "pre_task=detflow.seeding.seed_everything",
    )
    found = metrics(repo)
    assert found["deterministic"] is True
    assert found["provenance"]["deterministic_algorithms"] == "True"
    result = read_dataset(repo / "data/result.nc")
    assert result["loss"].dims == ("torch_seed", "trial_id", "epoch")
    assert (repo / "data/plots/loss.csv").exists()


def test_plots_show_and_diff_render_html(repo):
    dvc(repo, "exp", "run", "-n", "seeded", "-S", "torch_seed=0")
    dvc(repo, "exp", "run", "-n", "unseeded", "-S", "torch_seed=0", "-S", "pre_task=null")
    dvc(repo, "plots", "show", "-o", "shown")
    assert "trial_id" in (repo / "shown/index.html").read_text()
    dvc(repo, "plots", "diff", "seeded", "unseeded", "-o", "diffed")
    page = (repo / "diffed/index.html").read_text()
    assert '"rev": "seeded"' in page and '"rev": "unseeded"' in page


def test_strict_gate_fails_the_run_with_one_line(repo):
    output = dvc(repo, "exp", "run", "-S", "strict=true", "-S", "pre_task=null", check=False)
    assert "detflow: error: strict: trials disagree for torch_seed 0,1" in output
    assert "Traceback" not in output
