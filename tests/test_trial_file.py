"""The trial file is written as the seeds come: a few seeds in memory, never a partial file."""

from __future__ import annotations

import numpy as np
import pytest

from detflow import trial_file
from detflow.artifact import read_dataset
from detflow.cli import DetflowError
from detflow.outputs import Output


def seed_output(seed: int, size: int) -> dict[str, Output]:
    return {"out": Output(np.full(size, seed, dtype=np.float32), None)}


def test_at_most_a_flush_of_seeds_waits_in_memory(tmp_path):
    seed_values = 1 << 20  # 4 MiB a seed: two seeds fill a flush
    seeds = list(range(7))
    with trial_file.trial_file(tmp_path / "a.nc", "t", seeds) as writer:
        for seed in seeds:
            writer.add(seed_output(seed, seed_values))
            assert writer.pending_bytes < trial_file.FLUSH_BYTES
            assert writer.written >= seed - 1  # everything but the last seed is on disk
        writer.finish({})
    out = read_dataset(tmp_path / "a.nc")["out"]
    assert out.shape == (7, seed_values)
    assert out.values[:, -1].tolist() == seeds


def test_many_small_seeds_flush_by_count(tmp_path):
    seeds = list(range(trial_file.FLUSH_SEEDS * 2 + 5))
    with trial_file.trial_file(tmp_path / "a.nc", "t", seeds) as writer:
        for seed in seeds:
            writer.add(seed_output(seed, 1))
            assert len(writer.pending) < trial_file.FLUSH_SEEDS
        writer.finish({})
    assert read_dataset(tmp_path / "a.nc")["out"].values[:, 0].tolist() == seeds


def test_a_failure_mid_trial_keeps_the_previous_file_and_leaves_no_partial_one(tmp_path):
    path = tmp_path / "a.nc"
    with trial_file.trial_file(path, "t", [0]) as writer:
        writer.add(seed_output(0, 3))
        writer.finish({"run": "first"})
    with pytest.raises(RuntimeError), trial_file.trial_file(path, "t", [0, 1, 2]) as writer:
        writer.add(seed_output(0, 3))
        raise RuntimeError("the task failed on torch_seed 1")
    assert read_dataset(path).attrs["run"] == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.nc"]


def test_a_seed_of_another_shape_is_named(tmp_path):
    with (
        pytest.raises(DetflowError, match="for torch_seed 5 but float32\\[3\\] for torch_seed 4"),
        trial_file.trial_file(tmp_path / "a.nc", "t", [4, 5]) as writer,
    ):
        writer.add(seed_output(4, 3))
        writer.add(seed_output(5, 2))


def test_a_trial_that_ran_too_few_seeds_is_not_written(tmp_path):
    with (
        pytest.raises(DetflowError, match="ran 1 of its 2 seeds"),
        trial_file.trial_file(tmp_path / "a.nc", "t", [0, 1]) as writer,
    ):
        writer.add(seed_output(0, 3))
        writer.finish({})
    assert not (tmp_path / "a.nc").exists()
