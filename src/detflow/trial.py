"""Stage `task`: for each seed run the pre-task, build the objects, run the task; save one netCDF.

The artifact holds nothing specific to one run (no trial label, no timestamp), so trials
that compute the same numbers produce byte-identical files and DVC's md5s agree.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from detflow.cli import DetflowError, run_main, stage_parser
from detflow.outputs import Output, stack_seeds
from detflow.params import DEFAULT_PARAMS, Params, params_from_bytes, read_params_bytes
from detflow.run import stage_inputs
from detflow.tracking import check_tracked, code_digest, stage_entry


@dataclass(frozen=True)
class Trial:
    """One trial's results as plain arrays, laid out as in its file: dims ``(torch_seed, ...)``."""

    variables: dict[str, tuple[tuple[str, ...], np.ndarray]]
    coords: dict[str, np.ndarray]
    attrs: dict[str, str]

    def to_dataset(self):
        import xarray as xr

        coords = {dim: (dim, values) for dim, values in self.coords.items()}
        return xr.Dataset(self.variables, coords=coords, attrs=self.attrs)


def layout_trial(seeds: Sequence[int], stacked: dict[str, Output], attrs: dict[str, str]) -> Trial:
    """Name the axes as mushin's ``to_xarray`` does: ``torch_seed``, then ``<name>_dim<n>``."""
    variables, coords = {}, {"torch_seed": np.asarray(seeds, dtype=np.int64)}
    for name, output in stacked.items():
        array = output.array
        extra_dims = output.dims or tuple(f"{name}_dim{n}" for n in range(array.ndim - 1))
        variables[name] = (("torch_seed", *extra_dims), array)
        for dim, size in zip(extra_dims, array.shape[1:], strict=True):
            if dim in coords and len(coords[dim]) != size:
                raise DetflowError(
                    f"task returned dim '{dim}' with sizes {len(coords[dim])} and {size}: "
                    f"give differently sized axes different names"
                )
            coords[dim] = np.arange(size, dtype=np.int64)
    for name in variables:
        if name in coords:
            raise DetflowError(
                f"task returned '{name}', which is also the name of an axis "
                f"({', '.join(sorted(set(coords) - {'torch_seed'}))}): rename that result"
            )
    return Trial(variables, coords, attrs)


def compute_trial(params: Params, out: Path | None = None):
    """Run every seed of one trial, in this process or as jobs of ``params.launcher``."""
    from detflow.executor import run_seeds

    # Launcher jobs write beside the output, where cluster jobs can see it too.
    work_dir = out.parent if out is not None else Path(tempfile.gettempdir())
    label = f"{out.stem} seeds" if out is not None else "seeds"
    outputs, attrs = run_seeds(params, work_dir, label)
    stacked = stack_seeds(params.task, params.torch_seeds, outputs)
    return layout_trial(params.torch_seeds, stacked, attrs)


def run_trial(params: Params):
    """Run one trial and return it as an ``xarray.Dataset`` (for tests and scripts)."""
    return compute_trial(params).to_dataset()


def check_unchanged(path: Path, read: bytes) -> None:
    """DVC records params in dvc.lock when a stage ends, reading params.yaml then: had it
    changed since this stage read it, dvc.lock would pair the new params with numbers made
    from the old ones."""
    if path.read_bytes() != read:
        raise DetflowError(
            f"{path} changed while this stage ran, so its results come from params that "
            f"{path} no longer holds: run `dvc repro` again once no edit or other run is changing it"
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = stage_parser(__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS, help="params file")
    parser.add_argument("--out", type=Path, required=True, help="netCDF file to write")
    args = parser.parse_args(argv)

    # Paths as dvc.yaml gives them, relative to where the stage started, whatever the task
    # does to the working directory.
    out, params_path = args.out.absolute(), args.params.absolute()
    read = read_params_bytes(params_path)
    params = params_from_bytes(read, params_path)  # the very bytes check_unchanged compares
    if params.portable:
        from detflow.cpu import pin_portable_cpu_path

        pin_portable_cpu_path()  # before anything imports torch
    code, bound = stage_inputs(params)
    root = Path.cwd()
    entry = stage_entry(root / "dvc.yaml")
    if entry is not None:
        check_tracked(root, entry, code, bound)
    trial = compute_trial(params, out)
    check_unchanged(params_path, read)
    # What produced the numbers, for the aggregate (which params to record) and for collect
    # (which experiments ran the same code).
    trial.attrs["code_digest"] = code_digest(root, code)
    trial.attrs["bound_params"] = ",".join(sorted(bound))

    from detflow.artifact import write_arrays

    write_arrays(out, trial.variables, trial.coords, trial.attrs)
    sizes = {dim: len(values) for dim, values in trial.coords.items()}
    print(f"wrote {args.out}: {sizes}")
    return 0


if __name__ == "__main__":
    run_main(main)
