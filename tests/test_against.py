"""``python -m detflow.pinpoint --against REV``: a commit made natively here, then runs under
another CPU capability, thread count and MKL_CBWR, each naming the op and the setting; and the
setting it names, applied, gives the commit's digests. The alignment and the settings logic are
unit tests; the real runs (a git commit, fresh traced processes) are marked e2e."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from detflow.against import against, record_reference
from detflow.against_cause import differing_settings
from detflow.against_compare import Trace, first_found
from detflow.cli import DetflowError
from detflow.trace_format import RECORD_DTYPE

TESTS = Path(__file__).parent
# What the reference is recorded under: this machine's native settings.
BIT_VARIABLES = ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def trace(names: list[str], outputs: list[int], inputs: list[int] | None = None) -> Trace:
    records = np.zeros(len(names), RECORD_DTYPE)
    records["outputs_lo"] = outputs
    records["inputs_lo"] = inputs if inputs is not None else 0
    return Trace(records, np.array(names, dtype=object))


def test_an_inserted_op_does_not_hide_the_first_real_difference():
    commit = trace(["a", "b", "c", "d"], [1, 2, 3, 4])
    here = trace(["a", "b", "new", "c", "d"], [1, 2, 7, 3, 5])
    found = first_found(commit, here)
    assert found.parted == (2, 2, "c", "new")
    assert (found.kind, found.commit_index, found.here_index) == ("outputs", 3, 4)


def test_equal_traces_agree_and_a_renamed_op_is_aligned_past():
    assert first_found(trace(["a", "b"], [1, 2]), trace(["a", "b"], [1, 2])) is None
    found = first_found(trace(["a", "x", "c"], [1, 2, 3]), trace(["a", "y", "c"], [1, 2, 9]))
    assert found.parted[2:] == ("x", "y") and found.commit_index == 2


def test_a_version_no_setting_here_can_change_is_the_remaining_difference():
    from detflow.against_compare import Found
    from detflow.against_report import AgainstReport

    settings = differing_settings(
        {"torch_version": "2.13.0+cpu", "numpy_version": "2.4.6"},
        {"torch_version": "2.14.1+cu130", "numpy_version": "2.4.6"},
    )
    report = AgainstReport(
        "HEAD",
        0,
        {"ops": 3, "environment": {}},
        {},
        Found("path", 1, 1, (1, 1, "a", "b")),
        False,
        None,
        None,
        None,
        tuple(settings),
        (),
        settings[0],
        False,
    )
    lines = report.lines()
    remaining = "remaining difference: torch_version 2.14.1+cu130 here vs 2.13.0+cpu at the commit"
    assert any(line.startswith(remaining) for line in lines), lines
    assert any("`pip install torch==2.13.0` here makes them agree" in line for line in lines)
    assert any("the op sequences part at op #1" in line for line in lines)
    assert report.record()["environment_cause"] == {
        "field": "torch_version",
        "here": "2.14.1+cu130",
        "commit": "2.13.0+cpu",
        "reproduces_with": None,
    }


def test_settings_name_what_this_machine_can_try_and_what_it_cannot():
    commit = {"cpu_capability": "AVX512", "intra_op_threads": "2", "mkl_cbwr": "unset"}
    commit.update(torch_version="2.13.0+cpu", cpu_model="AMD EPYC")
    here = {"cpu_capability": "AVX2", "intra_op_threads": "1", "mkl_cbwr": "COMPATIBLE"}
    here.update(torch_version="2.14.1+cu130", cpu_model="AMD EPYC", cpu_flags="avx2 fma")
    settings = {s.field: s for s in differing_settings(commit, here)}
    assert settings["cpu_capability"].env is None  # no AVX-512 on this CPU
    assert (
        "avx512f" in settings["cpu_capability"].fix
        and "portable: true" in settings["cpu_capability"].fix
    )
    assert settings["intra_op_threads"].env == {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}
    assert settings["mkl_cbwr"].env == {"MKL_CBWR": None}  # unset at the commit
    assert settings["torch_version"].fix == "`pip install torch==2.13.0` here makes them agree"


# Real runs ----------------------------------------------------------------------------------


def git(folder: Path, *args: str) -> None:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid"}
    env.update(GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.invalid")
    subprocess.run(["git", *args], cwd=folder, env=env, check=True)


@pytest.fixture
def commit_of(tmp_path, project_params, monkeypatch):
    """A git repository in tmp_path whose commit carries a reference trace of ``task``'s seed 0,
    recorded with this machine's native settings; the tests then run in it."""
    # The runs are fresh processes: the test tasks and benchmarks.pinpoint's conv net.
    paths = [str(TESTS), str(TESTS.parent), *filter(None, [os.environ.get("PYTHONPATH")])]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(paths))
    monkeypatch.chdir(tmp_path)

    def make(task: str) -> Path:
        params = tmp_path / "params.yaml"
        params.write_text(yaml.safe_dump({**project_params, "task": task, "torch_seed": [0]}))
        for name in BIT_VARIABLES:
            monkeypatch.delenv(name, raising=False)
        record_reference(params, 0, tmp_path)
        for command in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "reference"]):
            git(tmp_path, *command)
        return params

    return make


def check_cause(params, monkeypatch, here: dict, field: str, op: str):
    """Run under ``here``: the op and the field named, and the fix it names reproduces."""
    for name, value in here.items():
        monkeypatch.setenv(name, value)
    report = against("HEAD", params)
    if report.agreed and field == "mkl_cbwr":
        pytest.skip("MKL_CBWR=COMPATIBLE gives the native bits of this matmul on this CPU")
    record = report.record()
    assert record["diverged"] is True and record["op"] == op, report.lines()
    assert record["inputs_equal"] is True
    assert record["output_sums"]["here"] is not None, record  # kept, so the size is said
    assert any(line.startswith("  the sum of its outputs is") for line in report.lines())
    cause = record["environment_cause"]
    assert cause["field"] == field and cause["reproduces_with"], report.lines()
    for name, value in cause["reproduces_with"].items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    again = against("HEAD", params)
    assert again.agreed and again.record()["environment_cause"] is None, again.lines()
    assert again.here_summary["results"] == again.commit_summary["results"]
    return report


@pytest.mark.e2e
def test_the_cpu_capability_is_named_at_linears_init_and_reproduces(commit_of, monkeypatch):
    params = commit_of("detflow.tasks.forward")
    native = json.loads(Path("pinpoint-reference/trace.json").read_text())["environment"]
    if native["cpu_capability"] == "DEFAULT":
        pytest.skip("this CPU's native path is torch's default one: nothing to compare")
    report = check_cause(
        params,
        monkeypatch,
        {"ATEN_CPU_CAPABILITY": "default"},
        "cpu_capability",
        "aten.uniform_.default",
    )
    assert report.record()["environment_cause"]["reproduces_with"] == {
        "ATEN_CPU_CAPABILITY": native["cpu_capability"].lower()
    }
    # The how-to's reference is a few kB.
    assert sum(p.stat().st_size for p in Path("pinpoint-reference").iterdir()) < 10_000


@pytest.mark.e2e
def test_the_thread_count_is_named_at_a_big_sum(commit_of, monkeypatch):
    params = commit_of("tasks_for_pinpoint.big_sum")
    native = json.loads(Path("pinpoint-reference/trace.json").read_text())["environment"]
    if native["intra_op_threads"] == "1":
        pytest.skip("one intra-op thread here: no other thread count to compare")
    check_cause(
        params, monkeypatch, {"OMP_NUM_THREADS": "1"}, "intra_op_threads", "aten.sum.default"
    )


@pytest.mark.e2e
def test_mkl_cbwr_is_named_at_a_matmul(commit_of, monkeypatch):
    params = commit_of("tasks_for_pinpoint.matmul")
    report = against("HEAD", params)
    assert report.agreed, report.lines()
    check_cause(params, monkeypatch, {"MKL_CBWR": "COMPATIBLE"}, "mkl_cbwr", "aten.mm.default")


@pytest.mark.e2e
@pytest.mark.skipif(
    not os.environ.get("DETFLOW_OTHER_TORCH_PYTHON"),
    reason="set DETFLOW_OTHER_TORCH_PYTHON to a Python with another torch (e.g. /tmp/t214/bin/python)",
)
@pytest.mark.parametrize("task", ["detflow.tasks.forward", "benchmarks.pinpoint.resnet_steps"])
def test_another_torch_version_is_compared_and_named(commit_of, task):
    """Not in CI (a 5.5 GB torch): a commit made with this torch, a run with another."""
    commit_of(task)
    other = os.environ["DETFLOW_OTHER_TORCH_PYTHON"]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(TESTS.parent / "src"), str(TESTS), str(TESTS.parent)]),
    }
    shown = subprocess.run(
        [other, "-m", "detflow.pinpoint", "--against", "HEAD", "--out", "other.json"],
        env=env,
        capture_output=True,
        text=True,
    )
    record = json.loads(Path("other.json").read_text())
    assert "torch_version" in record["settings_differ"], shown.stdout + shown.stderr
    if record["diverged"]:  # then the remaining difference is the version, fixed by pip
        assert record["environment_cause"]["reproduces_with"] is None
        assert "pip install torch==" in shown.stdout
    else:
        assert shown.returncode == 0 and "no difference" in shown.stdout


@pytest.mark.e2e
def test_a_reference_keeps_a_prefix_and_a_run_here_agrees_with_it(commit_of, tmp_path):
    params = commit_of("detflow.tasks.train")
    record_reference(params, 0, tmp_path, max_ops=50)
    summary = json.loads(Path("pinpoint-reference/trace.json").read_text())
    assert summary["ops"] == 50 and summary["untraced_ops"] > 4000
    assert Path("pinpoint-reference/trace.ops").stat().st_size == 50 * 56
    git(tmp_path, "commit", "-qam", "a prefix")
    report = against("HEAD", params)
    assert report.agreed and report.exit_code == 0, report.lines()
    assert report.record()["environment_cause"] is None


@pytest.mark.e2e
def test_a_commit_without_a_reference_and_other_params_are_one_line(commit_of, tmp_path):
    params = commit_of("detflow.tasks.forward")
    with pytest.raises(DetflowError, match="no such commit"):
        against("nosuchrev", params)
    values = yaml.safe_load(params.read_text())
    params.write_text(yaml.safe_dump({**values, "torch_seed": [1]}))
    with pytest.raises(DetflowError, match="other params"):
        against("HEAD", params)
    params.write_text(yaml.safe_dump(values))
    git(tmp_path, "rm", "-rq", "pinpoint-reference")
    git(tmp_path, "commit", "-qm", "no reference")
    with pytest.raises(DetflowError, match="HEAD carries no reference trace"):
        against("HEAD", params)
    assert against("HEAD~1", params).agreed
    shown = subprocess.run(
        [sys.executable, "-m", "detflow.pinpoint", "--against", "HEAD~1^"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert shown.returncode != 0 and "no such commit" in shown.stderr
