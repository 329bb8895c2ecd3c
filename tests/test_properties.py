"""Property tests of the aggregate: netCDF round trips, and the verdict equals a bitwise check."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from detflow.aggregate import combine_trials, load_trials
from detflow.artifact import read_dataset, write_dataset
from detflow.determinism import compare_trials
from detflow.params import parse_params

DTYPES = [np.float16, np.float32, np.float64, np.int32, np.int64]


@st.composite
def trial_sets(draw):
    """Seeds, labels, and per-trial arrays of one variable; some trials copy the first."""
    seeds = draw(st.lists(st.integers(0, 2**63 - 1), min_size=1, max_size=4, unique=True))
    labels = draw(
        st.lists(
            st.from_regex(r"[a-z][a-z0-9_]{0,3}", fullmatch=True),
            min_size=1,
            max_size=4,
            unique=True,
        )
    )
    dtype = draw(st.sampled_from(DTYPES))
    extra_shape = draw(hnp.array_shapes(min_dims=0, max_dims=2, min_side=1, max_side=3))
    shape = (len(seeds), *extra_shape)
    first = draw(hnp.arrays(dtype, shape))
    arrays = [first]
    for _ in labels[1:]:
        copy_first = draw(st.booleans())
        arrays.append(first.copy() if copy_first else draw(hnp.arrays(dtype, shape)))
    return seeds, labels, arrays


def trial_dataset(seeds, array):
    dims = ("torch_seed", *[f"out_dim{n}" for n in range(array.ndim - 1)])
    return xr.Dataset(
        {"out": (dims, array)}, coords={"torch_seed": np.array(seeds, dtype=np.int64)}
    )


@settings(max_examples=60, deadline=None)
@given(trial_sets())
def test_aggregate_round_trips_and_judges_bitwise(case):
    seeds, labels, arrays = case
    params = parse_params(
        {"torch_seed": seeds, "trial_id": labels, "pre_task": None, "task": "detflow.tasks.forward"}
    )
    with tempfile.TemporaryDirectory() as folder:
        trials_dir = Path(folder) / "trials"
        for label, array in zip(labels, arrays, strict=True):
            write_dataset(trial_dataset(seeds, array), trials_dir / f"{label}.nc")
        combined = combine_trials(load_trials(trials_dir, params), {"task": params.task})
        write_dataset(combined, Path(folder) / "result.nc")
        xr.testing.assert_identical(read_dataset(Path(folder) / "result.nc"), combined)

    assert combined["out"].dtype == arrays[0].dtype
    verdict = compare_trials(combined)
    for position, seed in enumerate(seeds):
        same_bits = all(a[position].tobytes() == arrays[0][position].tobytes() for a in arrays)
        assert (seed not in verdict.disagreeing_seeds) == same_bits
    assert verdict.deterministic == all(a.tobytes() == arrays[0].tobytes() for a in arrays)
