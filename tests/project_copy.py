"""A throwaway git copy of the project (DVC needs a repository of its own).

Used by the end-to-end tests, and by the benchmarks (`python -m benchmarks.bench` imports it
as `tests.project_copy`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PROJECT_FILES = (
    "dvc.yaml",
    "params.yaml",
    ".dvcignore",
    ".gitignore",
    ".dvc/config",
    ".dvc/.gitignore",
    ".dvc/plots",
    "src",
    "tasks",
    "inputs",
    # What git versions of the last run, as a fresh clone has it: the lock, the metrics and
    # plots that the cross-machine check and `dvc metrics diff` compare with.
    "dvc.lock",
    "metrics.json",
    "evidence.json",
    "pinpoint.json",
    "pinpoint-reference",
    "data/.gitignore",
    "data/environment.json",
    "data/trials/.gitignore",
    "data/plots",
)


def environment() -> dict[str, str]:
    """Stages run `python -m detflow...`: this interpreter's bin comes first on PATH."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.update(
        GIT_AUTHOR_NAME="detflow",
        GIT_AUTHOR_EMAIL="detflow@example.invalid",
        GIT_COMMITTER_NAME="detflow",
        GIT_COMMITTER_EMAIL="detflow@example.invalid",
    )
    env.pop("DETFLOW_VERBOSE", None)  # stages print one-line errors, as users see them
    return env


def make_copy(folder: Path, params_file: dict | None = None, **params) -> Path:
    """Copy the project into ``folder``, apply ``params``, and commit it; ``params_file``
    replaces the shipped params.yaml whole (the tests' own params)."""
    for name in PROJECT_FILES:
        source, target = PROJECT_ROOT / name, folder / name
        if source.is_dir():
            shutil.copytree(
                source, target, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
            )
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    if params_file is not None:
        (folder / "params.yaml").write_text(yaml.safe_dump(params_file, sort_keys=False))
    if params:  # otherwise the file stays as written, comments and layout included
        values = yaml.safe_load((folder / "params.yaml").read_text())
        values.update(params)
        (folder / "params.yaml").write_text(yaml.safe_dump(values, sort_keys=False))
    for command in (
        ["git", "init", "-q"],
        ["git", "add", "-A"],
        ["git", "commit", "-qm", "detflow"],
    ):
        subprocess.run(command, cwd=folder, env=environment(), check=True)
    return folder


def stage_commands(folder: Path) -> dict[str, str]:
    """Each stage's command as `dvc` would run it, by stage name (task@a, ..., aggregate)."""
    listing = subprocess.run(
        [sys.executable, "-m", "dvc", "stage", "list", "--name-only"],
        cwd=folder,
        env=environment(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    values = yaml.safe_load((folder / "params.yaml").read_text())
    commands = {
        f"task@{t}": f"python -m detflow.trial --out 'data/trials/{t}.nc'"
        for t in values["trial_id"]
    }
    commands["environment"] = "python -m detflow.environment"
    commands["aggregate"] = "python -m detflow.aggregate"
    commands["pinpoint"] = "python -m detflow.pinpoint_stage"
    commands["report"] = "python -m detflow.show --brief"
    assert set(commands) == set(listing), (commands, listing)
    return commands


def median_seconds(command: str, folder: Path, repeats: int) -> float:
    """Median wall seconds of ``command`` over ``repeats`` runs, after one that warms the file
    cache (the benchmarks' timing)."""
    import statistics

    run_measured(command, folder)
    return statistics.median(run_measured(command, folder)[0] for _ in range(repeats))


def run_measured(command: str, folder: Path) -> tuple[float, float]:
    """Wall seconds and peak RSS in MiB of one command (and the children it waits for)."""
    import time

    started = time.perf_counter()
    process = subprocess.Popen(
        command, shell=True, cwd=folder, env=environment(), stdout=subprocess.DEVNULL
    )
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise SystemExit(f"`{command}` failed with exit code {process.returncode}")
    return time.perf_counter() - started, usage.ru_maxrss / 1024
