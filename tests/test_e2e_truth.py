"""Issue 18, through dvc: every report describes the result on disk, made here, by this code
and this environment; one trial compares nothing; attrs come from what the trials ran; the
verdict is printed even when DVC restores the aggregate from its cache; recovery never
deletes a result it cannot bring back; every report is strict JSON."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from detflow.artifact import read_dataset
from dvc_project import dvc, metrics, sh
from project_copy import environment

pytestmark = pytest.mark.e2e


def show(repo: Path, *args: str, env: dict | None = None) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "detflow.show", *args],
        cwd=repo,
        env={**environment(), **(env or {})},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def strict_json(text: str):
    """json.loads that refuses NaN and Infinity, as jq and JSON.parse do."""

    def refuse(constant):
        raise AssertionError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_a_table_is_never_shown_beside_another_runs_verdict(repo):
    dvc(repo, "exp", "run", "-S", "pre_task=null")
    assert metrics(repo)["deterministic"] is False
    sh(repo, "git", "checkout", "--", "params.yaml", "metrics.json")
    shown = show(repo)
    # The verdict is the result's own (the non-deterministic one on disk), and a line says
    # that metrics.json (HEAD's) describes another result, naming the fix.
    assert "deterministic: False (disagreeing torch_seed: 0,1)" in shown
    assert "metrics.json does not describe the result on disk" in shown
    assert "`dvc checkout`" in shown
    assert "reproduced the committed result" not in shown


def test_the_environment_is_an_input(repo):
    native = read_dataset(repo / "data/result.nc").attrs["cpu_capability"]
    log = dvc(repo, "repro", env={"ATEN_CPU_CAPABILITY": "default"})
    assert "Running stage 'task@a'" in log
    assert metrics(repo)["provenance"]["cpu_capability"] == "DEFAULT"
    # The result on disk was made under DEFAULT: here, natively, nothing says "reproduced".
    if native != "DEFAULT":
        shown = show(repo)
        assert "not tested here: the result on disk was made in another environment" in shown
        assert "env.ATEN_CPU_CAPABILITY default vs unset" in shown
    log = dvc(repo, "repro", env={"OMP_NUM_THREADS": "1"})
    assert "Running stage 'task@a'" in log
    assert metrics(repo)["provenance"]["intra_op_threads"] == "1"
    # Back in the committed environment the trials are the cached ones, and the line says so.
    log = dvc(repo, "repro")
    assert "cross-machine: this machine reproduced the committed result bit for bit" in log


def test_one_trial_compares_nothing(repo):
    log = dvc(repo, "exp", "run", "-S", "trial_id=[a]", "-S", "pre_task=null")
    assert "not compared: one trial (a) ran each seed" in log
    found = metrics(repo)
    assert found["deterministic"] is None and found["seeds"]["0"]["deterministic"] is None
    refused = dvc(repo, "exp", "run", "-S", "strict=true", check=False)
    assert "strict: one trial ran each seed, so nothing was compared" in refused


def test_attrs_and_config_digest_come_from_what_the_trials_ran(repo):
    (repo / "tasks" / "unused.py").write_text(
        "def forward(module, data, unused):\n    return {'out': module(data).detach()}\n"
    )
    params = (repo / "params.yaml").read_text()
    params = params.replace("task: detflow.tasks.forward", "task: tasks.unused.forward")
    (repo / "params.yaml").write_text(params + "unused: 1\n")
    dvc(repo, "repro")
    first = metrics(repo)["config_digest"]
    # A bound param that changes no number still reruns the trials, and the result says so.
    (repo / "params.yaml").write_text(params + "unused: 2\n")
    log = dvc(repo, "repro")
    assert "Running stage 'aggregate'" in log
    assert read_dataset(repo / "data/result.nc").attrs["unused"] == 2
    assert metrics(repo)["config_digest"] != first
    # The aggregate alone, after params.yaml changed: it records what the trials ran.
    no_pre_task = params.replace("pre_task: detflow.seeding.seed_torch", "pre_task:")
    (repo / "params.yaml").write_text(no_pre_task + "unused: 2\n")
    log = dvc(repo, "repro", "-s", "aggregate", "-f")
    assert "the trials ran other params" in log
    attrs = read_dataset(repo / "data/result.nc").attrs
    assert attrs["pre_task"] == "detflow.seeding.seed_torch"
    assert metrics(repo)["config_digest"] != first


def test_other_code_is_not_called_a_machine_difference(repo):
    task = "def forward(module, data):\n    return {'out': module(data).detach() * 2}\n"
    (repo / "tasks" / "mine.py").write_text(task)
    params = (repo / "params.yaml").read_text()
    (repo / "params.yaml").write_text(
        params.replace("task: detflow.tasks.forward", "task: tasks.mine.forward")
    )
    dvc(repo, "repro")
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "mine")
    (repo / "tasks" / "mine.py").write_text(task.replace("* 2", "* 3"))
    log = dvc(repo, "repro")
    assert "cross-machine: not compared: other code" in log
    assert "tasks/mine.py differ from the commit" in log
    assert "this machine vs the commit" not in log


def test_the_verdict_is_printed_when_dvc_restores_stages_from_its_cache(repo):
    dvc(repo, "exp", "run", "-S", "torch_seed=1")
    sh(repo, "git", "checkout", "--", "params.yaml")
    log = dvc(repo, "repro")
    assert "Stage 'task@a' is cached - skipping run" in log
    assert "Running stage 'report'" in log
    assert "deterministic: all 3 trials agree bitwise for torch_seed 0..1" in log
    assert "cross-machine: this machine reproduced the committed result bit for bit" in log


def test_recovery_never_deletes_what_it_cannot_restore(repo, tmp_path):
    # A clone with no DVC cache (and no remote): the committed bytes are nowhere here.
    clone = tmp_path / "clone"
    sh(repo, "git", "clone", "-q", str(repo), str(clone))
    dvc(clone, "repro")
    kept = {p.name: p.read_bytes() for p in (clone / "data/trials").glob("*.nc")}
    result = (clone / "data/result.nc").read_bytes()
    # As on a machine that made other bytes than the commit's: none of them in its cache.
    shutil.rmtree(clone / ".dvc/cache")
    sh(clone, "git", "checkout", "--", "dvc.lock", "metrics.json")
    done = subprocess.run(
        [sys.executable, "-m", "detflow.restore"],
        cwd=clone,
        env=environment(),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1
    assert "is not in this machine's DVC cache" in done.stderr
    assert "only `dvc repro` can make them" in done.stderr and "nothing was changed" in done.stderr
    assert (clone / "data/result.nc").read_bytes() == result
    assert {p.name: p.read_bytes() for p in (clone / "data/trials").glob("*.nc")} == kept
    # Where the cache has the committed bytes, it restores them.
    restored = subprocess.run(
        [sys.executable, "-m", "detflow.restore"],
        cwd=repo,
        env=environment(),
        capture_output=True,
        text=True,
    )
    assert restored.returncode == 0, restored.stderr
    assert "restored the result committed at HEAD" in restored.stdout


def test_reports_are_strict_json_and_a_malformed_commit_is_one_line(repo):
    strict_json((repo / "metrics.json").read_text())
    broken = metrics(repo)
    broken["provenance"] = "not a mapping"
    (repo / "metrics.json").write_text(json.dumps(broken))
    sh(repo, "git", "commit", "-qam", "a hand-edited metrics.json")
    shown = show(repo, "--brief")
    assert "cross-machine: not compared: the committed metrics.json has a 'provenance'" in shown
