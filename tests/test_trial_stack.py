"""The streamed result equals the in-memory one: values, verdict, evidence and digest, whether
whole seeds share a slab or one seed spans many, and memory stays flat as seeds grow."""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pytest
import xarray as xr

from detflow import aggregate, plots, slabs, trial_stack
from detflow.artifact import read_dataset
from detflow.determinism import compare_trials, content_digest
from detflow.outputs import Output
from detflow.report import json_text
from detflow.trial_file import trial_file

SEEDS = [3, 1, 7]


def write_trials(folder, arrays: dict[str, np.ndarray], seeds=SEEDS) -> dict:
    """One trial file per label, from arrays of shape (seeds, ...)."""
    paths = {}
    for label, array in arrays.items():
        paths[label] = folder / f"{label}.nc"
        with trial_file(paths[label], "t", seeds) as writer:
            for values in array:
                writer.add({"out": Output(values, None), "flag": Output(values > 0, None)})
            writer.finish({"task": "t"})
    return paths


def disagreeing_trials(dtype) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((len(SEEDS), 5, 3)).astype(dtype)
    b, c = a.copy(), a.copy()
    b[1, 4, 2] = np.nan  # seed 1 differs in trial b, last row
    c[1, 0, 1] += 1  # ... and earlier in trial c: the first differing copy is b
    c[2, 2, 0] = -c[2, 2, 0]  # seed 7 differs in trial c only
    a[0, 3, 0] = np.nan  # NaN in every trial of seed 3: equal bits, agreeing
    b[0, 3, 0] = c[0, 3, 0] = np.nan
    return {"a": a, "b": b, "c": c}


@pytest.mark.parametrize("slab_bytes", [1 << 20, 8, 1], ids=["whole-seeds", "rows", "one-value"])
@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64, np.int8])
def test_streamed_result_equals_the_in_memory_one(tmp_path, monkeypatch, slab_bytes, dtype):
    monkeypatch.setattr(slabs, "SLAB_BYTES", slab_bytes)
    arrays = (
        disagreeing_trials(dtype)
        if dtype != np.int8
        else {
            label: np.nan_to_num(values * 10).astype(np.int8)
            for label, values in disagreeing_trials(np.float32).items()
        }
    )
    paths = write_trials(tmp_path, arrays)
    stacked = trial_stack.stack_trials(paths, SEEDS, tmp_path / "result.nc", {"k": "v"})

    trials = {label: read_dataset(path) for label, path in paths.items()}
    expected = aggregate.combine_trials(trials, {"k": "v"})
    xr.testing.assert_identical(read_dataset(tmp_path / "result.nc"), expected)
    verdict = compare_trials(expected)
    assert stacked.verdict.disagreements == verdict.disagreements
    assert dict(stacked.verdict.max_abs_diff_by_seed) == dict(verdict.max_abs_diff_by_seed)
    assert stacked.digest == content_digest(expected)
    if dtype != np.int8:
        assert stacked.verdict.disagreeing_seeds == (1, 7)


def test_one_large_seed_is_read_in_parts_and_compared_per_trial(tmp_path, monkeypatch):
    monkeypatch.setattr(slabs, "SLAB_BYTES", 16)  # 4 float32 rows per part
    a = np.arange(2 * 40, dtype=np.float32).reshape(2, 40)
    b = a.copy()
    b[1, 37] = 0.5  # in the last part of seed 1
    paths = write_trials(tmp_path, {"a": a, "b": b}, seeds=[0, 1])
    stacked = trial_stack.stack_trials(paths, [0, 1], tmp_path / "result.nc", {})
    (disagreement,) = [d for d in stacked.verdict.disagreements if d.variable == "out"]
    assert (disagreement.torch_seed, disagreement.trial_id, disagreement.index) == (1, "b", (37,))
    assert disagreement.max_abs_diff == (40 + 37) - 0.5


def test_memory_does_not_grow_with_the_seeds(tmp_path):
    """Python-level peak (numpy's arrays included) at 4x the seeds stays within 20% of 1x."""
    peaks = []
    for seeds in (8, 32):
        values = np.random.default_rng(1).random((seeds, 200_000), dtype=np.float32)
        folder = tmp_path / str(seeds)
        folder.mkdir()
        paths = write_trials(folder, {"a": values, "b": values, "c": values}, list(range(seeds)))
        del values
        tracemalloc.start()
        trial_stack.stack_trials(paths, list(range(seeds)), folder / "result.nc", {})
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert peaks[1] < 1.2 * peaks[0], peaks
    # A few slabs' temporaries, far below the 77 MB of values at 32 seeds.
    assert peaks[1] < 40 * slabs.SLAB_BYTES, peaks


def empty_trials(folder, seeds) -> dict:
    """Trials of a task that returns empty arrays (``torch.zeros(0)``, and a (2, 0) one)
    beside one value per seed."""
    paths = {}
    for label in ("a", "b"):
        paths[label] = folder / f"{label}.nc"
        with trial_file(paths[label], "t", seeds) as writer:
            for seed in seeds:
                writer.add(
                    {
                        "out": Output(np.zeros(0, np.float32), None),
                        "grid": Output(np.zeros((2, 0)), None),
                        "loss": Output(np.float32(seed), None),
                    }
                )
            writer.finish({"task": "t"})
    return paths


@pytest.mark.parametrize("slab_bytes", [1 << 20, 1], ids=["whole-seeds", "one-value"])
def test_empty_arrays_stack_and_their_means_are_null(tmp_path, monkeypatch, slab_bytes):
    monkeypatch.setattr(slabs, "SLAB_BYTES", slab_bytes)
    paths = empty_trials(tmp_path, [0, 1])
    stacked = trial_stack.stack_trials(paths, [0, 1], tmp_path / "result.nc", {})

    expected = aggregate.combine_trials(
        {label: read_dataset(path) for label, path in paths.items()}, {}
    )
    xr.testing.assert_identical(read_dataset(tmp_path / "result.nc"), expected)
    assert stacked.digest == content_digest(expected)
    assert stacked.verdict.deterministic
    # No values, no mean: null in metrics.json, never NaN (which strict JSON has not).
    assert stacked.means == {"out": None, "grid": None, "loss": 0.5}
    assert stacked.seed_values[1] == {"out_mean": None, "grid_mean": None, "loss": 1.0}
    text = json_text({"mean": stacked.means, "seeds": stacked.seed_values})
    assert json.loads(text)["mean"]["out"] is None
    # The plots read the result through trial_stack's read_slab: an empty variable has no rows.
    with trial_stack.open_trial(tmp_path / "result.nc") as result:
        assert plots.plot_rows(result, "out", [0, 1]) == "torch_seed,trial_id,index,value\n"
