"""The `launcher` param: seeds dispatched as Hydra jobs give the in-process artifact's bytes."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from detflow.cli import DetflowError
from detflow.params import Launcher, parse_params
from detflow.trial import main

TESTS_DIR = Path(__file__).resolve().parent

JOBLIB = {"name": "joblib", "n_jobs": 2}
SUBMITIT_LOCAL = {"name": "submitit_local", "timeout_min": 5}


def plugin(module: str):
    """Skip where the optional launcher extra is not installed (it is in `make setup`)."""
    return pytest.importorskip(f"hydra_plugins.{module}")


@pytest.fixture(autouse=True)
def fresh_job_processes(monkeypatch):
    """Each test's jobs start in fresh processes, as each trial stage's do.

    joblib keeps its worker processes for reuse, and with them the torch settings an
    earlier test's pre-task left behind; a stage's workers die with the stage.
    """
    monkeypatch.setenv("PYTHONPATH", str(TESTS_DIR))  # jobs import tasks_for_tests by name
    yield
    # Only where a test started one: asking loky for its executor would start a new one.
    loky = sys.modules.get("joblib.externals.loky.reusable_executor")
    executor = getattr(loky, "_executor", None)
    if executor is not None:
        executor.shutdown(wait=True)


def write_trial(write_params, values: dict, out: Path) -> bytes:
    main(["--params", str(write_params(values)), "--out", str(out)])
    return out.read_bytes()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("joblib", Launcher("joblib", {})),
        (JOBLIB, Launcher("joblib", {"n_jobs": 2})),
    ],
)
def test_launcher_param_forms(project_params, value, expected):
    project_params["launcher"] = value
    assert parse_params(project_params).launcher == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (3, "launcher 3 is not a launcher: use loop, a Hydra launcher's name"),
        ({"n_jobs": 2}, "launcher.name None is not a Hydra launcher's name"),
        ("job lib", "launcher.name 'job lib' is not a Hydra launcher's name"),
    ],
)
def test_bad_launcher_params_are_refused(project_params, value, message):
    project_params["launcher"] = value
    with pytest.raises(DetflowError, match=message):
        parse_params(project_params)


@pytest.mark.parametrize(
    ("launcher", "module"),
    [
        ("basic", None),  # Hydra's own sequential launcher: no extra needed
        (JOBLIB, "hydra_joblib_launcher"),
        (SUBMITIT_LOCAL, "hydra_submitit_launcher"),
    ],
    ids=["basic", "joblib", "submitit_local"],
)
@pytest.mark.parametrize(
    "task",
    [
        {"pre_task": "detflow.seeding.seed_everything"},
        # float16, float64, int and bool results travel back from the jobs unchanged.
        {"pre_task": None, "task": "tasks_for_tests.mixed_dtypes"},
    ],
    ids=["linear", "mixed_dtypes"],
)
def test_launched_trial_is_byte_identical_to_in_process(
    project_params, write_params, tmp_path, launcher, module, task
):
    if module:
        plugin(module)
    project_params.update(task, torch_seed=[0, 1, 2])
    in_process = write_trial(write_params, project_params, tmp_path / "in_process" / "a.nc")
    project_params["launcher"] = launcher
    launched = write_trial(write_params, project_params, tmp_path / "launched" / "a.nc")
    assert launched == in_process
    # Hydra's sweep folder (and submitit's logs) are gone; only the artifact remains.
    assert [path.name for path in (tmp_path / "launched").iterdir()] == ["a.nc"]


def test_a_failing_job_names_its_seed_and_keeps_the_old_file(
    project_params, write_params, tmp_path
):
    plugin("hydra_joblib_launcher")
    out = tmp_path / "trials" / "a.nc"
    good = write_trial(write_params, project_params, out)
    project_params.update(launcher=JOBLIB, task="tasks_for_tests.raises_on_seed_one")
    with pytest.raises(DetflowError, match="failed on torch_seed 1: ValueError: boom"):
        write_trial(write_params, project_params, out)
    assert out.read_bytes() == good
    assert [path.name for path in out.parent.iterdir()] == ["a.nc"]


def test_unknown_launcher_names_the_installed_ones(project_params, write_params, tmp_path):
    project_params["launcher"] = "no_such_launcher"
    with pytest.raises(
        DetflowError,
        match=r"launcher 'no_such_launcher' is not an installed Hydra launcher "
        r"\(installed: basic.*\): install the Hydra plugin that provides it, or set launcher: loop",
    ):
        write_trial(write_params, project_params, tmp_path / "a.nc")


def test_unknown_launcher_option_is_named(project_params, write_params, tmp_path):
    plugin("hydra_joblib_launcher")
    project_params["launcher"] = {"name": "joblib", "n_job": 2}
    with pytest.raises(
        DetflowError, match=r"launcher 'joblib' rejected its options \{'n_job': 2\}.*n_job"
    ):
        write_trial(write_params, project_params, tmp_path / "a.nc")


@pytest.mark.slurm
def test_submitit_slurm_on_a_one_node_cluster(
    slurm, monkeypatch, project_params, write_params, tmp_path
):
    """Real sbatch jobs on a Slurm started for this test (see tests/slurm_cluster.py)."""
    plugin("hydra_submitit_launcher")
    monkeypatch.setenv("SLURM_CONF", slurm["SLURM_CONF"])
    project_params.update(pre_task="detflow.seeding.seed_everything", torch_seed=[0, 1, 2])
    in_process = write_trial(write_params, project_params, tmp_path / "in_process" / "a.nc")
    project_params["launcher"] = {"name": "submitit_slurm", "partition": "detflow"}
    launched = write_trial(write_params, project_params, tmp_path / "launched" / "a.nc")
    assert launched == in_process
    assert [path.name for path in (tmp_path / "launched").iterdir()] == ["a.nc"]
