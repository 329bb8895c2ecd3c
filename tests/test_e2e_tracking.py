"""README "Plug in your own task", through dvc: a task in tasks/ and the param it binds are
tracked with no edit to dvc.yaml; code elsewhere is refused by name; collect keeps apart the
results of different code."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from detflow.artifact import read_dataset
from dvc_project import dvc, sh
from how_to import how_to_reference
from project_copy import environment

pytestmark = pytest.mark.e2e

SCALED = """
def scaled(module, data, scale):
    return {"out": module(data).detach() * scale}
"""


def add_scaled_task(repo: Path, folder: str = "tasks") -> None:
    (repo / folder).mkdir(exist_ok=True)
    (repo / folder / "__init__.py").touch()
    (repo / folder / "scaled.py").write_text(SCALED)
    params = (repo / "params.yaml").read_text()
    params = params.replace("task: detflow.tasks.forward", f"task: {folder}.scaled.scaled")
    (repo / "params.yaml").write_text(params + "scale: 2.0\n")


def out(repo: Path, seed: int = 0) -> np.ndarray:
    return read_dataset(repo / "data/result.nc")["out"].sel(torch_seed=seed, trial_id="a").values


def test_a_task_in_tasks_and_its_param_are_tracked(repo):
    add_scaled_task(repo)
    dvc(repo, "repro")
    assert out(repo).tobytes() == (how_to_reference(0) * np.float32(2.0)).tobytes()
    # The param it binds: not listed in dvc.yaml by name, yet a change reruns the trials.
    params = (repo / "params.yaml").read_text().replace("scale: 2.0", "scale: 3.0")
    (repo / "params.yaml").write_text(params)
    assert "Running stage 'task@a'" in dvc(repo, "repro")
    assert out(repo).tobytes() == (how_to_reference(0) * np.float32(3.0)).tobytes()
    # Its code: an edit reruns them too.
    (repo / "tasks/scaled.py").write_text(SCALED.replace("* scale", "* scale * 2"))
    assert "Running stage 'task@a'" in dvc(repo, "repro")
    assert out(repo).tobytes() == (how_to_reference(0) * np.float32(3.0) * 2).tobytes()
    # Only what made the numbers is recorded beside them.
    attrs = read_dataset(repo / "data/result.nc").attrs
    assert attrs["scale"] == 3.0 and "train" not in attrs


def test_code_outside_the_stage_deps_is_refused_by_name(repo):
    add_scaled_task(repo, folder="elsewhere")
    failed = dvc(repo, "repro", check=False)
    assert (
        "detflow: error: task elsewhere.scaled.scaled comes from elsewhere/scaled.py, which the "
        "task stage in dvc.yaml does not depend on" in failed
    )
    assert "add `- elsewhere/scaled.py` (or its folder) to stages.task.deps" in failed
    assert "Traceback" not in failed


def test_collect_keeps_results_of_different_code_apart(repo):
    add_scaled_task(repo)
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "a scaled task")
    dvc(repo, "exp", "run", "-n", "before", "-S", "torch_seed=0")
    (repo / "tasks/scaled.py").write_text(SCALED.replace("* scale", "* scale + 0"))
    dvc(repo, "exp", "run", "-n", "after", "-S", "torch_seed=1")
    command = [sys.executable, "-m", "detflow.collect"]
    refused = subprocess.run(command, cwd=repo, env=environment(), capture_output=True, text=True)
    assert refused.returncode == 1
    assert "differ in code: tasks/scaled.py differs" in refused.stderr
    grouped = subprocess.run(
        [*command, "--group-by-config"], cwd=repo, env=environment(), capture_output=True, text=True
    )
    assert grouped.returncode == 0, grouped.stderr
    assert len(list(repo.glob("data/collected-*.nc"))) == 2


def test_no_label_reaches_the_shell(repo):
    params = (repo / "params.yaml").read_text()
    params = params.replace("trial_id:\n- a\n- b\n- c", "trial_id:\n- a\n- $(touch pwned)")
    (repo / "params.yaml").write_text(params)
    failed = dvc(repo, "repro", check=False)
    assert not (repo / "pwned").exists()
    assert "trial_id '$(touch pwned)' is not a valid label" in failed


def repro_with_test_task(repo: Path, task: str, check: bool = True) -> str:
    """The test task, copied into the project's tasks/ (the stage refuses code from outside)."""
    shutil.copy(Path(__file__).resolve().parent / "tasks_for_tests.py", repo / "tasks")
    params = (repo / "params.yaml").read_text()
    params = params.replace("task: detflow.tasks.forward", f"task: tasks.tasks_for_tests.{task}")
    (repo / "params.yaml").write_text(params)
    done = subprocess.run(
        [sys.executable, "-m", "dvc", "repro"],
        cwd=repo,
        env=environment(),
        capture_output=True,
        text=True,
    )
    assert (done.returncode == 0) == check, done.stdout + done.stderr
    return done.stdout + done.stderr


def test_a_task_that_changes_directory_still_writes_where_dvc_yaml_says(repo):
    repro_with_test_task(repo, "changes_directory")
    result = read_dataset(repo / "data/result.nc")
    assert result["out"].sel(torch_seed=1, trial_id="c").values.tobytes() == (
        how_to_reference(1).tobytes()
    )


def test_an_unstorable_return_is_one_line_through_dvc(repo):
    failed = repro_with_test_task(repo, "returns_bfloat16", check=False)
    assert "detflow: error: task tasks.tasks_for_tests.returns_bfloat16 returned 'out' as a " in (
        failed
    )
    assert "torch.bfloat16 tensor, which cannot be stored" in failed
    assert "Traceback" not in failed
