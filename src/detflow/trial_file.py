"""A trial's netCDF file, written as its seeds run, so the stage holds a few seeds, not all.

The file is made inside ``atomic_path``: a stage killed mid-run leaves a hidden temporary,
never a partial file at the output path. Seeds are buffered up to ``FLUSH_BYTES`` and written
as one slab along ``torch_seed``; the flush points depend only on the outputs' sizes, so the
loop and a launcher write the same bytes.

A seed whose result cannot be stored stops the stage at that seed, and its result is kept
beside the trial file (``<label>.failed-seed<k>.pt``, by ``torch.save``), so the work that
made it is not lost; the error says where it is.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from detflow.artifact import (
    KEY_ATTR,
    atomic_path,
    nest,
    open_netcdf,
    stored_form,
    write_index_coordinate,
)
from detflow.cli import DetflowError, one_line
from detflow.outputs import Output, SeedResultError, key_json

# Seeds of small outputs are written together (a netCDF write per seed would cost more than
# the how-to's task), up to this many bytes or seeds; a seed larger than that goes on its own.
FLUSH_BYTES = 8 << 20
FLUSH_SEEDS = 1024


@dataclass(frozen=True)
class Layout:
    """The file's variables and axes, from the first seed's outputs: mushin's names."""

    variables: dict[str, tuple[str, ...]]  # name -> dims after torch_seed
    sizes: dict[str, int]  # each dim after torch_seed -> its length


def plan_layout(task: str, first: Mapping[str, Output]) -> Layout:
    """Name the axes as mushin's ``to_xarray`` does: ``torch_seed``, then ``<name>_dim<n>``."""
    variables: dict[str, tuple[str, ...]] = {}
    sizes: dict[str, int] = {}
    for name, output in first.items():
        array = output.array
        dims = output.dims or tuple(f"{name}_dim{n}" for n in range(array.ndim))
        for dim, size in zip(dims, array.shape, strict=True):
            if sizes.setdefault(dim, size) != size:
                raise DetflowError(
                    f"task {task} returned dim '{dim}' with sizes {sizes[dim]} and {size}: "
                    f"give differently sized axes different names"
                )
        variables[name] = dims
    for name in variables:
        if name in sizes:
            raise DetflowError(
                f"task {task} returned '{name}', which is also the name of an axis "
                f"({', '.join(sorted(sizes))}): rename that result"
            )
    return Layout(variables, sizes)


def check_like_first(
    task: str, seed: int, outputs: Mapping[str, Output], first_seed: int, first: Mapping
) -> None:
    """Every seed must return the same names, shapes and dtypes as the first."""
    if outputs.keys() != first.keys():
        raise DetflowError(
            f"task {task} returned keys {sorted(outputs)} for torch_seed {seed} but "
            f"{sorted(first)} for torch_seed {first_seed}: return the same keys for every seed"
        )
    for name, value in outputs.items():
        if value.key != first[name].key:
            raise DetflowError(
                f"task {task} returned '{name}' under keys {list(value.key or [name])} for "
                f"torch_seed {seed} but {list(first[name].key or [name])} for torch_seed "
                f"{first_seed}: nest the results alike for every seed"
            )
        if value.describe() != first[name].describe():
            raise DetflowError(
                f"task {task} returned '{name}' as {value.describe()} for torch_seed {seed} "
                f"but {first[name].describe()} for torch_seed {first_seed}: return the same "
                f"shape and dtype for every seed"
            )


class TrialWriter:
    """Receives each seed's outputs in order and writes them in slabs along ``torch_seed``."""

    def __init__(self, nc: Any, task: str, seeds: Sequence[int]) -> None:
        self.nc, self.task, self.seeds = nc, task, list(seeds)
        self.first: Mapping[str, Output] | None = None
        self.written = 0  # seeds already in the file
        self.pending: list[Mapping[str, Output]] = []
        self.pending_bytes = 0

    def add(self, outputs: Mapping[str, Output]) -> None:
        seed = self.seeds[self.written + len(self.pending)]
        try:
            if self.first is None:
                self.create(outputs)
                self.first = outputs
            else:
                check_like_first(self.task, seed, outputs, self.seeds[0], self.first)
        except Exception as error:  # a DetflowError, or netCDF refusing the layout
            message = (
                str(error)
                if isinstance(error, DetflowError)
                else f"task {self.task}'s result for torch_seed {seed} could not be laid out "
                f"in netCDF ({one_line(error)})"
            )
            # The seed's work is done; keep its arrays, as the task nested them.
            arrays = {name: output.array for name, output in outputs.items()}
            keys = {name: output.key for name, output in outputs.items()}
            raise SeedResultError(message, seed, nest(arrays, keys)) from error
        self.pending.append(outputs)
        self.pending_bytes += sum(output.array.nbytes for output in outputs.values())
        if self.pending_bytes >= FLUSH_BYTES or len(self.pending) >= FLUSH_SEEDS:
            self.flush()

    def create(self, first: Mapping[str, Output]) -> None:
        layout = plan_layout(self.task, first)
        nc = self.nc
        nc.createDimension("torch_seed", len(self.seeds))
        seeds = nc.createVariable("torch_seed", np.int64, ("torch_seed",))
        seeds[:] = np.asarray(self.seeds, dtype=np.int64)
        for dim, size in layout.sizes.items():
            nc.createDimension(dim, size)
            write_index_coordinate(nc, dim, size)
        for name, dims in layout.variables.items():
            stored, stored_attrs = stored_form(first[name].array)
            variable = nc.createVariable(name, stored.dtype, ("torch_seed", *dims))
            key = key_json(first[name].key)
            variable.setncatts({**stored_attrs, **({KEY_ATTR: key} if key else {})})

    def flush(self) -> None:
        if not self.pending:
            return
        start, stop = self.written, self.written + len(self.pending)
        for name in self.pending[0]:
            if len(self.pending) == 1:  # a large seed: no stacked copy
                slab = stored_form(self.pending[0][name].array)[0][np.newaxis]
            else:
                slab = stored_form(np.stack([outputs[name].array for outputs in self.pending]))[0]
            self.nc.variables[name][start:stop] = slab
        self.written = stop
        self.pending, self.pending_bytes = [], 0

    def finish(self, attrs: Mapping[str, str]) -> None:
        self.flush()
        if self.written != len(self.seeds):
            raise DetflowError(
                f"the trial ran {self.written} of its {len(self.seeds)} seeds: "
                f"run `dvc repro` again"
            )
        self.nc.setncatts(dict(attrs))


@contextlib.contextmanager
def trial_file(path: Path, task: str, seeds: Sequence[int]) -> Iterator[TrialWriter]:
    """A writer for ``path``; the file appears there only if the block completes and calls
    ``finish``."""
    try:
        with atomic_path(path) as temporary:
            with open_netcdf(temporary, "w") as nc:
                writer = TrialWriter(nc, task, seeds)
                yield writer
            if writer.first is None or writer.written != len(seeds):
                raise DetflowError(f"{path} was not finished: run `dvc repro` again")
    except SeedResultError as error:
        raise DetflowError(f"{error.message}; {keep_result(path, error)}") from error


def failed_seed_path(path: Path, seed: int) -> Path:
    """Where a seed's unstorable result is kept: beside the trial file, never read by DVC
    (``.dvcignore``) or versioned by git (``.gitignore``)."""
    return path.with_name(f"{path.stem}.failed-seed{seed}.pt")


def keep_result(path: Path, error: SeedResultError) -> str:
    """Save the seed's result with ``torch.save``; say where it is, or why it is not."""
    import torch

    kept = failed_seed_path(path, error.seed)
    shown = os.path.relpath(kept) if kept.is_relative_to(Path.cwd()) else str(kept)
    try:
        with atomic_path(kept) as temporary:
            torch.save(error.result, temporary)
    except Exception as failure:  # e.g. a result that does not pickle
        return f"torch_seed {error.seed}'s result could not be kept ({one_line(failure)})"
    return (
        f"torch_seed {error.seed}'s result is kept in {shown} "
        f"(torch.load('{shown}', weights_only=False))"
    )
