"""Stage `aggregate`: merge the trials into data/result.nc and state, with evidence, if they agree.

It reads exactly the trials and seeds that params.yaml names, so a file left over from an
earlier `trial_id` list cannot leak into the result. It never imports torch.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from detflow.artifact import read_dataset, write_dataset, write_text
from detflow.cli import DetflowError, run_main, stage_parser
from detflow.committed import compare_with_head, config_digest
from detflow.determinism import Verdict, compare_trials, content_digest
from detflow.params import DEFAULT_PARAMS, Params, load_params
from detflow.report import (
    describe,
    disagreement_records,
    format_seeds,
    json_number,
    verdict_lines,
    verdict_record,
)

REBUILD = "run `dvc repro -f` to rebuild it"

# Plots stay readable and small: disagreeing seeds first, then the others, up to this many,
# and at most this many positions of each variable.
PLOT_MAX_SEEDS = 10
PLOT_MAX_POSITIONS = 500


def check_trial(path: Path, trial: xr.Dataset, seeds: Sequence[int]) -> None:
    """A trial must hold the seeds params.yaml names, in order, along the first axis."""
    if "torch_seed" not in trial.coords:
        raise DetflowError(f"{path} has no torch_seed coordinate: {REBUILD}")
    found = [int(seed) for seed in trial["torch_seed"].values]
    if found != list(seeds):
        raise DetflowError(
            f"{path} holds torch_seed {format_seeds(found)} but params.yaml has "
            f"{format_seeds(seeds)}: params.yaml changed after that trial ran (an edit, or "
            f"another run in this workspace); {REBUILD} once nothing else is running"
        )
    if not trial.data_vars:
        raise DetflowError(f"{path} holds no results: {REBUILD}")
    for name, variable in trial.data_vars.items():
        if variable.dims[:1] != ("torch_seed",):
            raise DetflowError(
                f"{path}: '{name}' has dims {list(variable.dims)}, not torch_seed first: {REBUILD}"
            )


def check_same_layout(path: Path, trial: xr.Dataset, first_path: Path, first: xr.Dataset) -> None:
    """Every trial must hold the same variables, dims, shapes and dtypes, from the same software."""
    if set(trial.data_vars) != set(first.data_vars):
        raise DetflowError(
            f"{path} holds {sorted(trial.data_vars)} but {first_path} holds "
            f"{sorted(first.data_vars)}: {REBUILD}"
        )
    for name in first.data_vars:
        if describe(trial[name]) != describe(first[name]):
            raise DetflowError(
                f"{path}: '{name}' is {describe(trial[name])} but {first_path} has "
                f"{describe(first[name])}: {REBUILD}"
            )
    changed = sorted(
        k
        for k in trial.attrs.keys() | first.attrs.keys()
        if trial.attrs.get(k) != first.attrs.get(k)
    )
    if changed:
        key = changed[0]
        raise DetflowError(
            f"{path} was made with {key}={trial.attrs.get(key)!r} but {first_path} with "
            f"{first.attrs.get(key)!r}: trials must share software and settings; {REBUILD}"
        )


def load_trials(trials_dir: Path, params: Params) -> dict[str, xr.Dataset]:
    """Read and check ``<trials_dir>/<trial_id>.nc`` for each trial in params."""
    trials: dict[str, xr.Dataset] = {}
    first_path = None
    for trial_id in params.trial_ids:
        path = trials_dir / f"{trial_id}.nc"
        trial = read_dataset(path)
        check_trial(path, trial, params.torch_seeds)
        if first_path is None:
            first_path = path
        else:
            check_same_layout(path, trial, first_path, trials[params.trial_ids[0]])
        trials[trial_id] = trial
    return trials


# Not attrs of the result: the swept dims, and how the seeds were run (which never changes
# the numbers, and is not a dependency of this stage).
NOT_ATTRS = ("torch_seed", "trial_id", "launcher")


def fixed_params_attrs(params: Params, bound: str | None = None) -> dict[str, str | int | float]:
    """Params that are not swept become attrs, as in mushin's ``to_xarray``: only those that
    made the numbers, where the trials say which they bound (``bound``, comma-separated)."""
    made_the_numbers = set(bound.split(",")) if bound else set(params.values)
    attrs: dict[str, str | int | float] = {}
    for key, value in params.values.items():
        if key in NOT_ATTRS or key not in made_the_numbers:
            continue
        scalar = isinstance(value, str | int | float) and not isinstance(value, bool)
        attrs[key] = value if scalar else json.dumps(value, sort_keys=True)
    return attrs


def combine_trials(trials: dict[str, xr.Dataset], attrs: dict[str, Any]) -> xr.Dataset:
    """Stack trials along a new ``trial_id`` dim: ``(torch_seed, trial_id, <name>_dim<n>...)``."""
    # A plain numpy str coordinate: a pandas Index would bring pandas' own string dtype.
    trial_ids = xr.DataArray(np.array(list(trials), dtype=str), dims="trial_id", name="trial_id")
    # join="exact" and compat="identical": trials that disagree on coordinates are an
    # error, never outer-joined and padded with NaN.
    combined = xr.concat(
        list(trials.values()),
        dim=trial_ids,
        data_vars="all",
        coords="different",
        compat="identical",
        join="exact",
        combine_attrs="identical",
    )
    combined = combined.transpose("torch_seed", "trial_id", ...)
    combined.attrs.update(attrs)
    return combined


def seed_outputs(result: xr.Dataset, seed: int) -> dict[str, Any]:
    """Each variable of the first trial of ``seed``: its value, or its mean if it is larger."""
    outputs: dict[str, Any] = {}
    for name, variable in result.data_vars.items():
        values = variable.sel(torch_seed=seed).isel(trial_id=0).values
        if values.size == 1:
            outputs[str(name)] = json_number(values.reshape(()))
        else:
            outputs[f"{name}_mean"] = json_number(np.float64(values.astype(np.float64).mean()))
    return outputs


def build_metrics(
    result: xr.Dataset, verdict: Verdict, provenance: dict[str, Any], config: str
) -> dict[str, Any]:
    """metrics.json: the verdict first, then the evidence behind it and where it came from."""
    seeds = {
        str(seed): {
            "deterministic": seed not in verdict.disagreeing_seeds,
            "max_abs_diff": verdict.max_abs_diff_by_seed[seed],
            **seed_outputs(result, seed),
        }
        for seed in verdict.torch_seeds
    }
    max_abs_diff = max(verdict.max_abs_diff_by_seed.values())
    # One number per variable that does not depend on which seeds ran, so that
    # `dvc metrics diff` between a seed-0 run and a seed-1 run shows the output change.
    means = {
        str(name): json_number(np.float64(variable.values.astype(np.float64).mean()))
        for name, variable in result.data_vars.items()
    }
    return {
        **verdict_record(verdict),
        "max_abs_diff": max_abs_diff if np.isfinite(max_abs_diff) else "inf",
        "n_torch_seeds": result.sizes["torch_seed"],
        "n_trials": result.sizes["trial_id"],
        "digest": content_digest(result),
        # Which params made these numbers: results are compared across machines only when
        # this matches (see detflow.committed).
        "config_digest": config,
        "mean": means,
        "seeds": seeds,
        "provenance": provenance,
        "disagreements": disagreement_records(verdict),
    }


def plot_seeds(verdict: Verdict) -> list[int]:
    agreeing = [seed for seed in verdict.torch_seeds if seed not in verdict.disagreeing_seeds]
    return [*verdict.disagreeing_seeds, *agreeing][:PLOT_MAX_SEEDS]


def plot_rows(variable: xr.DataArray, seeds: Sequence[int]) -> str:
    """Long-format CSV of one variable: torch_seed, trial_id, index, value.

    ``index`` is the position within the variable (the epoch, for a loss curve), so every
    trial of a seed draws one line: lines that do not overlap are trials that disagree.
    """
    lines = ["torch_seed,trial_id,index,value"]
    for seed in seeds:
        for trial_id in variable["trial_id"].values:
            values = variable.sel(torch_seed=seed, trial_id=trial_id).values.ravel()
            if values.dtype == np.bool_:
                values = values.astype(np.uint8)  # a plot's y axis is numeric: 1 and 0
            for index, value in enumerate(values[:PLOT_MAX_POSITIONS]):
                lines.append(f"{seed},{trial_id},{index},{json_number(value)}")
    return "\n".join(lines) + "\n"


def write_plots(result: xr.Dataset, verdict: Verdict, plots_dir: Path) -> None:
    """One CSV per variable, for `dvc plots show` with the `trials` template."""
    seeds = plot_seeds(verdict)
    for name, variable in result.data_vars.items():
        write_text(plots_dir / f"{name}.csv", plot_rows(variable, seeds))


def summary(result: xr.Dataset, verdict: Verdict) -> str:
    """What a user should read in the log of `dvc repro`."""
    agreeing = (
        f"all {result.sizes['trial_id']} trials agree bitwise for torch_seed "
        f"{format_seeds(verdict.torch_seeds)}"
    )
    return "\n".join(verdict_lines(verdict, agreeing, copies="trials"))


def main(argv: Sequence[str] | None = None) -> int:
    parser = stage_parser(__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS, help="params file")
    parser.add_argument("--trials", type=Path, default=Path("data/trials"), help="trials folder")
    parser.add_argument("--out", type=Path, default=Path("data/result.nc"), help="result file")
    parser.add_argument("--metrics", type=Path, default=Path("metrics.json"), help="metrics file")
    parser.add_argument("--plots", type=Path, default=Path("data/plots"), help="plots folder")
    args = parser.parse_args(argv)

    params = load_params(args.params)
    trials = load_trials(args.trials, params)
    # A trial's attrs are its provenance; load_trials has checked that all trials share them.
    provenance = dict(trials[params.trial_ids[0]].attrs)
    bound = provenance.pop("bound_params", None)
    result = combine_trials(trials, fixed_params_attrs(params, bound))
    verdict = compare_trials(result)
    metrics = build_metrics(result, verdict, provenance, config_digest(params))
    write_dataset(result, args.out)
    write_text(args.metrics, json.dumps(metrics, indent=2) + "\n")
    write_plots(result, verdict, args.plots)
    print(summary(result, verdict))
    print(compare_with_head(metrics, args.metrics))
    if params.strict and not verdict.deterministic:
        seeds = ",".join(map(str, verdict.disagreeing_seeds))
        raise DetflowError(
            f"strict: trials disagree for torch_seed {seeds} (details in {args.metrics}); "
            f"make the task deterministic, or set strict: false to record without failing"
        )
    return 0


if __name__ == "__main__":
    run_main(main)
