"""What pinpoint found, in words: the first divergence of a seed's runs, each seed's finding,
and the report (its lines, its JSON record and its exit code). No torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from detflow.trace_format import (
    BACKWARD,
    OUTSIDE_FORWARD,
    RANDOM,
    READ_UNINITIALISED,
    RECORD,
    Difference,
    TraceFiles,
    digests_differ,
    read_chunk,
    read_strings,
)

# Exit codes: a divergence is a finding scripts can gate on; an inconclusive run is neither.
EXIT_AGREED, EXIT_DIVERGED, EXIT_INCONCLUSIVE = 0, 1, 3

OUTSIDE_TORCH = (
    "the data came from outside torch (NumPy or Python random draws, an unseeded RNG outside "
    "torch, a file, the clock, a set's order)"
)


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
    origin: str | None = None  # where data from outside torch came from, when known

    def outside(self) -> str:
        return self.origin or OUTSIDE_TORCH

    def cause(self) -> str:
        first, second = self.runs
        if self.kind == "path":
            return (
                f"the runs took different paths: run {first} called {self.op} where run "
                f"{second} called {self.other_op}, with every earlier op's outputs equal, so a "
                f"branch was decided outside torch's ops: {self.outside()}"
            )
        if self.kind == "ended":
            return (
                f"run {self.ended_run} ended after {self.op_index} ops while the other went on "
                f"with {self.op}: the runs took different paths, decided outside torch's ops: "
                f"{self.outside()}"
            )
        if self.kind == "results":
            return (
                f"every op agreed, but the task's results {', '.join(self.results)} did not: "
                f"they were computed outside torch's ops: {self.outside()}"
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
                f"its inputs already differed, though every earlier op agreed: {self.outside()}; "
                f"this is the first op that read it{earlier}"
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


def op_name_at(files: TraceFiles, strings: dict[str, list[str]], index: int) -> str:
    with open(files.ops, "rb") as stream:
        stream.seek(index * RECORD.size)
        record = read_chunk(stream, 1)[0]
    return strings["name"][int(record["name"]) - 1]


def describe(
    difference: Difference, files: tuple[TraceFiles, TraceFiles], numbers: tuple[int, int]
) -> Divergence:
    """Resolve a ``Difference``'s ids through the two runs' string tables."""
    strings = [read_strings(run.strings) for run in files]

    def text(which: int, record: np.void | None, kind: str) -> str | None:
        if record is None or not record[kind]:
            return None
        table = strings[which].get(kind, [])
        number = int(record[kind]) - 1
        return table[number] if number < len(table) else None

    # The run that still has an op at the index describes it (for kind ended, the longer one).
    which = 0 if difference.first is not None else 1
    record = difference.first if which == 0 else difference.second
    flags = int(record["flags"])
    inputs_first = None
    if difference.inputs_index is not None:
        inputs_first = (
            difference.inputs_index,
            op_name_at(files[0], strings[0], difference.inputs_index),
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


@dataclass(frozen=True)
class SeedFinding:
    """What the fresh runs of one seed showed. ``stopped``: pinpoint stopped the runs at the
    first divergence, so ``ops`` are the ops each had traced by then."""

    torch_seed: int
    ops: tuple[int, ...]
    trace_bytes: int
    divergence: Divergence | None
    stopped: bool = False

    def lines(self) -> list[str]:
        counts = ", ".join(map(str, self.ops))
        if self.stopped:
            each = f"stopped at the first divergence, after {counts} ops"
        elif len(set(self.ops)) > 1:
            each = f"{counts} ops"
        else:
            each = f"{self.ops[0]} ops each"
        lines = [f"pinpoint: torch_seed {self.torch_seed}, {len(self.ops)} fresh runs, {each}"]
        if self.divergence is None:
            lines.append(
                "no divergence: every op gave equal outputs in every run, and so did the results"
            )
        else:
            lines += self.divergence.lines()
        return lines


def inconclusive_lines(seeds: list[int]) -> list[str]:
    """Why runs of one seed can agree where trials disagreed, and what to try next."""
    listed = ",".join(map(str, seeds))
    return [
        f"inconclusive: the trials disagreed for torch_seed {listed} (metrics.json), but the "
        f"disagreement did not reproduce in fresh runs of one seed. What differs between "
        f"them and the trials:",
        "  - seeds run one after another in one process: a trial runs every seed in order, so "
        "state one seed leaves to the next (an RNG the pre-task does not reseed, a cache, a "
        "global) reaches the later seeds; here each seed runs alone",
        "  - files the task wrote and read back: a file (a cache, a checkpoint) one trial wrote "
        "in the working folder was there for the next trial to read, while every run here "
        "found the same files",
        "  - the clock: the trials ran at other times (a seed or a branch taken from "
        "time.time(), a timestamp in the data)",
        "  - cross-process order: trials are separate processes, perhaps run at once, so any "
        "order between processes (workers, a launcher's jobs, files they share) differed",
        "next step: look in the task for state that outlives a seed or a trial (files it "
        "writes, caches, RNGs outside torch); delete such files and run `dvc repro -f`, or "
        "run the disagreeing seed alone (`dvc exp run -S torch_seed=N`): trials that then "
        "agree point at state left by the seeds before it",
    ]


@dataclass(frozen=True)
class PinpointReport:
    """Every seed's finding, and the deterministic-mode alerts of the first seed's run
    (``latent``: op -> {"count", "source"}; None where they were not collected, for the reason
    ``latent_note`` gives). ``disagreed``: the seeds whose trials disagreed (metrics.json)."""

    findings: tuple[SeedFinding, ...]
    runs: int
    latent: dict[str, dict[str, Any]] | None = field(default=None)
    latent_note: str = "not checked"
    disagreed: frozenset[int] = frozenset()

    @property
    def diverged(self) -> bool | None:
        """True when runs diverged; None (inconclusive) when they agreed on a seed whose
        trials disagreed; else False."""
        if any(finding.divergence is not None for finding in self.findings):
            return True
        return None if self.unreproduced() else False

    def unreproduced(self) -> list[int]:
        return [f.torch_seed for f in self.findings if f.torch_seed in self.disagreed]

    @property
    def exit_code(self) -> int:
        return {True: EXIT_DIVERGED, None: EXIT_INCONCLUSIVE, False: EXIT_AGREED}[self.diverged]

    def described(self) -> SeedFinding:
        """The finding the flat record describes: the first that diverged, else the first."""
        return next((f for f in self.findings if f.divergence is not None), self.findings[0])

    def latent_line(self) -> str:
        if self.latent is None:
            return f"latent non-deterministic ops: {self.latent_note}"
        if not self.latent:
            return "latent non-deterministic ops: none flagged by torch"
        ops = ", ".join(
            f"{op} x{entry['count']} (from {entry['source']})" for op, entry in self.latent.items()
        )
        return f"latent non-deterministic ops: {ops}"

    def lines(self) -> list[str]:
        lines = [line for finding in self.findings for line in finding.lines()]
        if self.diverged is None:
            lines += inconclusive_lines(self.unreproduced())
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
        detail = dict.fromkeys(
            (
                "kind",
                "op_index",
                "op",
                "other_op",
                "phase",
                "module",
                "module_class",
                "source",
                "via",
                "inputs_equal",
                "origin",
                "cause",
            )
        )
        if divergence is not None:
            detail.update(
                {key: getattr(divergence, key) for key in detail if key != "cause"},
                cause=divergence.cause(),
            )
        return {
            "diverged": self.diverged,
            "inconclusive": self.diverged is None,
            "seeds": ",".join(str(f.torch_seed) for f in self.findings),
            "diverged_seeds": ",".join(
                str(f.torch_seed) for f in self.findings if f.divergence is not None
            ),
            "runs": self.runs,
            "torch_seed": finding.torch_seed,
            "ops_traced": finding.ops[0],
            "stopped_at_divergence": finding.stopped,
            "trace_bytes": finding.trace_bytes,
            **detail,
            "latent_nondeterministic_ops": {
                op: entry["count"] for op, entry in (self.latent or {}).items()
            },
        }
