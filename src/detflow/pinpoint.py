"""Pinpoint: name the op where fresh runs of a seed first diverge, and the ops torch flags.

``python -m detflow.pinpoint [--seed N ...] [--runs 2] [--jobs J]`` runs each seed's pre-task,
build and task in ``--runs`` fresh processes (``python -m detflow.trace``), side by side, each
under a trace of every aten op, forward and backward. The traces are compared in lockstep while
the runs write them (``pinpoint_runs``, ``pinpoint_compare``), and every run stops at the first
divergence, so a run that diverges early costs little. The report (``pinpoint_report``) names
the first op whose outputs differ (its position, module, phase, the user's line that led to it)
and whether its inputs were already different (data from outside torch) or not (the op itself).
A further process runs the seed under torch's deterministic mode, warn-only, to list the ops
torch flags as non-deterministic even where the runs agreed.

``--record`` keeps a seed's trace as ``pinpoint-reference/`` for git, and ``--against REV``
compares a run here with the trace commit REV carries: the first op that computes otherwise,
and the setting (CPU capability, threads, MKL_CBWR, versions) that caused it
(``detflow.against``).

Exit 1 when a divergence is found, so scripts can gate on it; 3 when metrics.json says the
trials disagreed but the fresh runs agreed (inconclusive); 0 otherwise. The report goes to
``--out`` as JSON, for ``dvc metrics show``. Without ``--seed``, the seeds are metrics.json's
disagreeing seeds when it was made from these params, else the first seed. This module never
imports torch; its child processes do.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from detflow.cli import DetflowError, run_main, stage_parser
from detflow.params import DEFAULT_PARAMS, Params, check_torch_seeds, load_params
from detflow.pinpoint_metrics import read_verdict, seeds_to_pinpoint
from detflow.pinpoint_origin import outside_origin
from detflow.pinpoint_report import Divergence, PinpointReport, SeedFinding, describe
from detflow.pinpoint_runs import Child, SeedRuns, machine_slots, trace_prefix

DEFAULT_OUT = Path("pinpoint.json")
DEFAULT_METRICS = Path("metrics.json")
STOPPED_NOTE = "not checked: pinpoint stopped at the first divergence (rerun once it is fixed)"


def child_environment(params: Params) -> dict[str, str]:
    """The children's environment: this one, plus portable mode's, set before torch loads."""
    environment = dict(os.environ)
    if params.portable:
        from detflow.cpu import PORTABLE_ENV

        environment.update(PORTABLE_ENV)
    return environment


def trace_command(params_path: Path, seed: int, prefix: Path, alerts: bool) -> list[str]:
    command = [sys.executable, "-m", "detflow.trace", "--params", str(params_path)]
    command += ["--seed", str(seed), "--out", str(prefix)]
    return [*command, "--alerts"] if alerts else command


def results_divergence(traced: list[Child]) -> Divergence | None:
    """Every op agreed: do the task's results (computed outside torch's ops, maybe) agree?"""
    ours = traced[0].summary()["results"]
    for child in traced[1:]:
        theirs = child.summary()["results"]
        differing = tuple(name for name in ours if ours[name] != theirs.get(name))
        if differing:
            return Divergence(kind="results", runs=(1, child.number or 0), results=differing)
    return None


def with_origin(divergence: Divergence, prefixes: tuple[Path, Path]) -> Divergence:
    """Name where data from outside torch came from, when the divergence came from there."""
    if divergence.kind == "outputs" and divergence.inputs_equal:
        return divergence  # the op itself (or its generator): nothing outside torch
    before = None if divergence.kind == "results" else divergence.op_index
    origin = outside_origin(prefixes, divergence.runs, before)
    return dataclasses.replace(divergence, origin=origin) if origin else divergence


def pinpoint_seed(
    params_path: Path,
    params: Params,
    seed: int,
    runs: int,
    folder: Path,
    latent: bool,
    slots: tuple[int, str],
    log: TextIO,
) -> tuple[SeedFinding, dict[str, dict[str, Any]] | None]:
    """Trace ``seed`` in ``runs`` fresh processes (and collect alerts in one more)."""
    prefixes = {number: trace_prefix(folder, seed, number) for number in range(1, runs + 1)}
    traced = [
        Child(
            f"traced run {number} of torch_seed {seed}",
            trace_command(params_path, seed, prefix, alerts=False),
            prefix,
            number=number,
        )
        for number, prefix in prefixes.items()
    ]
    alerts = None
    if latent:
        prefix = trace_prefix(folder, seed, "alerts")
        alerts = Child(
            f"deterministic-mode run of torch_seed {seed}",
            trace_command(params_path, seed, prefix, alerts=True),
            prefix,
        )
    seed_runs = SeedRuns(
        seed, traced, alerts, slots[0], child_environment(params), held=slots[1], log=log
    )
    found = seed_runs.run()
    stopped = found is not None and any(child.killed for child in traced)
    if found is not None:
        difference, number = found
        divergence = describe(difference, (traced[0].files, traced[number - 1].files), (1, number))
        divergence = with_origin(divergence, (traced[0].prefix, traced[number - 1].prefix))
        ops = tuple(
            child.summary()["ops"] if child.finished else child.ops_so_far() for child in traced
        )
    else:
        divergence = results_divergence(traced)
        if divergence is not None:
            number = divergence.runs[1]
            divergence = with_origin(divergence, (traced[0].prefix, traced[number - 1].prefix))
        ops = tuple(int(child.summary()["ops"]) for child in traced)
    size = sum(os.path.getsize(p) for p in (traced[0].files.ops, traced[0].files.strings))
    finding = SeedFinding(seed, ops, size, divergence, stopped=stopped)
    latent_alerts = alerts.summary()["alerts"] if alerts is not None and alerts.finished else None
    return finding, latent_alerts


def pinpoint_seeds(
    params_path: Path,
    seeds: Sequence[int],
    runs: int = 2,
    latent: bool = True,
    disagreed: Sequence[int] = (),
    jobs: int | None = None,
    log: TextIO | None = None,
) -> PinpointReport:
    """Trace each seed in ``runs`` fresh processes and report where they first diverge.

    Imports no torch here (the runs are child processes), so the aggregate stage can call it.

    Parameters
    ----------
    params_path
        The params file the runs read, as the trial stage reads it.
    seeds
        The torch_seeds to trace, one after another; any seed in range, listed or not.
    runs
        Fresh traced processes per seed; at least 2.
    latent
        Also run the first seed under torch's deterministic mode (warn-only), in one more
        process, and list the ops torch flags.
    disagreed
        Seeds whose trials disagreed: where their fresh runs agree, the report is inconclusive.
    jobs
        Processes at once (default: what the machine's cores and memory hold); at least 2.
    log
        Where progress goes (default: stderr).

    Returns
    -------
    PinpointReport
        ``.lines()`` for a log, ``.record()`` for JSON; ``.exit_code`` for the command.

    Examples
    --------
    >>> report = pinpoint_seeds(Path("params.yaml"), [0])  # doctest: +SKIP
    >>> report.diverged, report.record()["op"]  # doctest: +SKIP
    (True, 'aten.uniform_.default')
    """
    params_path = Path(params_path).absolute()
    params = load_params(params_path)
    if isinstance(runs, bool) or not isinstance(runs, int) or runs < 2:
        raise DetflowError(
            f"runs {runs!r} is too few: give at least 2 (pinpoint compares fresh runs)"
        )
    slots = machine_slots()
    if jobs is not None:
        if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 2:
            raise DetflowError(
                f"jobs {jobs!r} is too few: give at least 2 (pinpoint runs two at once)"
            )
        slots = (jobs, f"--jobs {jobs}")
    seeds = check_torch_seeds(list(seeds))
    findings, found, note = [], None, "not checked"
    try:
        scratch = tempfile.TemporaryDirectory(prefix="detflow-pinpoint-")
    except OSError as error:
        raise DetflowError(
            f"pinpoint could not make its folder in {tempfile.gettempdir()}: "
            f"{error.strerror or error}: free space there, or point TMPDIR elsewhere"
        ) from error
    with scratch as folder:
        for number, seed in enumerate(seeds):
            finding, alerts = pinpoint_seed(
                params_path,
                params,
                seed,
                runs,
                Path(folder),
                latent and number == 0,
                slots,
                log or sys.stderr,
            )
            findings.append(finding)
            if number == 0 and latent:
                found, note = alerts, STOPPED_NOTE if alerts is None else note
    return PinpointReport(tuple(findings), runs, found, note, frozenset(disagreed))


def main(argv: Sequence[str] | None = None) -> int:
    parser = stage_parser(__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS, help="params file")
    parser.add_argument(
        "--seed",
        type=int,
        nargs="+",
        action="extend",
        help="torch_seed(s) to trace (default: metrics.json's disagreeing seeds)",
    )
    parser.add_argument("--runs", type=int, default=2, help="fresh runs per seed (at least 2)")
    parser.add_argument(
        "--jobs", type=int, default=None, help="processes at once (default: cores and memory)"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON report to write")
    parser.add_argument(
        "--metrics", type=Path, default=DEFAULT_METRICS, help="where the disagreeing seeds are"
    )
    parser.add_argument(
        "--against",
        metavar="REV",
        help="compare a run here with the reference trace commit REV carries (e.g. HEAD)",
    )
    parser.add_argument(
        "--record",
        action="store_true",
        help="trace one seed here and write pinpoint-reference/ (commit it with the result)",
    )
    args = parser.parse_args(argv)
    if args.against or args.record:
        return against_main(args)

    params = load_params(args.params)
    seeds = args.seed
    if not seeds:
        seeds, why = seeds_to_pinpoint(params, args.metrics)
        print(why, flush=True)
    disagreed = read_verdict(params, args.metrics).disagreeing
    report = pinpoint_seeds(args.params, seeds, args.runs, disagreed=disagreed, jobs=args.jobs)
    print("\n".join(report.lines()))
    write_report(args.out, report.record())
    return report.exit_code


def against_main(args: Any) -> int:
    """``--record`` and ``--against REV`` (``detflow.against``)."""
    from detflow.against import against, record_reference

    if args.seed and len(args.seed) > 1:
        listed = " ".join(map(str, args.seed))
        raise DetflowError(f"--seed {listed}: a reference trace is of one seed: give one")
    if args.record:
        params = load_params(args.params)
        seed = args.seed[0] if args.seed else params.torch_seeds[0]
        files = record_reference(args.params, seed, Path.cwd())
        size = sum(path.stat().st_size for path in (files.ops, files.strings, files.summary))
        print(
            f"pinpoint: recorded torch_seed {seed}'s reference trace in {files.ops.parent}/ "
            f"({size:,} bytes): commit it with the result, then `python -m detflow.pinpoint "
            f"--against HEAD` compares any machine with this one"
        )
        return 0
    report = against(args.against, args.params, args.seed[0] if args.seed else None)
    print("\n".join(report.lines()))
    write_report(args.out, report.record())
    return report.exit_code


def write_report(path: Path, record: dict[str, Any]) -> None:
    """pinpoint.json, strict JSON, through a temporary file."""
    from detflow.artifact import write_text
    from detflow.report import json_text

    write_text(path, json_text(record))


def cli() -> None:
    """The ``detflow-pinpoint`` entry point."""
    run_main(main)


if __name__ == "__main__":
    cli()
