"""Shared fixtures: a params dict like the project's, and trial files written to tmp_path."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import yaml

from dvc_project import baseline, repo  # noqa: F401  (fixtures for the e2e tests)
from slurm_cluster import slurm  # noqa: F401  (fixture for the submitit_slurm test)

PROJECT_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def project_params() -> dict:
    """A fresh copy of the project's params.yaml as a dict."""
    return copy.deepcopy(yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text()))


@pytest.fixture
def write_params(tmp_path):
    """Write a params dict to tmp_path/params.yaml and return its path."""

    def write(values: dict) -> Path:
        path = tmp_path / "params.yaml"
        path.write_text(yaml.safe_dump(values))
        return path

    return write


@pytest.fixture(autouse=True)
def torch_settings_restored():
    """Pre-tasks such as seed_everything change torch's global settings, which trial files
    record as provenance; restore them so that no test sees another test's settings."""
    saved = (
        torch.are_deterministic_algorithms_enabled(),
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.deterministic,
    )
    yield
    torch.use_deterministic_algorithms(saved[0])
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[1:]
