from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from detflow.determinism import bitwise_equal, compare_trials, content_digest
from detflow.report import json_number


def result_of(values: np.ndarray, seeds=(0, 1), trials=("a", "b")) -> xr.Dataset:
    dims = ("torch_seed", "trial_id", *[f"out_dim{n}" for n in range(values.ndim - 2)])
    return xr.Dataset(
        {"out": (dims, values)}, coords={"torch_seed": list(seeds), "trial_id": list(trials)}
    )


def test_nan_equals_nan_but_signed_zeros_differ():
    values = np.array([np.nan, 0.0, 1.0])
    reference = np.array([np.nan, -0.0, 1.0])
    assert bitwise_equal(values, reference).tolist() == [True, False, True]


def test_identical_trials_are_deterministic():
    verdict = compare_trials(result_of(np.ones((2, 3, 4), dtype=np.float32), trials="abc"))
    assert verdict.deterministic
    assert verdict.disagreeing_seeds == ()
    assert verdict.max_abs_diff_by_seed == {0: 0.0, 1: 0.0}


def test_a_disagreement_is_located_and_measured():
    values = np.zeros((2, 3, 2, 2), dtype=np.float32)
    values[1, 2, 1, 0] = 0.25
    values[1, 1, 0, 1] = -0.5
    verdict = compare_trials(result_of(values, trials="abc"))
    assert not verdict.deterministic
    assert verdict.disagreeing_seeds == (1,)
    (found,) = verdict.disagreements
    assert (found.torch_seed, found.variable, found.trial_id, found.index) == (
        1,
        "out",
        "b",
        (0, 1),
    )
    assert found.max_abs_diff == 0.5
    assert verdict.max_abs_diff_by_seed == {0: 0.0, 1: 0.5}


def test_nan_against_a_number_is_an_infinite_difference():
    values = np.array([[[1.0], [np.nan]], [[np.nan], [np.nan]]])
    verdict = compare_trials(result_of(values))
    assert verdict.disagreeing_seeds == (0,)
    assert verdict.max_abs_diff_by_seed == {0: np.inf, 1: 0.0}


def test_ints_and_bools_compare_too():
    ints = np.array([[[1], [1]], [[2], [3]]], dtype=np.int64)
    assert compare_trials(result_of(ints)).disagreeing_seeds == (1,)
    flags = np.array([[[True], [False]], [[True], [True]]])
    assert compare_trials(result_of(flags)).disagreeing_seeds == (0,)


def test_digest_covers_values_dims_dtypes_and_coordinates():
    base = result_of(np.arange(4.0).reshape(2, 2, 1))
    assert content_digest(base) == content_digest(base.copy(deep=True))
    changed_value = base.copy(deep=True)
    changed_value["out"][0, 0, 0] = 9.0
    variants = [
        changed_value,
        base.astype(np.float32),
        base.assign_coords(trial_id=["a", "c"]),
        base.assign_coords(torch_seed=[0, 2]),
        base.rename({"out_dim0": "other_dim0"}),
    ]
    digests = {content_digest(base)} | {content_digest(v) for v in variants}
    assert len(digests) == 1 + len(variants)


def test_digest_ignores_attrs_and_string_storage():
    base = result_of(np.arange(4.0).reshape(2, 2, 1))
    as_objects = base.assign_coords(trial_id=np.array(["a", "b"], dtype=object))
    assert content_digest(base) == content_digest(as_objects)
    assert content_digest(base) == content_digest(base.assign_attrs(torch_version="x"))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (np.float32(1.0383025), 1.0383025),
        (np.float64(0.1), 0.1),
        (np.int64(3), 3),
        (np.bool_(True), True),
        (np.float32(np.nan), "nan"),
        (np.float64(-np.inf), "-inf"),
    ],
)
def test_json_number_is_the_shortest_faithful_form(value, expected):
    assert json_number(value) == expected
    assert type(json_number(value)) is type(expected)
