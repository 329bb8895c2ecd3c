"""`python -m detflow.collect`: merge experiments' results along torch_seed, verifying repeats.

Large sweeps are split into DVC experiments (a queue on one machine, or several machines
sharing a git and a DVC remote). This reads each experiment's ``data/result.nc`` through
DVC's API, without checking any experiment out, and writes one ``data/collected.nc`` with
dims ``(torch_seed, trial_id, ...)``. A seed that ran in more than one experiment is
compared bit for bit, so cross-run and cross-machine determinism is checked, not assumed.
Experiments whose configs or code differ in anything but the seeds are never mixed; what else
differs between them (the machine, the CPU path, versions) is named in the summary and the
report, since the collected file can keep only the attrs they share.

It streams: each result is copied out of DVC into a scratch folder, then merged slab by slab
(``detflow.collect_merge``), so memory holds a few megabytes, never the results.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from detflow.cli import DetflowError, run_main, stage_parser
from detflow.collect_merge import Collected, collect_into, seed_sources
from detflow.determinism import Verdict
from detflow.experiment_attrs import attr_differences, difference_lines
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
    disagreement_records,
    format_seeds,
    verdict_lines,
    verdict_record,
    write_json,
)

RESULT = "data/result.nc"


# ---------------------------------------------------------------------------- reporting


def repeated_seeds(sources: Mapping[int, Sequence[Experiment]]) -> list[int]:
    """The seeds that ran in more than one experiment, and so were cross-checked."""
    return [seed for seed, found in sources.items() if len(found) > 1]


def report(
    collected: Collected,
    sources: Mapping[int, Sequence[Experiment]],
    experiments: Sequence[Experiment],
) -> dict[str, Any]:
    """The JSON report written next to the collected file."""
    return {
        **verdict_record(collected.verdict),
        "n_torch_seeds": collected.sizes["torch_seed"],
        "n_trials": collected.sizes["trial_id"],
        "n_experiments": len(experiments),
        "cross_checked_seeds": repeated_seeds(sources),
        "digest": collected.digest,
        "experiments": {
            experiment.name: {
                "rev": experiment.rev,
                "torch_seed": list(experiment.seeds),
            }
            for experiment in experiments
        },
        "disagreements": disagreement_records(collected.verdict),
        # What the experiments were made with that is not the same in all: dropped from the
        # collected file's attrs, so named here.
        "differences": attr_differences(experiments),
    }


def summary(
    out: Path,
    collected: Collected,
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
    lines.extend(verdict_lines(collected.verdict, agreeing, copies="copies"))
    differing = difference_lines(attr_differences(experiments))
    if differing:
        lines.append("experiments differ in (so left out of the collected file's attrs):")
        lines.extend(f"  {line}" for line in differing)
    return "\n".join(lines)


# ---------------------------------------------------------------------------- command


def group_path(path: Path, key: str) -> Path:
    return path.with_name(f"{path.stem}-{key}{path.suffix}")


def collect_group(experiments: Sequence[Experiment], out: Path, report_path: Path) -> Verdict:
    """Merge one config's experiments, write the result and the report, print the summary."""
    collected = collect_into(experiments, out)
    sources = seed_sources(experiments)
    write_json(report_path, report(collected, sources, experiments))
    print(summary(out, collected, sources, experiments))
    return collected.verdict


@contextlib.contextmanager
def scratch_folder(out: Path) -> Iterator[Path]:
    """A hidden folder beside ``out`` for the results' copies, removed when done: on the
    output's disk (where /tmp may be memory), and named ``.*.tmp``, which DVC ignores."""
    out.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{out.name}."
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=prefix, suffix=".tmp") as folder:
        yield Path(folder)


def strict_default(params_path: Path) -> bool:
    """The workspace's ``strict`` param, if the workspace has a readable params.yaml."""
    try:
        return load_params(params_path).strict
    except DetflowError:
        return False


def main(argv: Sequence[str] | None = None) -> int:
    parser = stage_parser(__doc__.splitlines()[0].split(": ", 1)[1])
    parser.add_argument(
        "revs",
        nargs="*",
        help="experiment names (of any commit) or git revs (default: HEAD's experiments)",
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

    revs = find_revs(args.revs)
    with scratch_folder(args.out) as folder:
        experiments = read_experiments(revs, args.result, folder)
        if args.group_by_config:
            groups = group_by_config(experiments)
            distinguishing = group_differences(groups)
            verdicts = {}
            for key, members in groups.items():
                print(f"config {key} ({distinguishing[key]}):")
                verdicts[key] = collect_group(
                    members, group_path(args.out, key), group_path(report_path, key)
                )
            failed = [key for key, verdict in verdicts.items() if not verdict.deterministic]
        else:
            check_one_config(experiments)
            verdict = collect_group(experiments, args.out, report_path)
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
