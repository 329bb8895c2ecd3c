"""The streaming kernel of the aggregate (``trial_stack``) and collect (``collect_merge``):
copies of each seed's values read slab by slab, compared bit for bit with the first copy,
digested in ``content_digest``'s order and written, so memory holds a few megabytes, never
the results.

Both callers stack a seed's copies along axis 1 (the trials of one result, or every trial of
every experiment that ran it): a *block* is ``(seeds, copies, ...)``; a seed too large for one
is read in *parts*, runs of its first axis, copy by copy against the first copy's same rows.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from detflow.artifact import COORDINATE_SLAB, KEY_ATTR, STORED_DTYPE_ATTR, stored_form
from detflow.determinism import abs_diff, bitwise_equal

# Each read: whole seeds up to this size, or part of one larger seed. The comparison's float64
# temporaries take about 20 times this. Read at call time: tests shrink it.
SLAB_BYTES = 1 << 20


# ---------------------------------------------------------------------------- reading


def stored_dtype(variable: Any) -> np.dtype:
    """The dtype the task returned: bools and float16 travel as int8 and float32."""
    attrs = variable.ncattrs()
    if "dtype" in attrs and variable.getncattr("dtype") == "bool":
        return np.dtype(bool)
    if STORED_DTYPE_ATTR in attrs:
        return np.dtype(variable.getncattr(STORED_DTYPE_ATTR))
    return np.dtype(variable.dtype)


def read_slab(variable: Any, slab: tuple[slice | int, ...]) -> np.ndarray:
    return np.asarray(variable[slab]).astype(stored_dtype(variable), copy=False)


def data_variables(nc: Any) -> list[str]:
    """The results: every variable that is not an axis' coordinate."""
    return [name for name in nc.variables if name not in nc.dimensions]


def row_runs(rows: Sequence[int]) -> list[slice]:
    """``rows`` as runs of consecutive rows, in order: one read each.

    Examples
    --------
    >>> row_runs([4, 5, 6, 0, 1, 9])
    [slice(4, 7, None), slice(0, 2, None), slice(9, 10, None)]
    """
    runs: list[slice] = []
    for row in rows:
        if runs and runs[-1].stop == row:
            runs[-1] = slice(runs[-1].start, row + 1)
        else:
            runs.append(slice(row, row + 1))
    return runs


def read_rows(variable: Any, rows: Sequence[int]) -> np.ndarray:
    """The given rows (seeds) of a ``(torch_seed, ...)`` variable, in that order."""
    parts = [read_slab(variable, (run,)) for run in row_runs(rows)]
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def describe(variable: Any, skip: int = 0) -> str:
    """As ``report.describe`` says it of the variable read by xarray, less its first ``skip``
    axes (the seeds, whose number may differ)."""
    dims, shape = list(variable.dimensions[skip:]), list(variable.shape[skip:])
    return f"{stored_dtype(variable)}{dims}{shape}"


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


# ---------------------------------------------------------------------------- slabs


def seed_runs(n_seeds: int, seed_bytes: int, has_rows: bool) -> Iterator[tuple[slice, bool]]:
    """Positions of seeds in order: runs of whole seeds whose ``seed_bytes`` each fit in
    ``SLAB_BYTES`` (``True``), or, one at a time, a seed larger than that with rows to split
    (``False``: read it in ``row_slabs``).

    Examples
    --------
    >>> list(seed_runs(3, seed_bytes=600_000, has_rows=True))
    [(slice(0, 1, None), True), (slice(1, 2, None), True), (slice(2, 3, None), True)]
    >>> list(seed_runs(2, seed_bytes=2 << 20, has_rows=True))
    [(slice(0, 1, None), False), (slice(1, 2, None), False)]
    >>> list(seed_runs(5, seed_bytes=0, has_rows=True))  # empty arrays: one run
    [(slice(0, 5, None), True)]
    """
    if not has_rows or seed_bytes <= SLAB_BYTES:
        step = max(1, SLAB_BYTES // max(seed_bytes, 1))
        for start in range(0, n_seeds, step):
            yield slice(start, min(start + step, n_seeds)), True
        return
    for seed in range(n_seeds):
        yield slice(seed, seed + 1), False


def row_slabs(rest: Sequence[int], itemsize: int) -> list[slice]:
    """Runs of the first axis of one copy of a seed (shape ``rest``) up to ``SLAB_BYTES``
    (one row at least).

    Examples
    --------
    >>> row_slabs((5, 2), itemsize=1 << 18)
    [slice(0, 2, None), slice(2, 4, None), slice(4, 5, None)]
    """
    row_bytes = math.prod(rest[1:]) * itemsize
    step = max(1, SLAB_BYTES // max(row_bytes, 1))
    return [slice(start, min(start + step, rest[0])) for start in range(0, rest[0], step)]


# ---------------------------------------------------------------------------- comparing


@dataclass
class VariableFindings:
    """What the comparison found for one variable, seed by seed."""

    max_abs: dict[int, float] = field(default_factory=dict)
    first_difference: dict[int, tuple[int, tuple[int, ...]]] = field(default_factory=dict)
    first_trial: dict[int, Any] = field(default_factory=dict)  # the value, or the float64 sum
    total: float = 0.0  # over every trial and seed, for the variable's mean

    def record(self, seed: int, copy: int, index: tuple[int, ...], diff: float) -> None:
        """``copy`` is the copy that differs at ``index``, or -1 where none does."""
        self.max_abs[seed] = max(self.max_abs.get(seed, 0.0), diff)
        if copy >= 0 and seed not in self.first_difference:
            self.first_difference[seed] = (copy, index)

    def merge(self, found: VariableFindings) -> None:
        """Join the findings of other seeds (comparison only: each seed is streamed once)."""
        self.max_abs.update(found.max_abs)
        self.first_difference.update(found.first_difference)


def compare_block(block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``block`` is ``(seeds, copies, ...)``: bitwise equality with each seed's first copy,
    and |diff| (inf where a NaN disagrees)."""
    values = block.astype(np.uint8) if block.dtype == np.bool_ else block
    equal = bitwise_equal(values, values[:, :1])
    return equal, abs_diff(values, values[:, :1], equal)


def first_difference(mismatch: np.ndarray) -> tuple[int, ...] | None:
    """The C-order index of the first True, without argwhere's index of every one."""
    if not mismatch.any():
        return None
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(mismatch)), mismatch.shape))


def largest(diff: np.ndarray) -> float:
    """The largest |diff|; 0 of no values (an empty array agrees with itself)."""
    return float(diff.max()) if diff.size else 0.0


def note_block(findings: VariableFindings, seeds: Sequence[int], block: np.ndarray) -> None:
    """Record a ``(seeds, copies, ...)`` block of whole seeds: each copy against each seed's
    first."""
    equal, diff = compare_block(block)
    for position, seed in enumerate(seeds):
        found = first_difference(~equal[position])
        copy, index = (-1, ()) if found is None else (found[0], found[1:])
        findings.record(seed, copy, index, largest(diff[position]))


def note_part(
    findings: VariableFindings, seed: int, copy: int, reference, part, row_offset: int
) -> None:
    """Record rows ``row_offset...`` of one copy of one large seed (``(1, rows, ...)``)
    against the same rows of its first copy."""
    equal, diff = compare_block(np.stack([reference, part], axis=1))
    found = first_difference(~equal[0, 1])
    index = () if found is None else (found[0] + row_offset, *found[1:])
    findings.record(seed, -1 if found is None else copy, index, largest(diff))


# A copy's rows of the large seed being streamed, ``(1, rows, ...)``.
ReadPart = Callable[[int, slice], np.ndarray]
# What to do with each part once compared (digest and write it): (copy, rows, part).
KeepPart = Callable[[int, slice, np.ndarray], None]


def stream_parts(
    findings: VariableFindings,
    seed: int,
    n_copies: int,
    rows: Sequence[slice],
    read: ReadPart,
    keep: KeepPart,
) -> None:
    """One seed too large for a block, in parts: each copy's rows against the first copy's,
    in the digest's order (copy by copy, rows in order within a copy), so that the first copy
    that differs is also the first recorded."""
    for copy in range(n_copies):
        for run in rows:
            reference = read(0, run)
            part = reference if copy == 0 else read(copy, run)
            note_part(findings, seed, copy, reference, part, run.start)
            keep(copy, run, part)


def write_values(target: Any, where: tuple, values: np.ndarray, digest: Any) -> None:
    """Digest ``values`` (in C order) and write them at ``where`` as the file stores them."""
    digest.update(np.ascontiguousarray(values).tobytes())
    target[where] = stored_form(values)[0]


# ---------------------------------------------------------------------------- the digest


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


@dataclass(frozen=True)
class Layout:
    """What the digest needs of a result: each data variable's dims and dtype (in the
    result's ``(torch_seed, trial_id, ...)``), the axes with a coordinate, and every axis'
    size."""

    variables: Mapping[str, tuple[Sequence[str], np.dtype]]
    axes: Sequence[str]
    sizes: Mapping[str, int]


def stream_digested(
    layout: Layout,
    seeds: Sequence[int],
    trial_ids: Sequence[str],
    stream: Callable[[str, Any], VariableFindings],
) -> tuple[str, dict[str, VariableFindings]]:
    """Every variable and axis in ``content_digest``'s (sorted) order: an axis' coordinate is
    hashed here; a variable's header too, then ``stream(name, digest)`` compares, hashes and
    writes its values. Returns the digest and each variable's findings."""
    digest = hashlib.sha256()
    findings = {}
    for name in sorted([*layout.variables, *layout.axes]):
        if name not in layout.variables:
            digest_axis(digest, name, seeds, trial_ids, layout.sizes[name])
            continue
        dims, dtype = layout.variables[name]
        shape = [layout.sizes[dim] for dim in dims]
        size = math.prod(shape) * dtype.itemsize
        digest.update(digest_header(name, dims, dtype.str, shape, size))
        findings[name] = stream(name, digest)
    return f"sha256:{digest.hexdigest()}", findings


# ---------------------------------------------------------------------------- writing


def create_like(out: Any, name: str, source: Any, dims: Sequence[str], **attrs: str) -> None:
    """An empty variable to hold ``source``'s values (stored as ``stored_form`` stores them),
    with NaN as the fill of floats, as xarray writes them."""
    stored, stored_attrs = stored_form(np.zeros(0, stored_dtype(source)))
    fill = {"fill_value": np.nan} if stored.dtype.kind == "f" else {}
    created = out.createVariable(name, stored.dtype, tuple(dims), **fill)
    # The keys a nested result was returned under travel with it (see artifact.read_nested).
    kept = {KEY_ATTR: source.getncattr(KEY_ATTR)} if KEY_ATTR in source.ncattrs() else {}
    created.setncatts({**stored_attrs, **kept, **attrs})


def mean(total: float, count: int) -> float | None:
    """``total / count``; None (JSON null) of no values, whose mean does not exist.

    Examples
    --------
    >>> mean(3.0, 2), mean(0.0, 0)
    (1.5, None)
    """
    return total / count if count else None
