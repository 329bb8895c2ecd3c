"""Shared fixtures: params built here (never read from the shipped params.yaml, which users
edit), trial workspaces, the aggregate stage run in-process, and torch settings restored."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import yaml

from detflow import aggregate
from detflow.artifact import read_dataset
from detflow.params import parse_params
from detflow.trial import write_trial
from dvc_project import baseline, repo  # noqa: F401  (fixtures for the e2e tests)
from how_to import how_to_params
from slurm_cluster import slurm  # noqa: F401  (fixture for the submitit_slurm test)

# children_find_test_tasks and params_for, for the pinpoint tests.
pytest_plugins = ["pinpoint_fixtures"]


@pytest.fixture
def project_params() -> dict:
    """The how-to's params, as the project ships them today but built here, so that a user
    who edits params.yaml as the README says breaks no unit test."""
    return how_to_params()


@pytest.fixture
def write_params(tmp_path):
    """Write a params dict to tmp_path/params.yaml and return its path."""

    def write(values: dict) -> Path:
        path = tmp_path / "params.yaml"
        path.write_text(yaml.safe_dump(values))
        return path

    return write


@pytest.fixture
def workspace(tmp_path, project_params, write_params):
    """params.yaml plus one trial file per trial_id (run in-process); returns the params path."""

    def build(values: dict | None = None) -> Path:
        values = values or project_params
        params_path = write_params(values)
        params = parse_params(values)
        for trial_id in params.trial_ids:
            write_trial(params, tmp_path / "trials" / f"{trial_id}.nc")
        return params_path

    return build


@pytest.fixture
def run_aggregate(tmp_path):
    """The aggregate stage on a workspace; every output lands in tmp_path. Returns the
    result and the metrics it wrote."""

    def run(params_path: Path):
        outputs = {
            "--trials": tmp_path / "trials",
            "--out": tmp_path / "result.nc",
            "--metrics": tmp_path / "metrics.json",
            "--plots": tmp_path / "plots",
        }
        argv = ["--params", str(params_path)]
        for flag, path in outputs.items():
            argv += [flag, str(path)]
        aggregate.main(argv)
        # The report: metrics.json's summary with the evidence.json written beside it.
        evidence = json.loads((tmp_path / "evidence.json").read_text())
        return read_dataset(outputs["--out"]), {
            **evidence,
            **json.loads(outputs["--metrics"].read_text()),
        }

    return run


@pytest.fixture(autouse=True)
def in_a_scratch_folder(tmp_path, monkeypatch):
    """Each test runs in its own folder: a stage called in-process finds no dvc.yaml there
    (the checkout's own would make it check the tests' tasks against the project's deps), and
    writes nothing into the checkout."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(autouse=True)
def torch_settings_restored():
    """Pre-tasks such as seed_everything change process-wide torch settings, which trial files
    record as provenance; restore them so that no test sees another test's settings."""
    saved = (
        torch.are_deterministic_algorithms_enabled(),
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.deterministic,
        os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    )
    yield
    torch.use_deterministic_algorithms(saved[0])
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[1:3]
    if saved[3] is None:
        os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
