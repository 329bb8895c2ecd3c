"""Never silently wrong: what a task returns, what params say and what happens during a run
is checked, and every refusal is one line that names the value and the fix."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from detflow.artifact import atomic_path, read_dataset
from detflow.cli import DetflowError
from detflow.params import parse_params
from detflow.trial import main, run_trial


def refusal(project_params, message: str, **changes) -> None:
    project_params.update(changes)
    with pytest.raises(DetflowError, match=message) as caught:
        run_trial(parse_params(project_params))
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("task", "message"),
    [
        ("returns_bfloat16", r"'out' as a torch.bfloat16 tensor, .*e.g. tensor.float\(\)"),
        ("returns_sparse", r"'out' as a torch.float32 tensor \(torch.sparse_coo\).*to_dense\(\)"),
        ("returns_meta", "'out' as a torch.float32 tensor.*a meta tensor has no values"),
        ("returns_longdouble", "of dtype float128, which cannot be stored: return bool, int"),
        ("returns_a_dim_name", "returned 'out_dim0', which is also the name of an axis"),
    ],
)
def test_unstorable_returns_are_one_line(project_params, task, message):
    refusal(project_params, message, task=f"tasks_for_tests.{task}", pre_task=None)


def test_interpolations_are_refused_as_untracked_inputs(project_params):
    project_params["module"]["out_features"] = "${oc.env:HOME}"
    refusal(project_params, r"module.out_features holds '\$\{oc.env:HOME\}', an interpolation")
    project_params["module"]["out_features"] = 1
    project_params["data"]["_args_"] = ["${oc.env:HOME}"]
    refusal(project_params, r"data._args_ holds '\$\{oc.env:HOME\}'")


@pytest.mark.parametrize(
    ("seeds", "message"),
    [
        (f"0..{2**63 - 1}", "is 9223372036854775808 seeds, over the limit of 1000000"),
        ("0..1000000", "is 1000001 seeds, over the limit of 1000000: split the sweep"),
    ],
)
def test_huge_sweeps_fail_fast_against_a_limit(project_params, seeds, message):
    project_params["torch_seed"] = seeds
    with pytest.raises(DetflowError, match=message):
        parse_params(project_params)


def test_the_seed_limit_can_be_raised(project_params):
    project_params.update(torch_seed="0..9", max_seeds=5)
    with pytest.raises(DetflowError, match=r"over the limit of 5: .* or raise max_seeds"):
        parse_params(project_params)
    project_params["max_seeds"] = 10
    assert len(parse_params(project_params).torch_seeds) == 10


@pytest.mark.parametrize(
    ("label", "message"),
    [
        ("x" * 250, "trial_id xxxxxxxxxxxxxxxxxxxx... is 250 characters long: use at most 100"),
        ("a b", "trial_id 'a b' is not a valid label"),
        ("$(touch pwned)", r"trial_id '\$\(touch pwned\)' is not a valid label"),
    ],
)
def test_bad_labels_are_one_line(project_params, label, message):
    project_params["trial_id"] = [label]
    with pytest.raises(DetflowError, match=message):
        parse_params(project_params)


def test_a_full_disk_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda folder: shutil._ntuple_diskusage(1, 1, 0))
    target = tmp_path / "a.nc"
    target.write_text("the last good file")
    full = r"no space left on the device that holds .*a.nc"
    with pytest.raises(DetflowError, match=full), atomic_path(target):
        raise RuntimeError("NetCDF: HDF error")
    assert target.read_text() == "the last good file"


def write_and_run(tmp_path, values: dict, out: str = "a.nc") -> Path:
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(values))
    main(["--params", "params.yaml", "--out", out])
    return tmp_path / out


@pytest.mark.parametrize("launcher", ["loop", "basic"])
def test_an_edit_during_the_run_fails_the_stage_and_jobs_use_the_snapshot(
    project_params, tmp_path, monkeypatch, launcher
):
    monkeypatch.chdir(tmp_path)
    project_params.update(pre_task="tasks_for_tests.edits_params_on_seed_zero", launcher=launcher)
    project_params["torch_seed"] = [0, 1, 2]
    with pytest.raises(DetflowError, match=r"params\.yaml changed while this stage ran"):
        write_and_run(tmp_path, project_params)
    assert not (tmp_path / "a.nc").exists()


def test_seeds_are_isolated_in_the_loop_a_launcher_and_alone(project_params, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    project_params.update(task="tasks_for_tests.mutates_its_input", pre_task=None)
    project_params.update(options={"count": 0}, torch_seed=[0, 1, 2])
    loop = read_dataset(write_and_run(tmp_path, project_params, "loop.nc"))["out"].values
    assert loop.tolist() == [[1, 0], [1, 1], [1, 2]]  # every seed saw count 0
    project_params["launcher"] = "basic"
    launched = write_and_run(tmp_path, project_params, "launched.nc")
    assert launched.read_bytes() == (tmp_path / "loop.nc").read_bytes()
    project_params.update(torch_seed=[2], launcher="loop")
    alone = read_dataset(write_and_run(tmp_path, project_params, "alone.nc"))["out"].values
    assert alone.tolist() == [loop.tolist()[2]]


def test_the_output_goes_where_the_stage_was_told(project_params, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    project_params["task"] = "tasks_for_tests.changes_directory"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(project_params))
    main(["--params", "params.yaml", "--out", "data/trials/a.nc"])
    assert (tmp_path / "data/trials/a.nc").exists()


def test_launcher_jobs_run_the_stage_snapshot_not_the_edited_file(
    project_params, tmp_path, monkeypatch
):
    from detflow.executor import run_seeds
    from detflow.params import load_params
    from how_to import how_to_reference

    monkeypatch.chdir(tmp_path)
    project_params.update(pre_task="tasks_for_tests.edits_params_on_seed_zero", launcher="basic")
    project_params["torch_seed"] = [0, 1, 2]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(project_params))
    params = load_params(tmp_path / "params.yaml")
    outputs = []
    run_seeds(params, tmp_path, outputs.append)
    assert "pre_task: null" in (tmp_path / "params.yaml").read_text()  # the edit happened
    for seed, output in zip(params.torch_seeds, outputs, strict=True):
        assert output["out"].array.tobytes() == how_to_reference(seed).tobytes()  # seeded


@pytest.fixture
def small_disk(tmp_path):
    """A 256 KiB file system (tmpfs; needs root, as CI has), unmounted afterwards."""
    import subprocess

    folder = tmp_path / "small"
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    yield folder
    subprocess.run(["umount", str(folder)], check=False)


def test_a_really_full_disk_says_so_and_keeps_the_last_good_file(
    project_params, tmp_path, small_disk
):
    out = small_disk / "a.nc"
    out.write_text("the last good file")
    project_params.update(task="tasks_for_tests.returns_four_megabytes", pre_task=None)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(project_params))
    with pytest.raises(DetflowError, match=r"no space left on the device that holds .*a\.nc"):
        main(["--params", "params.yaml", "--out", str(out)])
    assert out.read_text() == "the last good file"
    assert [path.name for path in small_disk.iterdir()] == ["a.nc"]  # no temporary left


@settings(max_examples=25, deadline=None)
@given(
    seeds=st.lists(st.integers(0, 2**32), min_size=1, max_size=6, unique=True),
    count=st.integers(-5, 5),
)
def test_any_seed_gives_the_same_bytes_in_the_loop_as_alone(seeds, count):
    """Property: whatever the seeds and the input, a task that mutates its input gives each
    seed the bytes that seed gives when it runs alone."""
    values = {
        "torch_seed": seeds,
        "trial_id": ["a"],
        "pre_task": None,
        "task": "tasks_for_tests.mutates_its_input",
        "options": {"count": count},
    }
    together = run_trial(parse_params(values))["out"].values
    for position, seed in enumerate(seeds):
        alone = run_trial(parse_params({**values, "torch_seed": [seed]}))["out"].values
        assert alone[0].tobytes() == together[position].tobytes()
