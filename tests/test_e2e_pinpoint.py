"""`pinpoint: true` through dvc: after a disagreement the pipeline names the op by itself,
and `dvc metrics show` and `dvc exp show` see it; and `--against HEAD` after `dvc repro` on
another CPU path names the op and the setting."""

from __future__ import annotations

import json
import sys

import pytest
import yaml

from dvc_project import dvc, sh

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


COPYING_TASK = '''
import copy

import torch

from detflow.tasks import TrainOptions, train


def train_a_copy(module, torch_seed, train_options: TrainOptions):
    """Trains a deep copy of the module (a "best model" copy), through DataLoader workers."""
    result = train(copy.deepcopy(module), torch_seed, train_options)
    result["offset"] = copy.deepcopy(torch.tensor([1.0])) + 0.5
    return result
'''


def test_deep_copies_and_dataloader_workers_are_no_divergence(repo):
    """Deterministic real code: a deep-copied module and tensor, two DataLoader workers. The
    trials agree, and pinpoint's fresh runs find no divergence either."""
    (repo / "tasks" / "copying.py").write_text(COPYING_TASK)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params.update(
        task="tasks.copying.train_a_copy",
        pre_task="detflow.seeding.seed_everything",
        torch_seed=[0],
        pinpoint=True,
        train_options={**params["train"], "num_workers": 2, "epochs": 2},
    )
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    output = dvc(repo, "repro")
    assert json.loads((repo / "metrics.json").read_text())["deterministic"] is True
    assert "no divergence: every op gave equal outputs in every run" in output
    report = json.loads((repo / "pinpoint.json").read_text())
    assert report["ran"] is True and report["diverged"] is False
    assert report["ops_traced"] > 500


def test_against_head_names_the_op_and_the_cpu_capability_after_another_path(repo):
    """A commit with a reference trace made natively; `dvc repro` on torch's default path does
    not reproduce it, and `--against HEAD` names Linear's init and the capability."""
    python = sys.executable
    sh(repo, python, "-m", "detflow.pinpoint", "--record")
    reference = json.loads((repo / "pinpoint-reference/trace.json").read_text())
    native = reference["environment"]["cpu_capability"]
    if native == "DEFAULT":
        pytest.skip("this CPU's native path is torch's default one: nothing to compare")
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "reference trace")
    other = {"ATEN_CPU_CAPABILITY": "default"}
    assert "did NOT reproduce" in dvc(repo, "repro", env=other)
    output = sh(repo, python, "-m", "detflow.pinpoint", "--against", "HEAD", check=False, env=other)
    assert "op #2 aten.uniform_.default (forward) in module Linear" in output
    assert f"with ATEN_CPU_CAPABILITY={native.lower()} alone, op #2 gives the commit's" in output
    cause = json.loads((repo / "pinpoint.json").read_text())["environment_cause"]
    assert cause == {
        "field": "cpu_capability",
        "here": "DEFAULT",
        "commit": native,
        "reproduces_with": {"ATEN_CPU_CAPABILITY": native.lower()},
    }
