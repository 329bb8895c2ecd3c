"""The trials stacked into one result file slab by slab: compared, digested and written as
they stream, so memory holds a few megabytes of each trial, not the trials.

The result, the verdict and the digest equal those of stacking the trials in memory
(``aggregate.combine_trials``, then ``compare_trials`` and ``content_digest``): the slabs are
taken in C order of ``(torch_seed, trial_id, ...)``, the order the digest reads values in.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from detflow.artifact import (
    COORDINATE_SLAB,
    STORED_DTYPE_ATTR,
    atomic_path,
    open_netcdf,
    stored_form,
    write_index_coordinate,
)
from detflow.cli import DetflowError, one_line
from detflow.determinism import Disagreement, Verdict, abs_diff, bitwise_equal
from detflow.report import format_seeds, json_number

REBUILD = "run `dvc repro -f` to rebuild it"
# Each read from a trial file: whole seeds up to this size, or part of one larger seed. The
# comparison's float64 temporaries take about 20 times this.
SLAB_BYTES = 1 << 20


# ---------------------------------------------------------------------------- reading trials


def stored_dtype(variable: Any) -> np.dtype:
    """The dtype the task returned: bools and float16 travel as int8 and float32."""
    attrs = variable.ncattrs()
    if "dtype" in attrs and variable.getncattr("dtype") == "bool":
        return np.dtype(bool)
    if STORED_DTYPE_ATTR in attrs:
        return np.dtype(variable.getncattr(STORED_DTYPE_ATTR))
    return np.dtype(variable.dtype)


def read_slab(variable: Any, slab: tuple[slice, ...]) -> np.ndarray:
    return np.asarray(variable[slab]).astype(stored_dtype(variable), copy=False)


def data_variables(nc: Any) -> list[str]:
    """The results: every variable that is not an axis' coordinate."""
    return [name for name in nc.variables if name not in nc.dimensions]


def describe(nc: Any, name: str) -> str:
    """As ``report.describe`` says it of the variable read by xarray."""
    variable = nc.variables[name]
    return f"{stored_dtype(variable)}{list(variable.dimensions)}{list(variable.shape)}"


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
        if describe(nc, name) != describe(first, name):
            raise DetflowError(
                f"{path}: '{name}' is {describe(nc, name)} but {first_path} has "
                f"{describe(first, name)}: {REBUILD}"
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


# ---------------------------------------------------------------------------- slabs


def seed_slabs(shape: Sequence[int], itemsize: int, limit: int | None = None):
    """Hyperslabs of a ``(torch_seed, ...)`` variable in C order: runs of whole seeds up to
    ``limit`` bytes (``whole=True``), or, for a seed larger than that, runs of its first axis.

    Examples
    --------
    >>> [s for s, _ in seed_slabs((5, 2), itemsize=4, limit=16)]
    [(slice(0, 2, None),), (slice(2, 4, None),), (slice(4, 5, None),)]
    >>> [s for s, _ in seed_slabs((1, 4, 2), itemsize=4, limit=16)]
    [(slice(0, 1, None), slice(0, 2, None)), (slice(0, 1, None), slice(2, 4, None))]
    """
    limit = SLAB_BYTES if limit is None else limit  # read at call time: tests shrink it
    n_seeds, rest = shape[0], tuple(shape[1:])
    seed_bytes = math.prod(rest) * itemsize
    if not rest or seed_bytes <= limit:
        step = max(1, limit // max(seed_bytes, 1))
        for start in range(0, n_seeds, step):
            yield (slice(start, min(start + step, n_seeds)),), True
        return
    rows = row_slabs(rest, itemsize, limit)
    for seed in range(n_seeds):
        for run in rows:
            yield (slice(seed, seed + 1), run), False


def row_slabs(rest: Sequence[int], itemsize: int, limit: int) -> list[slice]:
    """Runs of the first axis of one seed's values (shape ``rest``) up to ``limit`` bytes
    (one row at least).

    Examples
    --------
    >>> row_slabs((5, 2), itemsize=4, limit=16)
    [slice(0, 2, None), slice(2, 4, None), slice(4, 5, None)]
    """
    row_bytes = math.prod(rest[1:]) * itemsize
    step = max(1, limit // max(row_bytes, 1))
    return [slice(start, min(start + step, rest[0])) for start in range(0, rest[0], step)]


# ---------------------------------------------------------------------------- the stacking


@dataclass
class VariableFindings:
    """What the comparison found for one variable, seed by seed."""

    max_abs: dict[int, float] = field(default_factory=dict)
    first_difference: dict[int, tuple[int, tuple[int, ...]]] = field(default_factory=dict)
    first_trial: dict[int, Any] = field(default_factory=dict)  # the value, or the float64 sum
    total: float = 0.0  # over every trial and seed, for the variable's mean

    def record(self, seed: int, trial: int, index: tuple[int, ...], diff: float) -> None:
        self.max_abs[seed] = max(self.max_abs.get(seed, 0.0), diff)
        if trial >= 0 and seed not in self.first_difference:
            self.first_difference[seed] = (trial, index)


@dataclass(frozen=True)
class Stacked:
    """The outcome of stacking: what metrics.json and the log report."""

    verdict: Verdict
    digest: str
    means: dict[str, Any]  # each variable's mean over every value
    seed_values: dict[int, dict[str, Any]]  # each seed's first-trial value, or mean if larger
    sizes: dict[str, int]


def compare_block(block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``block`` is ``(seeds, trials, ...)``: bitwise equality with each seed's first trial,
    and |diff| (inf where a NaN disagrees)."""
    values = block.astype(np.uint8) if block.dtype == np.bool_ else block
    equal = bitwise_equal(values, values[:, :1])
    return equal, abs_diff(values, values[:, :1], equal)


def first_difference(mismatch: np.ndarray) -> tuple[int, ...] | None:
    """The C-order index of the first True, without argwhere's index of every one."""
    if not mismatch.any():
        return None
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(mismatch)), mismatch.shape))


def note_block(findings: VariableFindings, seeds: Sequence[int], block: np.ndarray) -> None:
    """Record a ``(seeds, copies, ...)`` block of whole seeds: each copy against each seed's
    first."""
    equal, diff = compare_block(block)
    for position, seed in enumerate(seeds):
        found = first_difference(~equal[position])
        copy, index = (-1, ()) if found is None else (found[0], found[1:])
        worst = float(diff[position].max()) if diff[position].size else 0.0
        findings.record(seed, copy, index, worst)


def note_part(
    findings: VariableFindings, seed: int, copy: int, reference, part, row_offset: int
) -> None:
    """Record rows ``row_offset...`` of one copy of one large seed (``(1, rows, ...)``)
    against the same rows of its first copy."""
    equal, diff = compare_block(np.stack([reference, part], axis=1))
    found = first_difference(~equal[0, 1])
    index = () if found is None else (found[0] + row_offset, *found[1:])
    findings.record(
        seed, -1 if found is None else copy, index, float(diff.max()) if diff.size else 0.0
    )


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
    parts: list[tuple[slice, ...]] = []  # of the large seed being read
    for slab, whole in seed_slabs(first.shape, stored_dtype(first).itemsize):
        if whole:
            block = np.stack([read_slab(t.variables[name], slab) for t in trials], axis=1)
            note_seeds(findings, seeds[slab[0]], block)
            digest.update(np.ascontiguousarray(block).tobytes())
            target[slab[0]] = stored_form(block)[0]
            continue
        parts.append(slab)
        if slab[1].stop == first.shape[1]:  # the seed's last part
            stream_large_seed(name, trials, seeds[slab[0]][0], parts, findings, target, digest)
            parts = []
    return findings


def stream_large_seed(name, trials, seed, parts, findings, target, digest) -> None:
    """One seed larger than a slab, in parts: each trial's part against the first trial's,
    in the digest's order (trial by trial, rows in order within a trial), so that the first
    trial that differs is also the first recorded."""
    first = trials[0].variables[name]
    for position, trial in enumerate(trials):
        for slab in parts:
            reference = read_slab(first, slab)
            part = reference if position == 0 else read_slab(trial.variables[name], slab)
            note_part(findings, seed, position, reference, part, slab[1].start)
            part_sum = float(part.astype(np.float64).sum())
            findings.total += part_sum
            if position == 0:
                findings.first_trial[seed] = findings.first_trial.get(seed, 0.0) + part_sum
            digest.update(np.ascontiguousarray(part).tobytes())
            target[slab[0], position, slab[1]] = stored_form(part[0])[0]


def digest_header(name: str, dims: Sequence[str], dtype: str, shape: Sequence[int], size: int):
    """What ``content_digest`` hashes before a variable's values."""
    header = {"name": name, "dims": list(dims), "dtype": dtype, "shape": list(shape)}
    return json.dumps(header, sort_keys=True).encode() + size.to_bytes(8, "little")


def digest_axis(
    digest: Any, name: str, seeds: Sequence[int], trial_ids: Sequence[str], size: int
) -> None:
    """What ``content_digest`` hashes of an axis' coordinate: the seeds, the trial labels,
    or 0..size-1."""
    if name == "trial_id":
        payload = "\0".join(trial_ids).encode()
        digest.update(digest_header(name, [name], "str", [len(trial_ids)], len(payload)))
        digest.update(payload)
        return
    digest.update(digest_header(name, [name], "<i8", [size], size * 8))
    if name == "torch_seed":
        digest.update(np.asarray(seeds, dtype=np.int64).tobytes())
        return
    for start in range(0, size, COORDINATE_SLAB):
        digest.update(np.arange(start, min(start + COORDINATE_SLAB, size)).tobytes())


def create_result(out: Any, first: Any, trial_ids: Sequence[str], attrs: Mapping) -> list[str]:
    """The result's axes and coordinates, and its (still empty) variables; returns the
    names of the axes after torch_seed and trial_id."""
    out.createDimension("torch_seed", len(first.dimensions["torch_seed"]))
    out.createVariable("torch_seed", np.int64, ("torch_seed",))[:] = first.variables["torch_seed"][
        :
    ]
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


def create_like(out: Any, name: str, source: Any, dims: Sequence[str], **attrs: str) -> None:
    """An empty variable to hold ``source``'s values (stored as ``stored_form`` stores them),
    with NaN as the fill of floats, as xarray writes them."""
    stored, stored_attrs = stored_form(np.zeros(0, stored_dtype(source)))
    fill = {"fill_value": np.nan} if stored.dtype.kind == "f" else {}
    created = out.createVariable(name, stored.dtype, tuple(dims), **fill)
    created.setncatts({**stored_attrs, **attrs})


def unnumbered_axis(nc: Any, dims: Sequence[str]) -> tuple[str, int] | None:
    """The first of ``dims`` (with its length) whose coordinate is not 0, 1, 2, ..., as the
    trial stage and the aggregate number every axis; None when all are."""
    for dim in dims:
        if dim not in nc.variables:
            continue
        size = len(nc.dimensions[dim])
        for start in range(0, size, COORDINATE_SLAB):
            stop = min(start + COORDINATE_SLAB, size)
            if not np.array_equal(nc.variables[dim][start:stop], np.arange(start, stop)):
                return dim, size
    return None


def check_index_coordinates(paths: Sequence[Path], trials: Sequence[Any], dims: Sequence[str]):
    """Each axis of every trial must be numbered 0, 1, 2, ... as the trial stage writes it."""
    for path, trial in zip(paths, trials, strict=True):
        found = unnumbered_axis(trial, dims)
        if found is not None:
            dim, size = found
            raise DetflowError(f"{path}: the {dim} axis is not numbered 0..{size - 1}: {REBUILD}")


def stack_trials(
    paths: Mapping[str, Path], seeds: Sequence[int], out_path: Path, attrs: Mapping[str, Any]
) -> Stacked:
    """Check the trial files, then write ``(torch_seed, trial_id, ...)`` to ``out_path``."""
    trial_ids = list(paths)
    with contextlib.ExitStack() as stack:
        trials = [stack.enter_context(open_trial(path)) for path in paths.values()]
        first_path = paths[trial_ids[0]]
        for path, nc in zip(paths.values(), trials, strict=True):
            check_trial(path, nc, seeds)
            if nc is not trials[0]:
                check_same_layout(path, nc, first_path, trials[0])
        names = data_variables(trials[0])
        temporary = stack.enter_context(atomic_path(out_path))
        with open_netcdf(temporary, "w") as out:
            extra = create_result(out, trials[0], trial_ids, {**trials[0].__dict__, **attrs})
            check_index_coordinates(list(paths.values()), trials, extra)
            stacked = stream_all(out, trials, trial_ids, seeds, names, extra)
    return stacked


def stream_all(out, trials, trial_ids, seeds, names, extra) -> Stacked:
    """Every variable in the digest's (sorted) order; the verdict in the file's order."""
    digest = hashlib.sha256()
    findings: dict[str, tuple[int, VariableFindings]] = {}
    sizes = {"torch_seed": len(seeds), "trial_id": len(trial_ids)}
    sizes.update({dim: len(trials[0].dimensions[dim]) for dim in extra})
    for name in sorted([*names, "torch_seed", "trial_id", *extra]):
        if name in names:
            variable = trials[0].variables[name]
            dims = ["torch_seed", "trial_id", *variable.dimensions[1:]]
            shape = [sizes[dim] for dim in dims]
            dtype = stored_dtype(variable)
            size = math.prod(shape) * dtype.itemsize
            digest.update(digest_header(name, dims, dtype.str, shape, size))
            findings[name] = (
                math.prod(shape[2:]),
                stream_variable(name, trials, seeds, out, digest),
            )
        else:
            digest_axis(digest, name, seeds, trial_ids, sizes[name])
    return summarize(findings, names, trial_ids, seeds, sizes, f"sha256:{digest.hexdigest()}")


def summarize(findings, names, trial_ids, seeds, sizes, digest) -> Stacked:
    """The verdict in the order an in-memory comparison reports it: variable by variable."""
    max_abs = dict.fromkeys(seeds, 0.0)
    disagreements = []
    seed_values: dict[int, dict[str, Any]] = {seed: {} for seed in seeds}
    means = {}
    for name, (per_seed, found) in ((n, findings[n]) for n in names):
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
                seed_values[seed][f"{name}_mean"] = json_number(np.float64(first / per_seed))
        count = per_seed * len(seeds) * len(trial_ids)
        means[name] = json_number(np.float64(found.total / count))
    verdict = Verdict(tuple(seeds), max_abs, tuple(disagreements))
    return Stacked(verdict, digest, means, seed_values, sizes)
