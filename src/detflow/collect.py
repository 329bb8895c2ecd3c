"""`python -m detflow.collect`: merge experiments' results along torch_seed, verifying repeats.

Large sweeps are split into DVC experiments (a queue on one machine, or several machines
sharing a git and a DVC remote). This reads each experiment's ``data/result.nc`` through
DVC's API, without checking any experiment out, and writes one ``data/collected.nc`` with
dims ``(torch_seed, trial_id, ...)``. A seed that ran in more than one experiment is
compared bit for bit, so cross-run and cross-machine determinism is checked, not assumed.
Experiments whose configs differ in anything but the seeds are never mixed.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from detflow.artifact import write_dataset, write_text
from detflow.cli import DetflowError, run_main, stage_parser
from detflow.determinism import Verdict, compare_trials, content_digest
from detflow.experiments import (
    Experiment,
    check_one_config,
    find_revs,
    group_by_config,
    group_differences,
    read_experiments,
)
from detflow.params import DEFAULT_PARAMS, load_params
from detflow.report import (
    describe,
    disagreement_records,
    format_seeds,
    verdict_lines,
    verdict_record,
)

RESULT = "data/result.nc"
# ---------------------------------------------------------------------------- merging


def check_result(experiment: Experiment) -> None:
    """A result must have the aggregate's layout: ``(torch_seed, trial_id, ...)``."""
    result = experiment.result
    for dim in ("torch_seed", "trial_id"):
        if dim not in result.coords:
            raise DetflowError(
                f"the result of {experiment.label} has no {dim} coordinate: "
                f"it was not made by detflow's aggregate stage; rerun that experiment"
            )
    for name, variable in result.data_vars.items():
        if variable.dims[:2] != ("torch_seed", "trial_id"):
            raise DetflowError(
                f"the result of {experiment.label}: '{name}' has dims {list(variable.dims)}, "
                f"not (torch_seed, trial_id, ...): rerun that experiment"
            )


def layout(result: xr.Dataset) -> dict[str, str]:
    """Each variable's dtype, dims and shape past the seed axis."""
    return {
        str(name): describe(variable.isel(torch_seed=0))
        for name, variable in result.data_vars.items()
    }


def check_same_layout(experiments: Sequence[Experiment]) -> None:
    first = experiments[0]
    for other in experiments[1:]:
        if layout(other.result) != layout(first.result):
            raise DetflowError(
                f"the result of {other.label} holds {layout(other.result)} but that of "
                f"{first.label} holds {layout(first.result)}: rerun both on the same code"
            )


def seed_sources(experiments: Sequence[Experiment]) -> dict[int, list[Experiment]]:
    """Every seed, in order, with the experiments that ran it (first one first)."""
    sources: dict[int, list[Experiment]] = {}
    for experiment in experiments:
        for seed in experiment.seeds:
            sources.setdefault(seed, []).append(experiment)
    return dict(sorted(sources.items()))


def relabelled(experiment: Experiment, seeds: Sequence[int]) -> xr.Dataset:
    """The experiment's trials of ``seeds``, labelled ``<experiment>/<trial_id>``."""
    part = experiment.result.sel(torch_seed=list(seeds))
    labels = [f"{experiment.name}/{trial}" for trial in part["trial_id"].values]
    return part.assign_coords(trial_id=np.array(labels, dtype=str))


def verify(sources: Mapping[int, Sequence[Experiment]]) -> Verdict:
    """Compare every copy of every seed (each trial, in each experiment) with its first.

    Seeds that ran in the same experiments are compared together: their copies stack into
    one ``(torch_seed, trial_id, ...)`` dataset whose trial labels name the experiment, and
    the aggregate's own comparison reports the first that differs.
    """
    by_experiments: dict[tuple[str, ...], list[int]] = {}
    for seed, experiments in sources.items():
        by_experiments.setdefault(tuple(e.rev for e in experiments), []).append(seed)
    max_abs: dict[int, float] = {}
    disagreements = []
    for seeds in by_experiments.values():
        copies = [relabelled(experiment, seeds) for experiment in sources[seeds[0]]]
        stacked = xr.concat(copies, dim="trial_id", join="exact", combine_attrs="drop")
        verdict = compare_trials(stacked)
        max_abs.update(verdict.max_abs_diff_by_seed)
        disagreements.extend(verdict.disagreements)
    disagreements.sort(key=lambda d: d.torch_seed)
    return Verdict(tuple(sources), dict(sorted(max_abs.items())), tuple(disagreements))


def merge(sources: Mapping[int, Sequence[Experiment]]) -> xr.Dataset:
    """One dataset over all seeds, each taken from its first experiment; the others are
    recorded per seed in the ``experiments`` and ``revs`` coordinates."""
    first_of: dict[str, tuple[Experiment, list[int]]] = {}
    for seed, experiments in sources.items():
        first_of.setdefault(experiments[0].rev, (experiments[0], []))[1].append(seed)
    parts = [experiment.result.sel(torch_seed=seeds) for experiment, seeds in first_of.values()]
    merged = xr.concat(
        parts,
        dim="torch_seed",
        data_vars="all",
        coords="different",
        compat="identical",
        join="exact",
        # Provenance that differs between machines is dropped; the per-seed sources remain.
        combine_attrs="drop_conflicts",
    ).sortby("torch_seed")
    names = [",".join(e.name for e in experiments) for experiments in sources.values()]
    revs = [",".join(e.rev for e in experiments) for experiments in sources.values()]
    return merged.assign_coords(
        experiments=("torch_seed", np.array(names, dtype=str)),
        revs=("torch_seed", np.array(revs, dtype=str)),
    )


# ---------------------------------------------------------------------------- reporting


def repeated_seeds(sources: Mapping[int, Sequence[Experiment]]) -> list[int]:
    """The seeds that ran in more than one experiment, and so were cross-checked."""
    return [seed for seed, found in sources.items() if len(found) > 1]


def report(
    collected: xr.Dataset,
    verdict: Verdict,
    sources: Mapping[int, Sequence[Experiment]],
    experiments: Sequence[Experiment],
) -> dict[str, Any]:
    """The JSON report written next to the collected file."""
    return {
        **verdict_record(verdict),
        "n_torch_seeds": collected.sizes["torch_seed"],
        "n_trials": collected.sizes["trial_id"],
        "n_experiments": len(experiments),
        "cross_checked_seeds": repeated_seeds(sources),
        "digest": content_digest(collected.drop_vars(["experiments", "revs"])),
        "experiments": {
            experiment.name: {
                "rev": experiment.rev,
                "torch_seed": experiment.seeds,
            }
            for experiment in experiments
        },
        "disagreements": disagreement_records(verdict),
    }


def summary(
    out: Path,
    collected: xr.Dataset,
    verdict: Verdict,
    sources: Mapping[int, Sequence[Experiment]],
    experiments: Sequence[Experiment],
) -> str:
    sizes = ", ".join(f"{dim}: {size}" for dim, size in collected.sizes.items())
    count = f"{len(experiments)} experiment{'s' if len(experiments) != 1 else ''}"
    lines = [f"collected {count} into {out} ({sizes})"]
    for experiment in experiments:
        lines.append(f"  {experiment.label}: torch_seed {format_seeds(experiment.seeds)}")
    repeated = repeated_seeds(sources)
    if repeated:
        lines.append(f"torch_seed {format_seeds(repeated)} ran in more than one experiment")
    across = " and across experiments" if repeated else ""
    agreeing = f"every trial agrees bitwise within each seed{across}"
    lines.extend(verdict_lines(verdict, agreeing, copies="copies"))
    return "\n".join(lines)


# ---------------------------------------------------------------------------- command


def group_path(path: Path, key: str) -> Path:
    return path.with_name(f"{path.stem}-{key}{path.suffix}")


def collect_group(
    experiments: Sequence[Experiment], out: Path, report_path: Path
) -> tuple[xr.Dataset, Verdict]:
    """Merge one config's experiments, write the result and the report, print the summary."""
    for experiment in experiments:
        check_result(experiment)
    check_same_layout(experiments)
    sources = seed_sources(experiments)
    verdict = verify(sources)
    collected = merge(sources)
    write_dataset(collected, out)
    write_text(
        report_path, json.dumps(report(collected, verdict, sources, experiments), indent=2) + "\n"
    )
    print(summary(out, collected, verdict, sources, experiments))
    return collected, verdict


def strict_default(params_path: Path) -> bool:
    """The workspace's ``strict`` param, if the workspace has a readable params.yaml."""
    try:
        return load_params(params_path).strict
    except DetflowError:
        return False


def main(argv: Sequence[str] | None = None) -> int:
    parser = stage_parser(__doc__.splitlines()[0].split(": ", 1)[1])
    parser.add_argument(
        "revs", nargs="*", help="experiment names or git revs (default: HEAD's experiments)"
    )
    parser.add_argument("--out", type=Path, default=Path("data/collected.nc"))
    parser.add_argument(
        "--report", type=Path, default=None, help="JSON report (default: OUT with .json)"
    )
    parser.add_argument("--result", default=RESULT, help="each experiment's result file")
    parser.add_argument(
        "--group-by-config",
        action="store_true",
        help="write one file per config, OUT-<config key>.nc, instead of refusing mixed configs",
    )
    parser.add_argument(
        "--strict",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="exit 1 if any copies disagree (default: the workspace's strict param)",
    )
    args = parser.parse_args(argv)
    report_path = args.report or args.out.with_suffix(".json")
    strict = args.strict if args.strict is not None else strict_default(DEFAULT_PARAMS)

    experiments = read_experiments(find_revs(args.revs), args.result)
    if args.group_by_config:
        groups = group_by_config(experiments)
        distinguishing = group_differences(groups)
        verdicts = {}
        for key, members in groups.items():
            print(f"config {key} ({distinguishing[key]}):")
            _, verdicts[key] = collect_group(
                members, group_path(args.out, key), group_path(report_path, key)
            )
        failed = [key for key, verdict in verdicts.items() if not verdict.deterministic]
    else:
        check_one_config(experiments)
        _, verdict = collect_group(experiments, args.out, report_path)
        failed = [] if verdict.deterministic else ["all"]
    if strict and failed:
        raise DetflowError(
            f"strict: copies of a seed disagree (details in {report_path}); make the task "
            f"deterministic, or pass --no-strict to record without failing"
        )
    return 0


def cli() -> None:
    """The ``detflow-collect`` entry point."""
    run_main(main)


if __name__ == "__main__":
    cli()
