"""Property tests: every storable dtype goes through trial file, aggregate, plots and collect
bit for bit, and the verdict equals a direct bitwise check."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import tempfile
from pathlib import Path

import numpy as np
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from detflow import aggregate, plots
from detflow.artifact import read_dataset
from detflow.collect_merge import collect_into
from detflow.determinism import compare_trials, content_digest
from detflow.experiments import local_experiment
from detflow.outputs import Output
from detflow.params import parse_params
from detflow.result_record import VERDICT_KEYS
from detflow.trial_file import trial_file

# Every dtype the trial stage accepts (trial.STORABLE_KINDS with netCDF4's widths).
DTYPES = [
    np.bool_,
    *(np.dtype(f"{kind}{nbytes}") for kind in "iu" for nbytes in (1, 2, 4, 8)),
    np.float16,
    np.float32,
    np.float64,
]


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


def write_trial_file(path: Path, seeds, array) -> None:
    """As the trial stage writes it (netCDF4 alone, seed by seed, through trial_file)."""
    with trial_file(path, "t", seeds) as writer:
        for values in array:
            writer.add({"out": Output(values, None)})
        writer.finish({"task": "t"})


def plotted_values(plot: Path, seed: int, label: str) -> list[str]:
    rows = csv.DictReader(io.StringIO(plot.read_text()))
    return [
        row["value"] for row in rows if (row["torch_seed"], row["trial_id"]) == (str(seed), label)
    ]


def as_plotted(array: np.ndarray) -> list[str]:
    """The CSV text of each value: bools as 1 and 0, numbers in their shortest exact form."""
    from detflow.report import json_number

    values = array.ravel()
    values = values.astype(np.uint8) if values.dtype == np.bool_ else values
    return [str(json_number(value)) for value in values[: plots.PLOT_MAX_POSITIONS]]


@settings(max_examples=80, deadline=None)
@given(trial_sets())
def test_every_dtype_goes_through_the_pipeline_bit_for_bit(case):
    seeds, labels, arrays = case
    values = {"torch_seed": seeds, "trial_id": labels, "pre_task": None, "task": "m.f"}
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "params.yaml").write_text(json.dumps(values))  # JSON is YAML
        for label, array in zip(labels, arrays, strict=True):
            write_trial_file(root / "trials" / f"{label}.nc", seeds, array)
        argv = ["--params", str(root / "params.yaml"), "--trials", str(root / "trials")]
        argv += ["--out", str(root / "result.nc"), "--metrics", str(root / "metrics.json")]
        with contextlib.redirect_stdout(io.StringIO()):
            aggregate.main([*argv, "--plots", str(root / "plots")])
        result = read_dataset(root / "result.nc")
        metrics = json.loads((root / "metrics.json").read_text())

        # Aggregate: each trial's values, dtype and bits, in (torch_seed, trial_id, ...).
        assert result["out"].dtype == arrays[0].dtype
        for position, array in enumerate(arrays):
            stored = result["out"].isel(trial_id=position).values
            assert stored.tobytes() == array.tobytes()
        # Plots: the values of every plotted seed and trial, as written.
        for position, seed in enumerate(seeds[: plots.PLOT_MAX_SEEDS]):
            for label, array in zip(labels, arrays, strict=True):
                got = plotted_values(root / "plots" / "out.csv", seed, label)
                assert got == as_plotted(array[position])
        # Collect: the result streamed into the collected file, which reads back as the
        # result sorted by seed, with each seed's source.
        params = parse_params(values)
        experiment = local_experiment("e", "0" * 40, params, root / "result.nc", "result.nc")
        collected = collect_into([experiment], root / "collected.nc")
        reread = read_dataset(root / "collected.nc")
        order = np.argsort(seeds)
        # The result's verdict attrs describe the result, not the collected file.
        expected = result.drop_attrs(deep=False).assign_attrs(
            {k: v for k, v in result.attrs.items() if k not in VERDICT_KEYS}
        )
        expected = expected.isel(torch_seed=order).assign_coords(
            experiments=("torch_seed", np.array(["e"] * len(seeds))),
            revs=("torch_seed", np.array(["0" * 40] * len(seeds))),
        )
        xr.testing.assert_identical(reread, expected)
        assert reread["out"].values.tobytes() == result["out"].values[order].tobytes()
        assert collected.digest == content_digest(expected.drop_vars(["experiments", "revs"]))
        # One trial compares nothing: the aggregate says so (null), collect compares copies.
        compared = len(labels) >= 2
        assert metrics["deterministic"] == (collected.verdict.deterministic if compared else None)

    verdict = compare_trials(result)
    for position, seed in enumerate(seeds):
        same_bits = all(a[position].tobytes() == arrays[0][position].tobytes() for a in arrays)
        assert (seed not in verdict.disagreeing_seeds) == same_bits
    assert verdict.deterministic == all(a.tobytes() == arrays[0].tobytes() for a in arrays)
    assert metrics["deterministic"] == (verdict.deterministic if len(labels) >= 2 else None)
