"""Reports that scale and say what they saw: strict JSON, identical seeds, a summary table
for big models, the plots a param selects, and metrics.json's summary beside evidence.json."""

from __future__ import annotations

import json

import pytest

from detflow import show
from detflow.cli import DetflowError
from detflow.plots import PLOT_MAX_VARIABLES


def strict(text: str):
    def refuse(constant):
        raise AssertionError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_a_nan_disagreement_is_strict_json(tmp_path, project_params, workspace, run_aggregate):
    project_params.update(pre_task=None, task="tasks_for_tests.nan_in_every_other_trial")
    project_params["trial_id"] = ["a", "b"]
    _, report = run_aggregate(workspace(project_params))
    assert report["deterministic"] is False
    metrics = strict((tmp_path / "metrics.json").read_text())
    evidence = strict((tmp_path / "evidence.json").read_text())
    assert metrics["max_abs_diff"] in ("nan", "inf")
    assert evidence["seeds"]["0"]["max_abs_diff"] in ("nan", "inf")


def test_seeds_that_give_identical_results_are_named(project_params, workspace, run_aggregate):
    project_params["task"] = "tasks_for_tests.ignores_its_seed"
    result, report = run_aggregate(workspace(project_params))
    assert report["identical_seeds"] == "0,1"
    assert (
        "seeds 0..1 gave identical results: does the seed reach your pre-task"
        in (result.attrs["verdict"])
    )
    project_params["task"] = "detflow.tasks.forward"
    _, report = run_aggregate(workspace(project_params))
    assert report["identical_seeds"] == ""


def test_metrics_json_is_the_summary_and_evidence_json_the_details(
    tmp_path, project_params, workspace, run_aggregate
):
    run_aggregate(workspace(project_params))
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    evidence = json.loads((tmp_path / "evidence.json").read_text())
    assert {"deterministic", "digest", "mean", "identical_seeds"} <= set(metrics)
    assert not {"seeds", "provenance", "disagreements"} & set(metrics)
    assert {"seeds", "provenance", "disagreements"} <= set(evidence)
    assert evidence["digest"] == metrics["digest"]


def test_big_results_get_a_summary_table_and_a_bounded_plot_set(
    tmp_path, project_params, workspace, run_aggregate, capsys
):
    project_params["task"] = "tasks_for_tests.many_results"
    run_aggregate(workspace(project_params))
    assert len(list((tmp_path / "plots").glob("*.csv"))) == PLOT_MAX_VARIABLES
    assert "plots: 10 of 60 variables" in capsys.readouterr().out
    argv = ["--result", str(tmp_path / "result.nc"), "--metrics", str(tmp_path / "metrics.json")]
    show.main(argv)
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) <= 60
    assert printed[0].startswith("60 variables, and 20 more") and "--all" in printed[0]
    show.main([*argv, "--all"])
    assert len(capsys.readouterr().out.splitlines()) > 60 * 10


def test_plot_variables_selects_and_names_an_unknown_one(
    tmp_path, project_params, workspace, run_aggregate
):
    project_params.update(task="tasks_for_tests.many_results", plot_variables=["layer07"])
    run_aggregate(workspace(project_params))
    assert [path.name for path in (tmp_path / "plots").glob("*.csv")] == ["layer07.csv"]
    project_params["plot_variables"] = ["nope"]
    kept = (tmp_path / "result.nc").read_bytes()
    with pytest.raises(DetflowError, match="plot_variables names 'nope', which the result"):
        run_aggregate(workspace(project_params))
    assert (tmp_path / "result.nc").read_bytes() == kept  # refused before any write
