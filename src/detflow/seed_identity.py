"""Seeds that gave bit-identical results: the sign of a seed that never reached the task.

A pre-task that takes its seed under another name, or a task that ignores it, gives every seed
the same numbers, and every trial agrees: "deterministic", yet the sweep measured nothing.
So the aggregate hashes each seed's first trial and names the seeds that share a hash.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from pathlib import Path

from detflow import slabs
from detflow.report import format_seeds
from detflow.slabs import read_slab, stored_dtype
from detflow.trial_stack import data_variables, open_trial


def identical_seed_groups(path: Path) -> list[list[int]]:
    """Groups of two or more seeds that hold the same bits in every variable, in a trial file
    (or in a result's first trial), read a few megabytes at a time."""
    with open_trial(path) as nc:
        seeds = [int(seed) for seed in nc.variables["torch_seed"][:]]
        if len(seeds) < 2:
            return []
        digests = [hashlib.sha256() for _ in seeds]
        for name in sorted(data_variables(nc)):
            variable = nc.variables[name]
            first_trial = (0,) if variable.dimensions[1:2] == ("trial_id",) else ()
            rest = variable.shape[1 + len(first_trial) :]
            seed_bytes = math.prod(rest) * stored_dtype(variable).itemsize
            step = max(1, slabs.SLAB_BYTES // max(seed_bytes, 1))
            for start in range(0, len(seeds), step):
                block = read_slab(variable, (slice(start, start + step), *first_trial))
                for offset, row in enumerate(block):
                    digest = digests[start + offset]
                    digest.update(name.encode() + b"\0")
                    digest.update(row.tobytes())
    groups: dict[str, list[int]] = {}
    for seed, digest in zip(seeds, digests, strict=True):
        groups.setdefault(digest.hexdigest(), []).append(seed)
    return [sorted(group) for group in groups.values() if len(group) > 1]


def identical_seeds_text(groups: Sequence[Sequence[int]]) -> str:
    """For metrics.json (DVC's tables drop lists): ``0,1; 4,5``.

    Examples
    --------
    >>> identical_seeds_text([[0, 1], [4, 5]])
    '0,1; 4,5'
    """
    return "; ".join(",".join(map(str, group)) for group in groups)


def identical_seeds_line(groups: Sequence[Sequence[int]]) -> str | None:
    if not groups:
        return None
    named = "; ".join(format_seeds(group) for group in groups)
    return (
        f"seeds {named} gave identical results: does the seed reach your pre-task and task? "
        f"(a pre-task takes it as torch_seed or seed)"
    )
