"""The trial stage refuses inputs that its dvc.yaml entry does not track, naming what to add."""

from __future__ import annotations

import sys

import pytest
import yaml

from detflow.artifact import read_dataset
from detflow.cli import DetflowError
from detflow.trial import main

LOCAL_TASK = """
def scaled(module, data, scale):
    return {"out": module(data).detach() * scale}
"""


def project(tmp_path, project_params, deps, params, monkeypatch):
    """A project folder with its own dvc.yaml entry for the task stage and a local task."""
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "__init__.py").write_text("")
    (tmp_path / "mine" / "tasks.py").write_text(LOCAL_TASK)
    monkeypatch.syspath_prepend(str(tmp_path))  # as `python -m` puts the project first
    sys.modules.pop("mine.tasks", None)
    sys.modules.pop("mine", None)
    stage = {"cmd": "python -m detflow.trial --out a.nc", "deps": deps, "params": params}
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"task": stage}}))
    project_params.update(task="mine.tasks.scaled", scale=2)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(project_params))


def test_local_code_outside_the_deps_is_refused(tmp_path, project_params, monkeypatch):
    project(tmp_path, project_params, ["src"], [{"params.yaml": None}], monkeypatch)
    with pytest.raises(DetflowError, match=r"task mine.tasks.scaled comes from mine/tasks.py, "):
        main(["--out", "a.nc"])
    assert not (tmp_path / "a.nc").exists()


def test_a_bound_param_the_stage_does_not_list_is_refused(tmp_path, project_params, monkeypatch):
    listed = ["torch_seed", "pre_task", "task", "device", "portable", "module", "data"]
    project(tmp_path, project_params, ["mine"], listed, monkeypatch)
    with pytest.raises(DetflowError, match=r"binds the param 'scale', .* add `- scale` to "):
        main(["--out", "a.nc"])


def test_tracked_inputs_run_and_the_code_is_recorded(tmp_path, project_params, monkeypatch):
    project(tmp_path, project_params, ["mine"], [{"params.yaml": None}], monkeypatch)
    main(["--out", "a.nc"])
    first = read_dataset(tmp_path / "a.nc").attrs
    assert "scale" in first["bound_params"].split(",")
    (tmp_path / "mine" / "tasks.py").write_text(LOCAL_TASK.replace("* scale", "* scale * 1"))
    main(["--out", "a.nc"])
    assert read_dataset(tmp_path / "a.nc").attrs["code_digest"] != first["code_digest"]


def test_the_engine_modules_are_the_task_stage_deps():
    """code_digest hashes ENGINE_MODULES; the shipped task stage must depend on each."""
    from pathlib import Path

    import detflow
    from detflow.tracking import ENGINE_MODULES, stage_entry

    package = Path(detflow.__file__).parent
    entry = stage_entry(Path(__file__).resolve().parents[1] / "dvc.yaml")
    deps = set(entry["deps"])
    for name in ENGINE_MODULES:
        assert (package / f"{name}.py").is_file()
        assert f"src/detflow/{name}.py" in deps, name


def test_a_trial_stage_imports_only_engine_modules(tmp_path, project_params):
    """The modules outside ENGINE_MODULES (aggregate, collect, pinpoint, ...) never run in a
    trial, so editing them need not rerun the trials: checked in a fresh stage process."""
    import subprocess

    from detflow.tracking import ENGINE_MODULES

    (tmp_path / "params.yaml").write_text(yaml.safe_dump(project_params))
    script = (
        "import sys, runpy\n"
        "sys.argv = ['trial', '--out', 'a.nc']\n"
        "try:\n    runpy.run_module('detflow.trial', run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
        "print(','.join(sorted(m[8:] for m in sys.modules if m.startswith('detflow.'))))\n"
    )
    ran = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    imported = set(ran.stdout.strip().splitlines()[-1].split(","))
    assert (tmp_path / "a.nc").is_file()
    assert "run" in imported and "stage_guard" in imported
    assert imported <= set(ENGINE_MODULES), imported - set(ENGINE_MODULES)
