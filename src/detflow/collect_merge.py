"""Experiments' results merged along torch_seed into one file, slab by slab (for collect).

Each result is read slab by slab, so memory holds a few megabytes of one variable's copies of
a seed, never the results. The file, the verdict and the digest are those of merging the
results in memory with xarray: each seed taken from the first experiment that ran it, the
others named per seed in the ``experiments`` and ``revs`` coordinates, which the digest leaves
out.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from detflow.artifact import atomic_path, open_netcdf, write_index_coordinate
from detflow.cli import DetflowError
from detflow.determinism import Disagreement, Verdict
from detflow.experiment_attrs import shared_attrs
from detflow.experiments import Experiment
from detflow.slabs import (
    Layout,
    VariableFindings,
    create_like,
    data_variables,
    describe,
    note_block,
    read_rows,
    read_slab,
    row_slabs,
    seed_runs,
    stored_dtype,
    stream_digested,
    stream_parts,
    unnumbered_axis,
    write_values,
)

# Where each seed came from, per seed: in the file, left out of the digest.
SOURCE_COORDINATES = ("experiments", "revs")
RERUN = "it was not made by detflow's aggregate stage; rerun that experiment"


@dataclass(frozen=True)
class Opened:
    """An experiment's result file, open, with the row of each of its seeds."""

    experiment: Experiment
    nc: Any
    rows: Mapping[int, int]
    trial_ids: tuple[str, ...]


@dataclass(frozen=True)
class Collected:
    """What the report and the summary say of the written file."""

    verdict: Verdict
    digest: str  # content_digest of the file as xarray reads it, less the source coordinates
    sizes: dict[str, int]


# ---------------------------------------------------------------------------- checking


def check_result(experiment: Experiment, nc: Any) -> None:
    """A result must have the aggregate's layout: ``(torch_seed, trial_id, ...)``."""
    for dim in ("torch_seed", "trial_id"):
        if dim not in nc.variables or nc.variables[dim].dimensions != (dim,):
            raise DetflowError(f"the result of {experiment.label} has no {dim} coordinate: {RERUN}")
    for name in data_variables(nc):
        dims = list(nc.variables[name].dimensions)
        if dims[:2] != ["torch_seed", "trial_id"]:
            raise DetflowError(
                f"the result of {experiment.label}: '{name}' has dims {dims}, "
                f"not (torch_seed, trial_id, ...): rerun that experiment"
            )


def layout(nc: Any) -> dict[str, str]:
    """Each variable's dtype, dims and shape past the seed axis, as ``report.describe``
    says them of the variable that xarray reads."""
    return {name: describe(nc.variables[name], skip=1) for name in data_variables(nc)}


def check_same_layout(results: Sequence[Opened]) -> None:
    first = results[0]
    for other in results[1:]:
        if layout(other.nc) != layout(first.nc):
            raise DetflowError(
                f"the result of {other.experiment.label} holds {layout(other.nc)} but that of "
                f"{first.experiment.label} holds {layout(first.nc)}: rerun both on the same code"
            )


def check_same_trials(parts: Sequence[Opened]) -> None:
    """The experiments that give seeds to the file must share its trial_id labels."""
    first = parts[0]
    for other in parts[1:]:
        if other.trial_ids != first.trial_ids:
            raise DetflowError(
                f"the result of {other.experiment.label} has trial_id {list(other.trial_ids)} "
                f"but that of {first.experiment.label} has {list(first.trial_ids)}: collect "
                f"experiments that ran the same trials"
            )


def extra_dims(nc: Any) -> list[str]:
    """The axes past ``(torch_seed, trial_id)``, in the order xarray finds them (each
    variable's dims in turn, variables in file order)."""
    found: dict[str, None] = {}
    for name in data_variables(nc):
        found.update(dict.fromkeys(nc.variables[name].dimensions[2:]))
    return list(found)


def check_index_axes(result: Opened, dims: Sequence[str]) -> None:
    """Each axis past the trials must be numbered 0, 1, 2, ..., as the aggregate numbers it:
    the copies of a seed are then aligned, and the file's axes can be written as such."""
    found = unnumbered_axis(result.nc, dims)
    if found is not None:
        dim, size = found
        raise DetflowError(
            f"the result of {result.experiment.label}: its {dim} axis is not "
            f"numbered 0..{size - 1}: {RERUN}"
        )


# ---------------------------------------------------------------------------- planning


def seed_sources(experiments: Sequence[Experiment]) -> dict[int, list[Experiment]]:
    """Every seed, in order, with the experiments that ran it (first one first)."""
    sources: dict[int, list[Experiment]] = {}
    for experiment in experiments:
        for seed in experiment.seeds:
            sources.setdefault(seed, []).append(experiment)
    return dict(sorted(sources.items()))


def first_sources(sources: Mapping[int, Sequence[Experiment]]) -> list[Experiment]:
    """The experiments that give seeds to the file (each seed's first), in seed order."""
    parts: dict[str, Experiment] = {}
    for experiments in sources.values():
        parts.setdefault(experiments[0].rev, experiments[0])
    return list(parts.values())


def same_sources(sources: Mapping[int, Sequence[Experiment]]) -> Iterator[list[int]]:
    """The seeds in order, in runs of consecutive seeds that ran in the same experiments
    (so their copies stack into one block)."""
    run: list[int] = []
    for seed, experiments in sources.items():
        if run and [e.rev for e in sources[run[0]]] != [e.rev for e in experiments]:
            yield run
            run = []
        run.append(seed)
    if run:
        yield run


# ---------------------------------------------------------------------------- streaming


def stream_block(
    name: str, seeds: Sequence[int], copies: Sequence[Opened], out_row: int, out, digest
) -> VariableFindings:
    """Whole seeds that ran in the same experiments: every copy read at once, the first
    experiment's trials written and digested."""
    block = np.concatenate(
        [read_rows(c.nc.variables[name], [c.rows[seed] for seed in seeds]) for c in copies],
        axis=1,
    )
    findings = VariableFindings()
    note_block(findings, seeds, block)
    rows = slice(out_row, out_row + len(seeds))
    write_values(out.variables[name], (rows,), block[:, : len(copies[0].trial_ids)], digest)
    return findings


def stream_large_seed(
    name: str, seed: int, copies: Sequence[Opened], out_row: int, out, digest
) -> VariableFindings:
    """One seed whose copies are too large for a block, in parts (``slabs.stream_parts``):
    its copies are every trial of every experiment that ran it; the first experiment's are
    written and digested."""
    labelled = [(copy, trial) for copy in copies for trial in range(len(copy.trial_ids))]
    variable = copies[0].nc.variables[name]
    findings = VariableFindings()

    def read(number: int, rows: slice) -> np.ndarray:
        copy, trial = labelled[number]
        seed_row = copy.rows[seed]
        return read_slab(copy.nc.variables[name], (slice(seed_row, seed_row + 1), trial, rows))

    def keep(number: int, rows: slice, part: np.ndarray) -> None:
        if number < len(copies[0].trial_ids):
            write_values(out.variables[name], (out_row, number, rows), part[0], digest)

    rows = row_slabs(variable.shape[2:], stored_dtype(variable).itemsize)
    stream_parts(findings, seed, len(labelled), rows, read, keep)
    return findings


def stream_variable(
    name: str, sources: Mapping[int, Sequence[Experiment]], opened, out, digest
) -> VariableFindings:
    """Compare, digest and write one variable over every seed, in the file's order."""
    findings = VariableFindings()
    out_row = 0
    for run in same_sources(sources):
        copies = [opened[experiment.rev] for experiment in sources[run[0]]]
        variable = copies[0].nc.variables[name]
        rest = variable.shape[2:]
        n_copies = sum(len(copy.trial_ids) for copy in copies)
        seed_bytes = math.prod(rest) * stored_dtype(variable).itemsize * n_copies
        for positions, whole in seed_runs(len(run), seed_bytes, bool(rest)):
            row = out_row + positions.start
            if whole:
                found = stream_block(name, run[positions], copies, row, out, digest)
            else:
                found = stream_large_seed(name, run[positions.start], copies, row, out, digest)
            findings.merge(found)
        out_row += len(run)
    return findings


# ---------------------------------------------------------------------------- the file


def source_names(sources: Mapping[int, Sequence[Experiment]]) -> dict[str, np.ndarray]:
    """The ``experiments`` and ``revs`` coordinates: each seed's sources, comma-separated."""
    return {
        "experiments": np.array([",".join(e.name for e in found) for found in sources.values()]),
        "revs": np.array([",".join(e.rev for e in found) for found in sources.values()]),
    }


def create_collected(
    out: Any, first: Opened, sources: Mapping[int, Sequence[Experiment]], attrs: Mapping
) -> list[str]:
    """The file's axes, coordinates and (still empty) variables, as xarray writes a merged
    dataset: variables first, then the axes' coordinates, then the seeds' sources. Returns
    the axes past ``(torch_seed, trial_id)`` that have a coordinate."""
    nc = first.nc
    out.createDimension("torch_seed", len(sources))
    out.createDimension("trial_id", len(first.trial_ids))
    extra = extra_dims(nc)
    for dim in extra:
        out.createDimension(dim, len(nc.dimensions[dim]))
    for name in data_variables(nc):
        variable = nc.variables[name]
        # Without the coordinates attr xarray would read the sources as variables.
        create_like(
            out, name, variable, variable.dimensions, coordinates=" ".join(SOURCE_COORDINATES)
        )
    out.createVariable("torch_seed", np.int64, ("torch_seed",))[:] = np.array(list(sources))
    out.createVariable("trial_id", str, ("trial_id",))[:] = np.array(first.trial_ids, object)
    indexed = [dim for dim in extra if dim in nc.variables]
    for dim in indexed:
        write_index_coordinate(out, dim, len(nc.dimensions[dim]))
    for name, values in source_names(sources).items():
        out.createVariable(name, str, ("torch_seed",))[:] = values.astype(object)
    out.setncatts(dict(attrs))
    return indexed


def stream_all(out: Any, first: Opened, sources, opened, indexed) -> tuple[str, dict]:
    """Every variable in the digest's order (``slabs.stream_digested``); returns the digest
    and each data variable's findings."""
    nc = first.nc
    variables = {
        name: (list(nc.variables[name].dimensions), stored_dtype(nc.variables[name]))
        for name in data_variables(nc)
    }
    layout = Layout(
        variables, ["torch_seed", "trial_id", *indexed], collected_sizes(first, sources)
    )

    def stream(name: str, digest: Any) -> VariableFindings:
        return stream_variable(name, sources, opened, out, digest)

    return stream_digested(layout, list(sources), first.trial_ids, stream)


def collected_sizes(first: Opened, sources: Mapping[int, Sequence[Experiment]]) -> dict[str, int]:
    sizes = {"torch_seed": len(sources), "trial_id": len(first.trial_ids)}
    sizes.update({dim: len(first.nc.dimensions[dim]) for dim in extra_dims(first.nc)})
    return sizes


def copy_label(experiments: Sequence[Experiment], opened, copy: int) -> str:
    """``<experiment>/<trial_id>`` of the ``copy``-th copy of a seed (every trial of every
    experiment that ran it, in order)."""
    for experiment in experiments:
        trial_ids = opened[experiment.rev].trial_ids
        if copy < len(trial_ids):
            return f"{experiment.name}/{trial_ids[copy]}"
        copy -= len(trial_ids)
    raise IndexError(copy)


def assemble_verdict(sources, opened, findings: Mapping[str, VariableFindings]) -> Verdict:
    """The verdict in the order an in-memory comparison reports it: seed by seed, and within
    a seed variable by variable (in the order of the seed's first experiment)."""
    max_abs: dict[int, float] = {}
    disagreements = []
    for seed, experiments in sources.items():
        max_abs[seed] = 0.0
        for name in data_variables(opened[experiments[0].rev].nc):
            found = findings[name]
            max_abs[seed] = max(max_abs[seed], found.max_abs.get(seed, 0.0))
            if seed in found.first_difference:
                copy, index = found.first_difference[seed]
                label = copy_label(experiments, opened, copy)
                disagreements.append(Disagreement(seed, name, label, index, found.max_abs[seed]))
    return Verdict(tuple(sources), max_abs, tuple(disagreements))


def open_result(experiment: Experiment, stack: contextlib.ExitStack) -> Opened:
    nc = stack.enter_context(open_netcdf(experiment.result, "r"))
    trial_ids = nc.variables["trial_id"][:] if "trial_id" in nc.variables else []
    rows = {seed: row for row, seed in enumerate(experiment.seeds)}
    return Opened(experiment, nc, rows, tuple(str(label) for label in np.ravel(trial_ids)))


def collect_into(experiments: Sequence[Experiment], out: Path) -> Collected:
    """Check the results, then merge, compare and digest them into ``out``, slab by slab.

    Parameters
    ----------
    experiments
        The experiments to merge, the reference first: a seed is taken from the first
        experiment that ran it, and its copies in the others are compared with that.
    out
        The netCDF file to write (atomically).

    Returns
    -------
    Collected
        The verdict, the digest and the axes' sizes of the written file.
    """
    sources = seed_sources(experiments)
    with contextlib.ExitStack() as stack:
        opened = {e.rev: open_result(e, stack) for e in experiments}
        for experiment in experiments:
            check_result(experiment, opened[experiment.rev].nc)
        check_same_layout(list(opened.values()))
        parts = [opened[experiment.rev] for experiment in first_sources(sources)]
        check_same_trials(parts)
        first = parts[0]
        for result in opened.values():
            check_index_axes(result, extra_dims(first.nc))
        attrs = shared_attrs(experiments)
        temporary = stack.enter_context(atomic_path(out))
        with open_netcdf(temporary, "w") as nc:
            indexed = create_collected(nc, first, sources, attrs)
            digest, findings = stream_all(nc, first, sources, opened, indexed)
        verdict = assemble_verdict(sources, opened, findings)
        return Collected(verdict, digest, collected_sizes(first, sources))
