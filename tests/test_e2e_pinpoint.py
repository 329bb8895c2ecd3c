"""`pinpoint: true` through dvc: after a disagreement the pipeline names the op by itself,
and `dvc metrics show` and `dvc exp show` see it."""

from __future__ import annotations

import json

import pytest

from dvc_project import dvc

pytestmark = pytest.mark.e2e


def test_pinpoint_true_names_the_rng_op_of_linear_in_the_metrics(repo):
    output = dvc(repo, "exp", "run", "-S", "pre_task=null", "-S", "pinpoint=true")
    # The aggregate names the command; the pinpoint stage then runs it.
    assert "python -m detflow.pinpoint" in output
    assert "first divergence: op #2 aten.uniform_.default (forward) in module Linear" in output
    report = json.loads((repo / "pinpoint.json").read_text())
    assert report["ran"] is True and report["diverged"] is True
    assert report["op"] == "aten.uniform_.default" and report["inputs_equal"] is True
    shown = json.loads(dvc(repo, "metrics", "show", "--json"))
    metrics = next(iter(shown.values()))["data"]["pinpoint.json"]["data"]
    assert metrics["op"] == "aten.uniform_.default"
    table = dvc(repo, "exp", "show", "--csv", "--only-changed")
    assert "aten.uniform_.default" in table


def test_pinpoint_false_records_that_it_did_not_run(repo):
    dvc(repo, "exp", "run", "-S", "pre_task=null")
    report = json.loads((repo / "pinpoint.json").read_text())
    assert report["ran"] is False
    assert "pinpoint: true" in report["note"]
