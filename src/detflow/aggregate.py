"""Stage `aggregate`: merge the trials into data/result.nc and state, with evidence, if they agree.

It reads exactly the trials and seeds that params.yaml names, so a file left over from an
earlier `trial_id` list cannot leak into the result. It never imports torch.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from detflow import result_record
from detflow.cli import DetflowError, run_main, stage_parser
from detflow.params import DEFAULT_PARAMS, config_digest, load_params
from detflow.plots import choose_plots, write_plots
from detflow.report import (
    disagreement_records,
    format_seeds,
    verdict_lines,
    verdict_record,
    write_json,
)
from detflow.result_record import EVIDENCE_NAME
from detflow.seed_identity import identical_seed_groups, identical_seeds_line, identical_seeds_text
from detflow.trial_stack import Stacked, open_trial, stack_trials

if TYPE_CHECKING:
    import xarray as xr

PINPOINT_HINT = (
    "to name the op where they first diverge: python -m detflow.pinpoint "
    "(or set pinpoint: true to run it in the pipeline)"
)


def fixed_params_attrs(made_the_numbers: str | None) -> dict[str, str | int | float]:
    """The params that made the numbers become attrs, as in mushin's ``to_xarray``: those the
    trials recorded they bound (``params``, JSON), never params.yaml as it is now."""
    attrs: dict[str, str | int | float] = {}
    for key, value in json.loads(made_the_numbers or "{}").items():
        scalar = isinstance(value, str | int | float) and not isinstance(value, bool)
        attrs[key] = value if scalar else json.dumps(value, sort_keys=True)
    return attrs


def trial_provenance(path: Path) -> dict[str, Any]:
    """A trial's attrs: what produced it (stack_trials checks that every trial shares them)."""
    with open_trial(path) as trial:
        return dict(trial.__dict__)


def combine_trials(trials: dict[str, xr.Dataset], attrs: dict[str, Any]) -> xr.Dataset:
    """Stack trials held in memory along a new ``trial_id`` dim: ``(torch_seed, trial_id,
    <name>_dim<n>...)``, as the stage's ``stack_trials`` writes them (for tests and scripts)."""
    import xarray as xr

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


def compared(stacked: Stacked) -> bool:
    """One trial per seed compares nothing: no verdict either way."""
    return stacked.sizes["trial_id"] >= 2


# metrics.json lists this many means; evidence.json has every variable's.
METRIC_MEANS = 5


def build_reports(
    stacked: Stacked, provenance: dict[str, Any], config: str, identical: list[list[int]]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """metrics.json, the summary DVC's tables list (`dvc metrics show`, `dvc exp show`) and
    `dvc metrics diff` compares; and evidence.json, the per-seed values, the provenance and
    the disagreements behind it, which would drown those tables for a big model."""
    verdict = stacked.verdict
    seeds = {
        str(seed): {
            "deterministic": seed not in verdict.disagreeing_seeds,
            "max_abs_diff": verdict.max_abs_diff_by_seed[seed],
            **stacked.seed_values[seed],
        }
        for seed in verdict.torch_seeds
    }
    record = verdict_record(verdict)
    if not compared(stacked):
        record["deterministic"] = None
        for seed in seeds.values():
            seed["deterministic"] = None
    summary = {
        **record,
        "identical_seeds": identical_seeds_text(identical),
        "max_abs_diff": max(verdict.max_abs_diff_by_seed.values()),
        "n_torch_seeds": stacked.sizes["torch_seed"],
        "n_trials": stacked.sizes["trial_id"],
        "digest": stacked.digest,
        # Which params made these numbers: results are compared across machines only when
        # this matches (see detflow.committed).
        "config_digest": config,
        # A number per variable that does not depend on which seeds ran, so that `dvc metrics
        # diff` between a seed-0 run and a seed-1 run shows the output change.
        "mean": dict(list(stacked.means.items())[:METRIC_MEANS]),
    }
    evidence = {
        "digest": stacked.digest,
        "config_digest": config,
        "mean": stacked.means,
        "seeds": seeds,
        "provenance": provenance,
        "disagreements": disagreement_records(verdict),
        "identical_seeds": identical,
    }
    return summary, evidence


def summary(
    stacked: Stacked, trial_ids: Sequence[str], identical: Sequence[Sequence[int]] = ()
) -> str:
    """What a user should read in the log of `dvc repro`."""
    verdict = stacked.verdict
    same = identical_seeds_line(identical)
    if not compared(stacked):
        lines = [
            f"not compared: one trial ({', '.join(trial_ids)}) ran each seed, so nothing was "
            f"compared and determinism is unknown: list two or more trial ids "
            f"(e.g. trial_id: [a, b]) to test it"
        ]
    else:
        agreeing = (
            f"all {stacked.sizes['trial_id']} trials agree bitwise for torch_seed "
            f"{format_seeds(verdict.torch_seeds)}"
        )
        lines = verdict_lines(verdict, agreeing, copies="trials")
        if not verdict.deterministic:
            lines.append(PINPOINT_HINT)
    if same:
        lines.append(same)
    return "\n".join(lines)


def result_attrs(
    stacked: Stacked, trial_ids: Sequence[str], identical: Sequence[Sequence[int]] = ()
) -> dict[str, Any]:
    """What the result says of itself: its digest and verdict (see detflow.result_record)."""
    verdict = stacked.verdict
    return {
        result_record.DIGEST: stacked.digest,
        result_record.DETERMINISTIC: result_record.deterministic_text(
            verdict.deterministic if compared(stacked) else None
        ),
        result_record.DISAGREEING: ",".join(map(str, verdict.disagreeing_seeds)),
        result_record.VERDICT: summary(stacked, trial_ids, identical),
        result_record.N_TRIALS: stacked.sizes["trial_id"],
    }


def check_strict(stacked: Stacked, metrics_path: Path) -> None:
    verdict = stacked.verdict
    if not compared(stacked):
        raise DetflowError(
            "strict: one trial ran each seed, so nothing was compared: list two or more "
            "trial ids (e.g. trial_id: [a, b]), or set strict: false"
        )
    if not verdict.deterministic:
        seeds = ",".join(map(str, verdict.disagreeing_seeds))
        raise DetflowError(
            f"strict: trials disagree for torch_seed {seeds} (details in {metrics_path}); "
            f"make the task deterministic, or set strict: false to record without failing"
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = stage_parser(__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS, help="params file")
    parser.add_argument("--trials", type=Path, default=Path("data/trials"), help="trials folder")
    parser.add_argument("--out", type=Path, default=Path("data/result.nc"), help="result file")
    parser.add_argument("--metrics", type=Path, default=Path("metrics.json"), help="metrics file")
    parser.add_argument(
        "--evidence", type=Path, default=None, help="evidence file (default: beside metrics)"
    )
    parser.add_argument("--plots", type=Path, default=Path("data/plots"), help="plots folder")
    args = parser.parse_args(argv)

    params = load_params(args.params)
    paths = {trial_id: args.trials / f"{trial_id}.nc" for trial_id in params.trial_ids}
    provenance = trial_provenance(paths[params.trial_ids[0]])
    records = {key: provenance.pop(key, None) for key in result_record.TRIAL_RECORDS}
    # The params that made the trials' numbers, as they recorded them.
    config = provenance.pop("config_digest", None) or "unknown: trials made by an older detflow"
    first_trial = paths[params.trial_ids[0]]
    plotted, held = choose_plots(first_trial, params.values.get("plot_variables"))
    identical = identical_seed_groups(first_trial)
    stacked = stack_trials(
        paths,
        params.torch_seeds,
        args.out,
        fixed_params_attrs(records["params"]),
        result_attrs=lambda done: result_attrs(done, params.trial_ids, identical),
    )
    write_plots(args.out, stacked.verdict, args.plots, plotted)
    metrics, evidence = build_reports(stacked, provenance, config, identical)
    evidence_path = args.evidence or args.metrics.with_name(EVIDENCE_NAME)
    write_json(evidence_path, evidence)
    write_json(args.metrics, metrics)
    print(f"wrote {args.out}, {args.metrics} and {evidence_path}: digest {stacked.digest}")
    if len(plotted) < held:
        print(
            f"plots: {len(plotted)} of {held} variables ({', '.join(plotted)}); "
            f"list the ones to plot in plot_variables"
        )
    if config != config_digest(params):
        print(
            f"note: the trials ran other params than {args.params} holds now; the result "
            f"records what they ran (`dvc repro` reruns them with these)"
        )
    if params.strict:
        if not compared(stacked) or not stacked.verdict.deterministic:
            print(summary(stacked, params.trial_ids))  # the report stage will not run
        check_strict(stacked, args.metrics)
    return 0


if __name__ == "__main__":
    run_main(main)
