"""Shared fixtures: a params dict like the project's, and trial files written to tmp_path."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from dvc_project import baseline, repo  # noqa: F401  (fixtures for the e2e tests)

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
