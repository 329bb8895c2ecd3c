"""collect across commits and code: a named experiment of any commit is found, and
experiments of different code are refused by naming the files that differ."""

from __future__ import annotations

import hashlib
import json

import pytest
import xarray as xr

import detflow.experiments
from detflow.artifact import write_dataset
from detflow.cli import DetflowError
from detflow.experiments import check_one_config, local_experiment, resolve
from detflow.params import parse_params


def made_with(name: str, params: dict, folder, **attrs) -> detflow.experiments.Experiment:
    path = folder / f"{name}.nc"
    dataset = xr.Dataset(
        {"out": (("torch_seed", "trial_id"), [[1.0, 1.0]])},
        coords={"torch_seed": [0], "trial_id": ["a", "b"]},
        attrs=attrs,
    )
    write_dataset(dataset, path)
    rev = hashlib.sha1(name.encode()).hexdigest()
    return local_experiment(name, rev, parse_params(params), path, name)


def code(**files: str) -> dict[str, str]:
    """code_digest and code_files attrs as the trials record them, from path -> content."""
    hashed = {path.replace("__", "/"): f"sha256:{text}" for path, text in files.items()}
    return {"code_digest": f"sha256:{sorted(hashed.items())}", "code_files": json.dumps(hashed)}


def test_experiments_of_different_code_are_refused_naming_the_files(project_params, tmp_path):
    v1 = made_with("v1", project_params, tmp_path, **code(tasks__util="2", detflow__run="r"))
    v2 = made_with(
        "v2", project_params, tmp_path, **code(tasks__util="3", detflow__run="r", tasks__new="n")
    )
    with pytest.raises(DetflowError) as raised:
        check_one_config([v1, v2])
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(
        f"experiments {v2.label} and {v1.label} differ in code: tasks/new (only in v2), "
        f"tasks/util differ: collect experiments of one config and code (name them)"
    )
    assert "detflow/run" not in message  # the same in both


def test_without_code_files_the_refusal_says_code_digest_differs(project_params, tmp_path):
    old = made_with("old", project_params, tmp_path, code_digest="sha256:1")
    new = made_with("new", project_params, tmp_path, **code(tasks__util="3"))
    with pytest.raises(DetflowError, match=r"differ in code: code_digest differs: collect"):
        check_one_config([old, new])


def test_the_same_code_on_two_commits_is_one_config(project_params, tmp_path):
    same = code(tasks__util="2")
    check_one_config(
        [made_with(n, project_params, tmp_path, **same) for n in ("v1", "v2")]
    )  # no error


@pytest.fixture
def revs(monkeypatch):
    """resolve() against given git revs and experiments of other commits."""

    def setup(git: dict[str, str], others: dict[str, list[str]]) -> None:
        monkeypatch.setattr(detflow.experiments, "full_rev", lambda root, name: git.get(name))
        monkeypatch.setattr(
            detflow.experiments, "named_experiments", lambda root, name: others.get(name, [])
        )

    return setup


def test_a_named_experiment_of_another_commit_is_found(revs):
    revs(git={"main": "c" * 40}, others={"v1": ["a" * 40], "v2": ["b" * 40]})
    head = {"v2": "d" * 40}
    assert resolve(".", "v1", head) == "a" * 40
    assert resolve(".", "v2", head) == "d" * 40  # the current commit's experiment first
    assert resolve(".", "main", head) == "c" * 40


def test_a_name_of_several_commits_or_of_none_is_one_line(revs):
    revs(git={}, others={"v1": ["a" * 40, "b" * 40]})
    with pytest.raises(
        DetflowError,
        match=r"^'v1' names experiments aaaaaaa, bbbbbbb of different commits: pass the one "
        r"to collect by its rev instead \(e.g. aaaaaaa\)$",
    ):
        resolve(".", "v1", {})
    with pytest.raises(
        DetflowError,
        match=r"^'v9' is neither an experiment of any commit nor a git rev: see "
        r"`dvc exp list --all-commits`",
    ):
        resolve(".", "v9", {})
