"""The engine restructure (one per-seed run, an executor, hydra-zen's launch) changed no
number: the trial files and result.nc of the code before it, and of today's, hold the same
values, dims, coordinates and provenance for the how-to, the training task and a Hydra
launcher. Only what later changes added differs, and is checked here: trial files record
the code that ran (``code_digest``) and the params it bound (``bound_params``), and result.nc
keeps just those params as attrs. (Until those additions, the files were byte-identical.)

The code before is read from git, at the last commit before the restructure; the test skips
where that commit is absent (a shallow clone).
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import xarray as xr
import yaml

from detflow.artifact import read_dataset
from detflow.determinism import content_digest
from detflow.result_record import VERDICT_KEYS

pytestmark = pytest.mark.e2e

BEFORE = "676353d"  # e2e: ... portable mode gives one digest on every CPU path
PROJECT_ROOT = Path(__file__).resolve().parents[1]

CASES = {
    "how-to": {},
    "training": {"task": "detflow.tasks.train", "pre_task": "detflow.seeding.seed_everything"},
    "joblib launcher": {"launcher": {"name": "joblib", "n_jobs": 2}},
}


def source_at(commit: str, folder: Path) -> Path:
    archive = subprocess.run(
        ["git", "archive", commit, "src"], cwd=PROJECT_ROOT, capture_output=True, check=False
    )
    if archive.returncode != 0:
        pytest.skip(f"commit {commit} is not in this clone: {archive.stderr.decode().strip()}")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(folder, filter="data")
    return folder / "src"


def run_pipeline(workdir: Path, params: dict, source: Path | None) -> dict[str, xr.Dataset]:
    """Two trials and the aggregate, with ``source`` first on the path (None: today's code)."""
    workdir.mkdir(parents=True)
    (workdir / "params.yaml").write_text(yaml.safe_dump(params))
    env = dict(os.environ)
    if source is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(source), env.get("PYTHONPATH", "")])
    for trial in ("a", "b"):
        command = [sys.executable, "-m", "detflow.trial", "--out", f"data/trials/{trial}.nc"]
        subprocess.run(command, cwd=workdir, env=env, check=True, capture_output=True)
    command = [sys.executable, "-m", "detflow.aggregate"]
    subprocess.run(command, cwd=workdir, env=env, check=True, capture_output=True)
    paths = ("data/trials/a.nc", "data/trials/b.nc", "data/result.nc")
    return {path: read_dataset(workdir / path) for path in paths}


@pytest.mark.parametrize("case", CASES)
def test_files_are_byte_identical_before_and_after_the_restructure(tmp_path, case):
    before = source_at(BEFORE, tmp_path / "before")
    assert not (before / "detflow/run.py").exists()  # really the code before the restructure
    params = {
        "torch_seed": [0, 1],
        "trial_id": ["a", "b"],
        "pre_task": "detflow.seeding.seed_torch",
        "task": "detflow.tasks.forward",
        "module": {"_target_": "torch.nn.Linear", "in_features": 10, "out_features": 1},
        "data": {"_target_": "torch.arange", "_args_": [10.0]},
        "train": {"epochs": 3, "lr": 0.05, "batch_size": 16, "num_workers": 0, "n_samples": 64},
        **CASES[case],
    }
    old = run_pipeline(tmp_path / "old", params, before)
    new = run_pipeline(tmp_path / "new", params, None)
    for path, was in old.items():
        now = new[path]
        assert content_digest(now) == content_digest(was), f"{case}: {path} changed numbers"
        xr.testing.assert_identical(now.drop_attrs(), was.drop_attrs())
        # What this code records beside the numbers: the code and params that made them, and
        # (the result) its own digest and verdict.
        recorded = ("code_digest", "bound_params", "code_files", "params", "config_digest")
        added = {key: now.attrs.pop(key) for key in recorded}
        for key in (
            "env_read",
            "environment",
            *(VERDICT_KEYS if path.endswith("result.nc") else ()),
        ):
            now.attrs.pop(key)
        assert added["code_digest"].startswith("sha256:")
        bound = set(added["bound_params"].split(","))
        dropped = {key for key in was.attrs if key not in now.attrs}
        assert dropped == {key for key in dropped if key in params and key not in bound}
        assert {key: was.attrs[key] for key in now.attrs} == now.attrs, f"{case}: {path}"
