"""Pinpoint: name the op where fresh runs of a seed first diverge, and the ops torch flags.

``python -m detflow.pinpoint [--seed N ...] [--runs 2]`` runs each seed's pre-task, build and
task in ``--runs`` fresh processes (``python -m detflow.trace``), each under a trace of every
aten op, forward and backward. The traces stream to a temporary folder and are compared in
lockstep, so a run of a million ops needs little memory. The report names the first op whose
outputs differ (its position, module, phase, the user's line that led to it) and whether its
inputs were already different (data from outside torch) or not (the op itself). A further
process runs the seed under torch's deterministic mode, warn-only, to list the ops torch flags
as non-deterministic even where the runs agreed. Exit 1 when a divergence is found, so scripts
can gate on it; the report goes to ``--out`` as JSON, for ``dvc metrics show``.

Without ``--seed``, the seeds are metrics.json's disagreeing seeds when it was made from these
params, else the first seed. This module never imports torch; its child processes do.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from detflow.cli import DetflowError, run_main, stage_parser
from detflow.params import DEFAULT_PARAMS, Params, check_torch_seeds, load_params
from detflow.trace_format import (
    BACKWARD,
    OUTSIDE_FORWARD,
    RANDOM,
    READ_UNINITIALISED,
    RECORD,
    Difference,
    TraceFiles,
    digests_differ,
    first_difference,
    name_translation,
    read_chunk,
    read_strings,
    trace_files,
)

# Seeds traced when metrics.json lists more disagreeing seeds than this (--seed names others).
AUTO_SEEDS_MAX = 3

DEFAULT_OUT = Path("pinpoint.json")
DEFAULT_METRICS = Path("metrics.json")

# What a difference means ------------------------------------------------------------------


@dataclass(frozen=True)
class Divergence:
    """The first divergence of a seed's runs, in words and names."""

    kind: str  # outputs, path, ended, or results (every op agreed, the task's results did not)
    runs: tuple[int, int]  # the two runs compared, from 1
    op_index: int | None = None
    op: str | None = None
    other_op: str | None = None  # for kind path: the other run's op
    phase: str | None = None
    module: str | None = None
    module_class: str | None = None
    outside_forward: bool = False
    source: str | None = None
    via: str | None = None
    inputs_equal: bool | None = None
    random_op: bool = False
    read_uninitialised: bool = False
    ended_run: int | None = None  # for kind ended: the run whose trace stopped first
    inputs_first: tuple[int, str] | None = None  # an earlier op that read differing inputs
    results: tuple[str, ...] = ()  # for kind results: the task's results that differ

    def cause(self) -> str:
        first, second = self.runs
        if self.kind == "path":
            return (
                f"the runs took different paths: run {first} called {self.op} where run "
                f"{second} called {self.other_op}, with every earlier op's outputs equal, so a "
                f"branch was decided by something outside torch's ops (Python or NumPy "
                f"randomness, the clock, a set's order, the environment)"
            )
        if self.kind == "ended":
            return (
                f"run {self.ended_run} ended after {self.op_index} ops while the other went on "
                f"with {self.op}: the runs took different paths, decided outside torch's ops"
            )
        if self.kind == "results":
            return (
                f"every op agreed, but the task's results {', '.join(self.results)} did not: "
                f"they were computed outside torch's ops (NumPy, Python)"
            )
        if self.read_uninitialised and self.inputs_equal:
            return (
                "it read memory never written (from torch.empty or the like), which differs "
                "between processes: the difference may be that garbage, not a real divergence"
            )
        if not self.inputs_equal:
            earlier = ""
            if self.inputs_first is not None and self.inputs_first[0] < (self.op_index or 0):
                index, op = self.inputs_first
                earlier = f"; it first reached op #{index} {op}, whose outputs still agreed"
            return (
                "its inputs already differed, though every earlier op agreed: the data came "
                "from outside torch (NumPy or Python random draws, an unseeded RNG outside "
                f"torch, a file, the clock), and this is the first op that read it{earlier}"
            )
        if self.random_op:
            return (
                "its inputs were equal: this RNG op drew different numbers, so its generator "
                "(torch's default one or the one passed to it) was not seeded alike in the "
                "runs: seed it in the pre-task, or from torch_seed"
            )
        return (
            "its inputs were equal: the op itself gave different outputs (an unseeded or "
            "non-deterministic op; try torch.use_deterministic_algorithms(True))"
        )

    def headline(self) -> str:
        if self.kind == "results":
            return "first divergence: the task's results, after every op agreed"
        runs = f" (run {self.runs[0]} vs run {self.runs[1]})" if self.runs != (1, 2) else ""
        op = f"{self.op} vs {self.other_op}" if self.kind == "path" else self.op
        module = "outside any module"
        if self.module:
            where = ", outside its forward" if self.outside_forward else ""
            module = f"in module {self.module} ({self.module_class}{where})"
        source = f", from {self.source}" if self.source else ""
        return f"first divergence{runs}: op #{self.op_index} {op} ({self.phase}) {module}{source}"

    def lines(self) -> list[str]:
        lines = [self.headline()]
        if self.via:
            lines.append(f"  called at {self.via}")
        lines.append(f"  {self.cause()}")
        return lines


@dataclass(frozen=True)
class TracedRun:
    """One fresh traced run: its files and summary (``ops``, ``bytes``, ``results``)."""

    files: TraceFiles
    summary: dict[str, Any]

    @property
    def ops(self) -> int:
        return int(self.summary["ops"])


def describe(
    difference: Difference, runs: tuple[TracedRun, TracedRun], numbers: tuple[int, int]
) -> Divergence:
    """Resolve a ``Difference``'s ids through the runs' string tables."""
    strings = [read_strings(run.files.strings) for run in runs]

    def text(which: int, record: np.void | None, kind: str) -> str | None:
        if record is None or not record[kind]:
            return None
        return strings[which][kind][int(record[kind]) - 1]

    # The run that still has an op at the index describes it (for kind ended, the longer one).
    which = 0 if difference.first is not None else 1
    record = difference.first if which == 0 else difference.second
    flags = int(record["flags"])
    inputs_first = None
    if difference.inputs_index is not None:
        inputs_first = (
            difference.inputs_index,
            op_name_at(runs[0], strings[0], difference.inputs_index),
        )
    inputs_equal = None
    if difference.kind == "outputs":
        inputs_equal = not bool(digests_differ(difference.first, difference.second, "inputs"))
        flags |= int(difference.second["flags"])
    return Divergence(
        kind=difference.kind,
        runs=numbers,
        op_index=difference.index,
        op=text(which, record, "name"),
        other_op=text(1, difference.second, "name") if difference.kind == "path" else None,
        phase="backward" if flags & BACKWARD else "forward",
        module=text(which, record, "module"),
        module_class=text(which, record, "module_class"),
        outside_forward=bool(flags & OUTSIDE_FORWARD),
        source=text(which, record, "source"),
        via=text(which, record, "via"),
        inputs_equal=inputs_equal,
        random_op=bool(flags & RANDOM),
        read_uninitialised=bool(flags & READ_UNINITIALISED),
        ended_run=numbers[1 - which] if difference.kind == "ended" else None,
        inputs_first=inputs_first,
    )


def op_name_at(run: TracedRun, strings: dict[str, list[str]], index: int) -> str:
    with open(run.files.ops, "rb") as stream:
        stream.seek(index * RECORD.size)
        record = read_chunk(stream, 1)[0]
    return strings["name"][int(record["name"]) - 1]


def compare_runs(runs: Sequence[TracedRun]) -> Divergence | None:
    """The earliest divergence between the first run and each other run."""
    earliest: tuple[Difference, int] | None = None
    for number in range(1, len(runs)):
        translation = name_translation(
            read_strings(runs[0].files.strings)["name"],
            read_strings(runs[number].files.strings)["name"],
        )
        difference = first_difference(runs[0].files.ops, runs[number].files.ops, translation)
        if difference is not None and (earliest is None or difference.index < earliest[0].index):
            earliest = (difference, number)
    if earliest is not None:
        difference, number = earliest
        return describe(difference, (runs[0], runs[number]), (1, number + 1))
    for number in range(1, len(runs)):
        ours, theirs = runs[0].summary["results"], runs[number].summary["results"]
        differing = tuple(name for name in ours if ours[name] != theirs.get(name))
        if differing:
            return Divergence(kind="results", runs=(1, number + 1), results=differing)
    return None


# The report ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SeedFinding:
    """What the fresh runs of one seed showed."""

    torch_seed: int
    ops: tuple[int, ...]
    trace_bytes: int
    divergence: Divergence | None

    def lines(self) -> list[str]:
        each = f"{self.ops[0]} ops each"
        if len(set(self.ops)) > 1:
            each = f"{', '.join(map(str, self.ops))} ops"
        lines = [f"pinpoint: torch_seed {self.torch_seed}, {len(self.ops)} fresh runs, {each}"]
        if self.divergence is None:
            lines.append(
                "no divergence: every op gave equal outputs in every run, and so did the results"
            )
        else:
            lines += self.divergence.lines()
        return lines


@dataclass(frozen=True)
class PinpointReport:
    """Every seed's finding, and the deterministic-mode alerts of the first seed's run
    (``latent``: op -> {"count", "source"}; None where they were not collected)."""

    findings: tuple[SeedFinding, ...]
    runs: int
    latent: dict[str, dict[str, Any]] | None = field(default=None)

    @property
    def diverged(self) -> bool:
        return any(finding.divergence is not None for finding in self.findings)

    def described(self) -> SeedFinding:
        """The finding the flat record describes: the first that diverged, else the first."""
        return next((f for f in self.findings if f.divergence is not None), self.findings[0])

    def latent_line(self) -> str:
        if self.latent is None:
            return "latent non-deterministic ops: not checked"
        if not self.latent:
            return "latent non-deterministic ops: none flagged by torch"
        ops = ", ".join(
            f"{op} x{entry['count']} (from {entry['source']})" for op, entry in self.latent.items()
        )
        return f"latent non-deterministic ops: {ops}"

    def lines(self) -> list[str]:
        lines = [line for finding in self.findings for line in finding.lines()]
        return [*lines, self.latent_line()]

    def record(self) -> dict[str, Any]:
        """A flat JSON record, for `dvc metrics show`; detail keys are null without a divergence.

        Examples
        --------
        >>> report = PinpointReport((SeedFinding(0, (41, 41), 2300, None),), runs=2, latent={})
        >>> report.record()["diverged"], report.record()["op_index"]
        (False, None)
        """
        finding = self.described()
        divergence = finding.divergence
        detail = {
            "kind": None,
            "op_index": None,
            "op": None,
            "other_op": None,
            "phase": None,
            "module": None,
            "module_class": None,
            "source": None,
            "via": None,
            "inputs_equal": None,
            "cause": None,
        }
        if divergence is not None:
            detail.update(
                {key: getattr(divergence, key) for key in detail if key != "cause"},
                cause=divergence.cause(),
            )
        return {
            "diverged": self.diverged,
            "seeds": ",".join(str(f.torch_seed) for f in self.findings),
            "diverged_seeds": ",".join(
                str(f.torch_seed) for f in self.findings if f.divergence is not None
            ),
            "runs": self.runs,
            "torch_seed": finding.torch_seed,
            "ops_traced": finding.ops[0],
            "trace_bytes": finding.trace_bytes,
            **detail,
            "latent_nondeterministic_ops": {
                op: entry["count"] for op, entry in (self.latent or {}).items()
            },
        }


# Running the fresh processes --------------------------------------------------------------


def child_environment(params: Params) -> dict[str, str]:
    """The children's environment: this one, plus portable mode's, set before torch loads."""
    environment = dict(os.environ)
    if params.portable:
        from detflow.cpu import PORTABLE_ENV

        environment.update(PORTABLE_ENV)
    return environment


def run_children(commands: dict[str, list[str]], folder: Path, environment: dict[str, str]) -> None:
    """Run the commands at once, each in its own fresh process; fail on the first failure."""
    started = {}
    for label, command in commands.items():
        with (
            open(folder / f"{label}.stdout", "wb") as stdout,
            open(folder / f"{label}.stderr", "wb") as stderr,
        ):
            started[label] = subprocess.Popen(
                command, stdout=stdout, stderr=stderr, env=environment
            )
    failed = [label for label, process in started.items() if process.wait() != 0]
    if failed:
        label = failed[0]
        lines = (folder / f"{label}.stderr").read_text(errors="replace").strip().splitlines()
        why = lines[-1].removeprefix("detflow: error: ") if lines else "no message"
        raise DetflowError(f"pinpoint's {label.replace('-', ' ')} failed: {why}")


def trace_command(params_path: Path, seed: int, prefix: Path, alerts: bool) -> list[str]:
    command = [sys.executable, "-m", "detflow.trace", "--params", str(params_path)]
    command += ["--seed", str(seed), "--out", str(prefix)]
    return [*command, "--alerts"] if alerts else command


def pinpoint_seed(
    params_path: Path, params: Params, seed: int, runs: int, folder: Path, latent: bool
) -> tuple[SeedFinding, dict[str, dict[str, Any]] | None]:
    """Trace ``seed`` in ``runs`` fresh processes (and collect alerts in one more)."""
    commands = {
        f"traced-run-{number}-of-torch_seed-{seed}": trace_command(
            params_path, seed, folder / f"seed{seed}-run{number}", alerts=False
        )
        for number in range(1, runs + 1)
    }
    alerts_prefix = folder / f"seed{seed}-alerts"
    if latent:
        commands[f"deterministic-mode-run-of-torch_seed-{seed}"] = trace_command(
            params_path, seed, alerts_prefix, alerts=True
        )
    run_children(commands, folder, child_environment(params))
    traced = []
    for number in range(1, runs + 1):
        files = trace_files(folder / f"seed{seed}-run{number}")
        traced.append(TracedRun(files, json.loads(files.summary.read_text())))
    found = None
    if latent:
        found = json.loads(trace_files(alerts_prefix).summary.read_text())["alerts"]
    finding = SeedFinding(
        torch_seed=seed,
        ops=tuple(run.ops for run in traced),
        trace_bytes=int(traced[0].summary["bytes"]),
        divergence=compare_runs(traced),
    )
    return finding, found


def pinpoint_seeds(
    params_path: Path, seeds: Sequence[int], runs: int = 2, latent: bool = True
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
        Fresh traced processes per seed, started at once; at least 2.
    latent
        Also run the first seed under torch's deterministic mode (warn-only), in one more
        process, and list the ops torch flags.

    Returns
    -------
    PinpointReport
        ``.lines()`` for a log, ``.record()`` for JSON; ``.diverged`` says whether any seed did.

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
    seeds = check_torch_seeds(list(seeds))
    findings, found = [], None
    with tempfile.TemporaryDirectory(prefix="detflow-pinpoint-") as folder:
        for number, seed in enumerate(seeds):
            finding, alerts = pinpoint_seed(
                params_path, params, seed, runs, Path(folder), latent and number == 0
            )
            findings.append(finding)
            found = alerts if number == 0 else found
    return PinpointReport(tuple(findings), runs, found)


# Which seeds, and the command --------------------------------------------------------------


def seeds_to_pinpoint(params: Params, metrics_path: Path) -> tuple[list[int], str]:
    """metrics.json's disagreeing seeds if it was made from ``params``, else the first seed;
    and one line that says which, and why."""
    from detflow.committed import config_digest

    first = params.torch_seeds[0]
    try:
        metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return [first], f"pinpoint: no {metrics_path}: tracing the first seed, torch_seed {first}"
    except (OSError, ValueError):
        why = f"pinpoint: {metrics_path} is unreadable: tracing the first seed, torch_seed {first}"
        return [first], why
    if not isinstance(metrics, dict) or metrics.get("config_digest") != config_digest(params):
        return [first], (
            f"pinpoint: {metrics_path} was made from other params: tracing the first seed, "
            f"torch_seed {first}"
        )
    text = str(metrics.get("disagreeing_seeds") or "")
    try:
        seeds = [int(seed) for seed in text.split(",") if seed.strip()]
    except ValueError:
        seeds = []
    if not seeds:
        return [first], (
            f"pinpoint: {metrics_path} says every trial agrees: tracing torch_seed {first} "
            f"for latent risks"
        )
    if len(seeds) > AUTO_SEEDS_MAX:
        return seeds[:AUTO_SEEDS_MAX], (
            f"pinpoint: {metrics_path} says {len(seeds)} seeds disagree: tracing the first "
            f"{AUTO_SEEDS_MAX} (name others with --seed)"
        )
    return seeds, f"pinpoint: {metrics_path} says torch_seed {text} disagree"


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
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON report to write")
    parser.add_argument(
        "--metrics", type=Path, default=DEFAULT_METRICS, help="where the disagreeing seeds are"
    )
    args = parser.parse_args(argv)

    params = load_params(args.params)
    seeds = args.seed
    if not seeds:
        seeds, why = seeds_to_pinpoint(params, args.metrics)
        print(why)
    report = pinpoint_seeds(args.params, seeds, args.runs)
    print("\n".join(report.lines()))

    from detflow.artifact import write_text

    write_text(args.out, json.dumps(report.record(), indent=2) + "\n")
    return 1 if report.diverged else 0


def cli() -> None:
    """The ``detflow-pinpoint`` entry point."""
    run_main(main)


if __name__ == "__main__":
    cli()
