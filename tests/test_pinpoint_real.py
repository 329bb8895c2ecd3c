"""Pinpoint on what real training code does: deep copies, DataLoader workers, caches that
make trials disagree where fresh runs agree, and a long run that diverges early.

Each pinpoint starts fresh processes (about 2 s each, for torch's import).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from detflow.committed import config_digest
from detflow.params import load_params
from detflow.pinpoint import main, pinpoint_seeds
from detflow.pinpoint_report import EXIT_INCONCLUSIVE
from pinpoint_fixtures import pinpoint_children

pytestmark = pinpoint_children

TESTS = Path(__file__).parent


def test_deep_copies_of_a_tensor_and_a_module_agree(params_for):
    # Before: op #2 aten.set_.source_Storage, "the op itself gave different outputs".
    report = pinpoint_seeds(params_for(task="tasks_for_pinpoint.deep_copies"), [0], latent=False)
    assert report.findings[0].divergence is None, report.lines()
    assert report.diverged is False


def test_tensors_unpickled_in_any_order_agree(params_for):
    # The main process of a DataLoader with workers unpickles batches in arrival order.
    params_path = params_for(task="tasks_for_pinpoint.unpickled_in_any_order")
    report = pinpoint_seeds(params_path, [0], runs=3, latent=False)
    assert report.findings[0].divergence is None, report.lines()


def test_training_with_two_dataloader_workers_agrees(params_for):
    # Before: op #17 (or #755) aten.set_.source_Storage_storage_offset in _rebuild_tensor.
    params_path = params_for(
        task="detflow.tasks.train",
        pre_task="detflow.seeding.seed_everything",
        train={"epochs": 3, "lr": 0.05, "batch_size": 16, "num_workers": 2, "n_samples": 256},
    )
    report = pinpoint_seeds(params_path, [0], runs=3, latent=False)
    assert report.findings[0].divergence is None, report.lines()
    assert report.findings[0].ops[0] > 500  # the training really ran under the tracer


def test_a_lightning_trainer_agrees(params_for):
    pytest.importorskip("pytorch_lightning")
    params_path = params_for(task="tasks_for_pinpoint.lightning_fit")
    report = pinpoint_seeds(params_path, [0], latent=False)
    assert report.findings[0].divergence is None, report.lines()


def test_the_cache_task_makes_trials_disagree():
    """What a trial sees: the first call computes and writes the cache, the next reads it."""
    from tasks_for_pinpoint import cached_features

    first, second = cached_features(0)["out"], cached_features(0)["out"]
    assert not bool((first == second).all())


def test_trials_that_disagree_where_fresh_runs_agree_are_inconclusive(params_for, capsys):
    params_path = params_for(task="tasks_for_pinpoint.cached_features")
    Path("features-cache.txt").write_text("0.1 0.2 0.3")  # left by the trials, as they ran
    metrics = {
        "config_digest": config_digest(load_params(params_path)),
        "deterministic": False,
        "disagreeing_seeds": "0",
    }
    Path("metrics.json").write_text(json.dumps(metrics))
    code = main(["--params", str(params_path), "--out", "pinpoint.json"])
    assert code == EXIT_INCONCLUSIVE == 3  # neither 0 (agreed) nor 1 (diverged)
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "pinpoint: metrics.json says torch_seed 0 disagree"
    assert out[2].startswith("no divergence")
    assert out[3].startswith(
        "inconclusive: the trials disagreed for torch_seed 0 (metrics.json), but the "
        "disagreement did not reproduce in fresh runs of one seed"
    )
    listed = "\n".join(out[4:8])
    for difference in (
        "seeds run one after another in one process",
        "files the task wrote and read back",
        "the clock",
        "cross-process order",
    ):
        assert difference in listed
    assert out[8].startswith("next step: ")
    record = json.loads(Path("pinpoint.json").read_text())
    assert record["diverged"] is None and record["inconclusive"] is True


def test_agreeing_trials_and_runs_are_not_inconclusive(params_for):
    params_path = params_for()
    metrics = {"config_digest": config_digest(load_params(params_path)), "disagreeing_seeds": ""}
    Path("metrics.json").write_text(json.dumps(metrics))
    assert main(["--params", str(params_path), "--out", "pinpoint.json"]) == 0
    assert json.loads(Path("pinpoint.json").read_text())["diverged"] is False


def test_a_run_that_diverges_early_is_stopped_there(params_for):
    """The runs are compared as they go and stopped at the first divergence: of 200,001 ops,
    each run traces a small part (tracing it all takes over 5 s a run here)."""
    params_path = params_for(task="tasks_for_pinpoint.diverges_then_runs_long")
    report = pinpoint_seeds(params_path, [0], latent=False)
    finding = report.findings[0]
    assert finding.divergence.op_index == 0 and finding.divergence.op == "aten.rand.generator"
    assert finding.stopped
    assert max(finding.ops) < 200_001 // 4, finding.ops


# Causes outside torch ------------------------------------------------------------------------


def line_of(tag: str) -> str:
    lines = (TESTS / "tasks_for_pinpoint.py").read_text().splitlines()
    (number,) = [n for n, line in enumerate(lines, 1) if line.endswith(f"# pinpoint: {tag}")]
    return f"tasks_for_pinpoint.py:{number}"


@pytest.mark.parametrize(
    ("task", "tag", "words"),
    [
        ("numpy_draws", "numpy", "NumPy's global RNG: numpy.random.rand at "),
        ("python_random_draws", "random", "Python's random module: random.sample at "),
        ("reads_a_file_that_changes", "file", "a file: changing.bin at "),
    ],
)
def test_the_source_outside_torch_is_named_with_its_line(params_for, task, tag, words):
    report = pinpoint_seeds(params_for(task=f"tasks_for_pinpoint.{task}"), [0], latent=False)
    divergence = report.findings[0].divergence
    assert divergence is not None and not divergence.inputs_equal
    assert divergence.origin.startswith(f"{words}{line_of(tag)} (before op #"), divergence.origin
    assert divergence.origin in divergence.cause()
    assert report.record()["origin"] == divergence.origin


def test_hash_randomisation_is_named(params_for, monkeypatch):
    monkeypatch.delenv("PYTHONHASHSEED", raising=False)
    report = pinpoint_seeds(
        params_for(task="tasks_for_pinpoint.set_order"), [0], runs=4, latent=False
    )
    divergence = report.findings[0].divergence
    # Four runs with random hash seeds: some pair iterates the set in another order.
    assert divergence is not None, report.lines()
    assert divergence.source == line_of("set")
    assert divergence.origin.startswith("hash randomisation: each run had another string hash seed")


def test_a_fixed_hash_seed_makes_the_set_order_agree(params_for, monkeypatch):
    monkeypatch.setenv("PYTHONHASHSEED", "0")
    report = pinpoint_seeds(params_for(task="tasks_for_pinpoint.set_order"), [0], latent=False)
    assert report.findings[0].divergence is None


def test_metrics_of_fewer_than_two_trials_name_nothing_to_pinpoint(params_for):
    from detflow.pinpoint_metrics import read_verdict, seeds_to_pinpoint

    params = load_params(params_for())
    metrics = {"config_digest": config_digest(params), "deterministic": None}
    Path("metrics.json").write_text(json.dumps(metrics))
    verdict = read_verdict(params, Path("metrics.json"))
    assert verdict.disagreeing == () and "fewer than two ran" in verdict.problem
    assert seeds_to_pinpoint(params, Path("metrics.json")) == (
        [0],
        "pinpoint: metrics.json compared no trials (fewer than two ran): tracing the first "
        "seed, torch_seed 0",
    )


def test_the_stage_records_an_inconclusive_run_as_null(params_for):
    from detflow.pinpoint_stage import main as stage_main

    params_path = params_for(task="tasks_for_pinpoint.cached_features", pinpoint=True)
    Path("features-cache.txt").write_text("0.1 0.2 0.3")
    metrics = {"config_digest": config_digest(load_params(params_path)), "disagreeing_seeds": "0"}
    Path("metrics.json").write_text(json.dumps(metrics))
    assert stage_main(["--params", str(params_path)]) == 0  # a finding, not a failure
    record = json.loads(Path("pinpoint.json").read_text())
    assert (record["ran"], record["diverged"], record["inconclusive"]) == (True, None, True)
