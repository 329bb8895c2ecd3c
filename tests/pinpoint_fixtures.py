"""Fixtures the pinpoint tests share (a plugin of tests/conftest.py): traced runs are fresh
processes that must import the tests' task modules, and most tests pinpoint one seed of a task.
A pinpoint test module asks for the first with `pytestmark = pinpoint_children`."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

TESTS = Path(__file__).parent


@pytest.fixture
def children_find_test_tasks(monkeypatch):
    """The traced runs are fresh processes: they import tasks_for_pinpoint through PYTHONPATH."""
    paths = [str(TESTS), *filter(None, [os.environ.get("PYTHONPATH")])]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(paths))


# Not autouse for every test: e2e stages must not import the tests' modules through it.
pinpoint_children = pytest.mark.usefixtures("children_find_test_tasks")


@pytest.fixture
def params_for(project_params, write_params):
    """params.yaml for one seed of a task, written to tmp_path."""

    def write(**changes) -> Path:
        return write_params({**project_params, "torch_seed": [0], **changes})

    return write
