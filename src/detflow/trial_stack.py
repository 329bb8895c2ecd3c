"""The trials stacked into one result file slab by slab: compared, digested and written as
they stream (through ``detflow.slabs``), so memory holds a few megabytes of each trial, not
the trials.

The result, the verdict and the digest equal those of stacking the trials in memory
(``aggregate.combine_trials``, then ``compare_trials`` and ``content_digest``): the slabs are
taken in C order of ``(torch_seed, trial_id, ...)``, the order the digest reads values in.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from detflow.artifact import atomic_path, open_netcdf, write_index_coordinate
from detflow.cli import DetflowError, one_line
from detflow.determinism import Disagreement, Verdict
from detflow.report import format_seeds, json_number
from detflow.slabs import (
    Layout,
    VariableFindings,
    create_like,
    data_variables,
    describe,
    mean,
    note_block,
    read_slab,
    row_slabs,
    seed_runs,
    stored_dtype,
    stream_digested,
    stream_parts,
    unnumbered_axis,
    write_values,
)

# What aggregate.py uses: its plots read the result with the kernel's read_slab and
# data_variables, re-exported here.
__all__ = ["Stacked", "data_variables", "open_trial", "read_slab", "stack_trials"]

REBUILD = "run `dvc repro -f` to rebuild it"


# ---------------------------------------------------------------------------- checking


@contextlib.contextmanager
def open_trial(path: Path) -> Iterator[Any]:
    if not path.exists():
        raise DetflowError(f"{path} is missing: run `dvc repro` to produce it")
    try:
        nc = open_netcdf(path, "r")
    except Exception as error:  # netCDF4 raises OSError, ValueError, RuntimeError, ...
        raise DetflowError(
            f"{path} is not a readable netCDF file ({one_line(error)}): "
            f"delete it and run `dvc repro` to rebuild it"
        ) from error
    with nc:
        yield nc


def check_trial(path: Path, nc: Any, seeds: Sequence[int]) -> None:
    """A trial must hold the seeds params.yaml names, in order, along the first axis."""
    if "torch_seed" not in nc.variables or "torch_seed" not in nc.dimensions:
        raise DetflowError(f"{path} has no torch_seed coordinate: {REBUILD}")
    found = np.asarray(nc.variables["torch_seed"][:])
    if found.shape != (len(seeds),) or not np.array_equal(found, np.asarray(seeds)):
        raise DetflowError(
            f"{path} holds torch_seed {format_seeds(int(s) for s in found.ravel())} but "
            f"params.yaml has {format_seeds(seeds)}: params.yaml changed after that trial ran "
            f"(an edit, or another run in this workspace); {REBUILD} once nothing else is running"
        )
    names = data_variables(nc)
    if not names:
        raise DetflowError(f"{path} holds no results: {REBUILD}")
    for name in names:
        dims = list(nc.variables[name].dimensions)
        if dims[:1] != ["torch_seed"]:
            raise DetflowError(f"{path}: '{name}' has dims {dims}, not torch_seed first: {REBUILD}")


def check_same_layout(path: Path, nc: Any, first_path: Path, first: Any) -> None:
    """Every trial must hold the same variables, dims, shapes and dtypes, from the same software."""
    if set(data_variables(nc)) != set(data_variables(first)):
        raise DetflowError(
            f"{path} holds {sorted(data_variables(nc))} but {first_path} holds "
            f"{sorted(data_variables(first))}: {REBUILD}"
        )
    for name in data_variables(first):
        ours, theirs = describe(nc.variables[name]), describe(first.variables[name])
        if ours != theirs:
            raise DetflowError(
                f"{path}: '{name}' is {ours} but {first_path} has {theirs}: {REBUILD}"
            )
    attrs, first_attrs = nc.__dict__, first.__dict__
    changed = sorted(
        k for k in attrs.keys() | first_attrs.keys() if attrs.get(k) != first_attrs.get(k)
    )
    if changed:
        key = changed[0]
        raise DetflowError(
            f"{path} was made with {key}={attrs.get(key)!r} but {first_path} with "
            f"{first_attrs.get(key)!r}: trials must share software and settings; {REBUILD}"
        )


def check_index_coordinates(paths: Sequence[Path], trials: Sequence[Any], dims: Sequence[str]):
    """Each axis of every trial must be numbered 0, 1, 2, ... as the trial stage writes it."""
    for path, trial in zip(paths, trials, strict=True):
        found = unnumbered_axis(trial, dims)
        if found is not None:
            dim, size = found
            raise DetflowError(f"{path}: the {dim} axis is not numbered 0..{size - 1}: {REBUILD}")


# ---------------------------------------------------------------------------- streaming


@dataclass(frozen=True)
class Stacked:
    """The outcome of stacking: what metrics.json and the log report."""

    verdict: Verdict
    digest: str
    means: dict[str, Any]  # each variable's mean over every value (None of no values)
    seed_values: dict[int, dict[str, Any]]  # each seed's first-trial value, or mean if larger
    sizes: dict[str, int]


def note_seeds(findings: VariableFindings, seeds: Sequence[int], block: np.ndarray) -> None:
    """``note_block``, plus each seed's first-trial value or sum and the variable's total,
    for the metrics."""
    note_block(findings, seeds, block)
    for position, seed in enumerate(seeds):
        first = block[position, 0]
        findings.first_trial[seed] = (
            first.reshape(()) if first.size == 1 else float(first.astype(np.float64).sum())
        )
    findings.total += float(block.astype(np.float64).sum())


def stream_variable(
    name: str, trials: Sequence[Any], seeds: Sequence[int], out: Any, digest: Any
) -> VariableFindings:
    """Compare, digest and write one result variable, slab by slab."""
    findings = VariableFindings()
    first = trials[0].variables[name]
    target = out.variables[name]
    rest, itemsize = first.shape[1:], stored_dtype(first).itemsize
    for run, whole in seed_runs(first.shape[0], math.prod(rest) * itemsize, bool(rest)):
        if whole:
            block = np.stack([read_slab(t.variables[name], (run,)) for t in trials], axis=1)
            note_seeds(findings, seeds[run], block)
            write_values(target, (run,), block, digest)
        else:
            stream_large_seed(findings, name, trials, seeds[run.start], run, target, digest)
    return findings


def stream_large_seed(findings, name, trials, seed, run, target, digest) -> None:
    """One seed larger than a slab, in parts (``slabs.stream_parts``), with its sums."""

    def read(copy: int, rows: slice) -> np.ndarray:
        return read_slab(trials[copy].variables[name], (run, rows))

    def keep(copy: int, rows: slice, part: np.ndarray) -> None:
        part_sum = float(part.astype(np.float64).sum())
        findings.total += part_sum
        if copy == 0:
            findings.first_trial[seed] = findings.first_trial.get(seed, 0.0) + part_sum
        write_values(target, (run, copy, rows), part[0], digest)

    rest = trials[0].variables[name].shape[1:]
    rows = row_slabs(rest, stored_dtype(trials[0].variables[name]).itemsize)
    stream_parts(findings, seed, len(trials), rows, read, keep)


def create_result(out: Any, first: Any, trial_ids: Sequence[str], attrs: Mapping) -> list[str]:
    """The result's axes and coordinates, and its (still empty) variables; returns the
    names of the axes after torch_seed and trial_id."""
    out.createDimension("torch_seed", len(first.dimensions["torch_seed"]))
    seeds = out.createVariable("torch_seed", np.int64, ("torch_seed",))
    seeds[:] = first.variables["torch_seed"][:]
    out.createDimension("trial_id", len(trial_ids))
    labels = out.createVariable("trial_id", str, ("trial_id",))
    for position, label in enumerate(trial_ids):
        labels[position] = label
    extra = [dim for dim in first.dimensions if dim != "torch_seed"]
    for dim in extra:
        size = len(first.dimensions[dim])
        out.createDimension(dim, size)
        write_index_coordinate(out, dim, size)
    for name in data_variables(first):
        variable = first.variables[name]
        dims = ("torch_seed", "trial_id", *variable.dimensions[1:])
        create_like(out, name, variable, dims)
    out.setncatts(dict(attrs))
    return extra


def stack_trials(
    paths: Mapping[str, Path],
    seeds: Sequence[int],
    out_path: Path,
    attrs: Mapping[str, Any],
    result_attrs: Callable[[Stacked], Mapping[str, Any]] | None = None,
) -> Stacked:
    """Check the trial files, then write ``(torch_seed, trial_id, ...)`` to ``out_path``.

    ``result_attrs`` gives attrs known only once every value was read (the verdict and the
    digest): they are written before the file is renamed into place, so the result on disk
    always carries its own."""
    trial_ids = list(paths)
    with contextlib.ExitStack() as stack:
        trials = [stack.enter_context(open_trial(path)) for path in paths.values()]
        first_path = paths[trial_ids[0]]
        for path, nc in zip(paths.values(), trials, strict=True):
            check_trial(path, nc, seeds)
            if nc is not trials[0]:
                check_same_layout(path, nc, first_path, trials[0])
        temporary = stack.enter_context(atomic_path(out_path))
        with open_netcdf(temporary, "w") as out:
            extra = create_result(out, trials[0], trial_ids, {**trials[0].__dict__, **attrs})
            check_index_coordinates(list(paths.values()), trials, extra)
            stacked = stream_all(out, trials, trial_ids, seeds, extra)
            if result_attrs is not None:
                out.setncatts(dict(result_attrs(stacked)))
    return stacked


def stream_all(out, trials, trial_ids, seeds, extra) -> Stacked:
    """Every variable in the digest's order (``slabs.stream_digested``); the verdict in the
    file's order."""
    first = trials[0]
    names = data_variables(first)
    layout = Layout(
        variables={
            name: (
                ["torch_seed", "trial_id", *first.variables[name].dimensions[1:]],
                stored_dtype(first.variables[name]),
            )
            for name in names
        },
        axes=["torch_seed", "trial_id", *extra],
        sizes={
            "torch_seed": len(seeds),
            "trial_id": len(trial_ids),
            **{dim: len(first.dimensions[dim]) for dim in extra},
        },
    )

    def stream(name: str, digest: Any) -> VariableFindings:
        return stream_variable(name, trials, seeds, out, digest)

    digest, findings = stream_digested(layout, seeds, trial_ids, stream)
    return summarize(findings, layout, trial_ids, seeds, digest)


def summarize(findings, layout: Layout, trial_ids, seeds, digest) -> Stacked:
    """The verdict in the order an in-memory comparison reports it: variable by variable."""
    max_abs = dict.fromkeys(seeds, 0.0)
    disagreements = []
    seed_values: dict[int, dict[str, Any]] = {seed: {} for seed in seeds}
    means = {}
    for name, found in ((name, findings[name]) for name in layout.variables):
        per_seed = math.prod(layout.sizes[dim] for dim in layout.variables[name][0][2:])
        for seed in seeds:
            max_abs[seed] = max(max_abs[seed], found.max_abs.get(seed, 0.0))
            if seed in found.first_difference:
                trial, index = found.first_difference[seed]
                disagreements.append(
                    Disagreement(seed, name, trial_ids[trial], index, found.max_abs[seed])
                )
            first = found.first_trial[seed]
            if per_seed == 1:
                seed_values[seed][name] = json_number(first)
            else:
                seed_values[seed][f"{name}_mean"] = number(mean(first, per_seed))
        means[name] = number(mean(found.total, per_seed * len(seeds) * len(trial_ids)))
    verdict = Verdict(tuple(seeds), max_abs, tuple(disagreements))
    return Stacked(verdict, digest, means, seed_values, dict(layout.sizes))


def number(value: float | None) -> float | str | None:
    """A mean as metrics.json writes it: None (null) where there were no values to average."""
    return None if value is None else json_number(np.float64(value))
