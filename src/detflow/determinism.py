"""Compare trials bit for bit and digest a result's content; pure numpy, no torch."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # the aggregate stage streams with numpy alone; xarray costs 80 MB to import
    import xarray as xr


@dataclass(frozen=True)
class Disagreement:
    """Where one variable of one seed first differs between trials."""

    torch_seed: int
    variable: str
    trial_id: str  # the first trial that differs from the first trial
    index: tuple[int, ...]  # the first differing position within the variable
    max_abs_diff: float  # over all trials and positions of this seed and variable


@dataclass(frozen=True)
class Verdict:
    """The outcome of comparing every trial of every seed with that seed's first trial."""

    torch_seeds: tuple[int, ...]
    max_abs_diff_by_seed: Mapping[int, float]
    disagreements: tuple[Disagreement, ...]

    @property
    def deterministic(self) -> bool:
        return not self.disagreements

    @property
    def disagreeing_seeds(self) -> tuple[int, ...]:
        return tuple(sorted({d.torch_seed for d in self.disagreements}))


# Equal bits are equal unsigned integers of the same width: one comparison per value.
SAME_WIDTH_UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def bitwise_equal(values: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Elementwise: do ``values`` and ``reference`` (broadcast) hold the same bits?

    Unlike ``==``, NaN equals NaN and -0.0 differs from 0.0.
    """
    values, reference = np.broadcast_arrays(values, reference)
    itemsize = values.dtype.itemsize
    as_uint = SAME_WIDTH_UINT.get(itemsize)
    if as_uint is not None:
        return np.ascontiguousarray(values).view(as_uint) == np.ascontiguousarray(reference).view(
            as_uint
        )
    as_bytes = np.ascontiguousarray(values).view(np.uint8).reshape(*values.shape, itemsize)
    ref_bytes = np.ascontiguousarray(reference).view(np.uint8).reshape(*values.shape, itemsize)
    return (as_bytes == ref_bytes).all(axis=-1)


def abs_diff(values: np.ndarray, reference: np.ndarray, equal: np.ndarray) -> np.ndarray:
    """``|values - reference|`` in float64: 0 where the bits agree, inf where a NaN disagrees."""
    if equal.all():  # the usual case, with no float64 copies
        return np.broadcast_to(np.float64(0.0), equal.shape)
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.abs(values.astype(np.float64) - reference.astype(np.float64))
    diff = np.where(equal, 0.0, diff)
    return np.where(np.isnan(diff), np.inf, diff)


def compare_trials(result: xr.Dataset) -> Verdict:
    """Compare each seed's trials bitwise against its first trial, variable by variable.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> out = np.array([[[1.0], [1.0]], [[2.0], [2.5]]])
    >>> ds = xr.Dataset({"out": (("torch_seed", "trial_id", "out_dim0"), out)},
    ...                 coords={"torch_seed": [0, 1], "trial_id": ["a", "b"]})
    >>> verdict = compare_trials(ds)
    >>> verdict.deterministic, verdict.disagreeing_seeds, verdict.max_abs_diff_by_seed[1]
    (False, (1,), 0.5)
    """
    seeds = tuple(int(seed) for seed in result["torch_seed"].values)
    trials = [str(trial) for trial in result["trial_id"].values]
    max_abs = dict.fromkeys(seeds, 0.0)
    disagreements = []
    for name, variable in result.data_vars.items():
        values = variable.transpose("torch_seed", "trial_id", ...).values
        if values.dtype == np.bool_:
            values = values.astype(np.uint8)
        equal = bitwise_equal(values, values[:, :1])
        diff = abs_diff(values, values[:, :1], equal)
        for position, seed in enumerate(seeds):
            seed_diff = float(diff[position].max()) if diff[position].size else 0.0
            max_abs[seed] = max(max_abs[seed], seed_diff)
            differing = np.argwhere(~equal[position])
            if len(differing):
                trial, *index = (int(i) for i in differing[0])
                disagreements.append(
                    Disagreement(seed, str(name), trials[trial], tuple(index), seed_diff)
                )
    return Verdict(seeds, max_abs, tuple(disagreements))


def content_digest(dataset: xr.Dataset) -> str:
    """sha256 over every variable's name, dims, dtype, shape and values (attrs excluded).

    It ignores the file's bytes, which record library versions, so the same numbers give
    the same digest on any machine.

    Examples
    --------
    >>> import xarray as xr
    >>> a = xr.Dataset({"out": ("x", [1.0, 2.0])})
    >>> content_digest(a) == content_digest(a.copy(deep=True))
    True
    >>> content_digest(a) == content_digest(a.astype("float32"))
    False
    """
    digest = hashlib.sha256()
    for name in sorted(dataset.variables, key=str):
        variable = dataset.variables[name]
        values = np.asarray(variable.values)
        if values.dtype.kind in "OUST":  # any string storage: fixed-width, object or StringDType
            dtype, payload = "str", "\0".join(map(str, values.ravel())).encode()
        else:
            dtype, payload = values.dtype.str, np.ascontiguousarray(values).tobytes()
        header = {
            "name": str(name),
            "dims": list(variable.dims),
            "dtype": dtype,
            "shape": list(values.shape),
        }
        digest.update(json.dumps(header, sort_keys=True).encode())
        digest.update(len(payload).to_bytes(8, "little"))
        digest.update(payload)
    return f"sha256:{digest.hexdigest()}"
