"""Stage `task`: for each seed run the pre-task, build the objects, run the task; save one netCDF.

The artifact holds nothing specific to one run (no trial label, no timestamp), so trials
that compute the same numbers produce byte-identical files and DVC's md5s agree.
"""

from __future__ import annotations

import functools
import platform
import re
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from detflow.binding import (
    bind_arguments,
    check_config,
    config_builder,
    import_function,
    is_config,
)
from detflow.cli import DetflowError, one_line, run_main, stage_parser
from detflow.params import DEFAULT_PARAMS, Params, load_params

# A result name becomes a netCDF variable: no slashes, nothing netCDF reserves.
RESULT_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
RESERVED_NAMES = {"torch_seed", "trial_id"}
STORABLE_KINDS = "biuf"  # bool, signed and unsigned int, float


@dataclass(frozen=True)
class Output:
    """One returned value as a numpy array, with the names of its axes if the task gave them."""

    array: np.ndarray
    dims: tuple[str, ...] | None

    def describe(self) -> str:
        return f"{self.array.dtype}{list(self.array.shape)}" + (
            f" dims {list(self.dims)}" if self.dims else ""
        )


def check_name(task_name: str, what: str, name: Any) -> None:
    if not isinstance(name, str) or not RESULT_NAME.fullmatch(name) or name in RESERVED_NAMES:
        raise DetflowError(
            f"task {task_name} returned the {what} {name!r}: use a name like 'out' "
            f"(letters, digits, '_'), other than {sorted(RESERVED_NAMES)}"
        )


def as_storable(task_name: str, name: Any, value: Any) -> Output:
    """Turn one returned value into an array that netCDF can hold, or say why not.

    An ``xarray.DataArray`` keeps its dim names (e.g. ``epoch``); anything else gets mushin's
    ``<name>_dim<n>``.
    """
    check_name(task_name, "key", name)
    dims = None
    if hasattr(value, "dims") and hasattr(value, "values") and not hasattr(value, "detach"):
        dims = tuple(value.dims)
        for dim in dims:
            check_name(task_name, f"dim of '{name}'", dim)
        value = value.values
    if hasattr(value, "detach"):  # a torch tensor, possibly on a GPU
        value = value.detach().cpu().numpy()
    try:
        array = np.asarray(value)
    except Exception as error:
        raise DetflowError(
            f"task {task_name} returned '{name}' as {type(value).__name__}, which is not an "
            f"array ({one_line(error)}): return numbers, arrays or tensors"
        ) from error
    if array.dtype.kind not in STORABLE_KINDS:
        raise DetflowError(
            f"task {task_name} returned '{name}' as {type(value).__name__} of dtype {array.dtype}, "
            f"which cannot be stored: return bool, int or float numbers, arrays or tensors"
        )
    return Output(array, dims)


def storable_outputs(task_name: str, result: Any) -> dict[str, Output]:
    """Check a task's return value: a non-empty dict of names to arrays."""
    if not isinstance(result, Mapping) or not result:
        raise DetflowError(
            f"task {task_name} returned {type(result).__name__}, not a dict of arrays: "
            f"return e.g. {{'out': tensor}}"
        )
    return {name: as_storable(task_name, name, value) for name, value in result.items()}


def on_device(value: Any, device: str) -> Any:
    """Move built modules and tensors to ``device``; leave everything else alone."""
    import torch

    if isinstance(value, torch.nn.Module | torch.Tensor):
        return value.to(device)
    return value


def run_seed(
    seed: int,
    params: Params,
    pre_task: Callable[..., Any] | None,
    task: Callable[..., Any],
    builders: Mapping[str, Callable[[], Any]],
) -> dict[str, Output]:
    """Seed first, then instantiate from config (on the device), then run the task."""
    values = {**params.values, "torch_seed": seed, "device": params.device}
    try:
        if pre_task is not None:
            pre_task(**bind_arguments("pre_task", pre_task, values, builders))
        arguments = bind_arguments("task", task, values, builders)
        result = task(
            **{name: on_device(value, params.device) for name, value in arguments.items()}
        )
    except DetflowError:
        raise
    except Exception as error:
        raise DetflowError(
            f"task {params.task} failed on torch_seed {seed}: {one_line(error)}"
        ) from error
    return storable_outputs(params.task, result)


def stack_seeds(
    task_name: str, seeds: Sequence[int], outputs: Sequence[dict[str, Output]]
) -> dict[str, Output]:
    """Stack each result over seeds; every seed must return the same names, shapes and dtypes."""
    first = outputs[0]
    for seed, output in zip(seeds[1:], outputs[1:], strict=True):
        if output.keys() != first.keys():
            raise DetflowError(
                f"task {task_name} returned keys {sorted(output)} for torch_seed {seed} but "
                f"{sorted(first)} for torch_seed {seeds[0]}: return the same keys for every seed"
            )
        for name, value in output.items():
            if value.describe() != first[name].describe():
                raise DetflowError(
                    f"task {task_name} returned '{name}' as {value.describe()} for "
                    f"torch_seed {seed} but {first[name].describe()} for "
                    f"torch_seed {seeds[0]}: return the same shape and dtype for every seed"
                )
    return {
        name: Output(np.stack([output[name].array for output in outputs]), first[name].dims)
        for name in first
    }


def provenance(device: str, portable: bool) -> dict[str, str]:
    """The software, hardware and settings that produced the numbers.

    Read after the last seed ran, so the settings are those the pre-task left in force.
    Nothing here differs between two runs on the same machine.
    """
    import torch

    from detflow.cpu import cpu_provenance
    from detflow.seeding import deterministic_settings

    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    if device.startswith("cuda"):
        device_name = torch.cuda.get_device_name(device)
    else:
        device_name = platform.processor() or platform.machine()
    return {
        "torch_version": torch.__version__,
        "numpy_version": np.__version__,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "device": device,
        "device_name": device_name,
        "cuda_version": str(torch.version.cuda),
        "cudnn_version": str(cudnn),
        "portable": str(portable),
        **cpu_provenance(),
        **deterministic_settings(),
    }


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
    return Trial(variables, coords, attrs)


def check_configs(params: Params) -> None:
    """Fail before any work if a Hydra config in params cannot be built."""
    for key, value in params.values.items():
        if is_config(value):
            check_config(key, value)


def check_device(device: str) -> None:
    """Fail before any work if the device param names a device this machine lacks."""
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DetflowError(f"device '{device}' is not available on this machine: set device: cpu")


def seed_runner(params: Params) -> Callable[[int], dict[str, Output]]:
    """Check and import what params name, once; return the per-seed function (seed, build, run)."""
    check_device(params.device)
    pre_task = import_function("pre_task", params.pre_task) if params.pre_task else None
    task = import_function("task", params.task)
    check_configs(params)
    builders = {key: config_builder(key, v) for key, v in params.values.items() if is_config(v)}
    return functools.partial(
        run_seed, params=params, pre_task=pre_task, task=task, builders=builders
    )


def compute_trial(params: Params, params_file: Path = DEFAULT_PARAMS, out: Path | None = None):
    """Run every seed of one trial, in this process or as jobs of ``params.launcher``."""
    run = seed_runner(params)  # fails here, before any job starts, on a bad config
    if params.launcher is None:
        outputs = [run(seed) for seed in params.torch_seeds]
        attrs = provenance(params.device, params.portable)
    else:
        from detflow.launch import launch_seeds

        # Beside the output, where cluster jobs can see it too.
        work_dir = out.parent if out is not None else Path(tempfile.gettempdir())
        outputs, attrs = launch_seeds(params, params_file, work_dir)
    stacked = stack_seeds(params.task, params.torch_seeds, outputs)
    return layout_trial(params.torch_seeds, stacked, attrs)


def run_trial(params: Params, params_file: Path = DEFAULT_PARAMS):
    """Run one trial and return it as an ``xarray.Dataset`` (for tests and scripts)."""
    return compute_trial(params, params_file).to_dataset()


def main(argv: Sequence[str] | None = None) -> int:
    parser = stage_parser(__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS, help="params file")
    parser.add_argument("--out", type=Path, required=True, help="netCDF file to write")
    args = parser.parse_args(argv)

    from detflow.artifact import write_arrays

    params = load_params(args.params)
    if params.portable:
        from detflow.cpu import pin_portable_cpu_path

        pin_portable_cpu_path()  # before anything imports torch
    trial = compute_trial(params, args.params, args.out)
    write_arrays(args.out, trial.variables, trial.coords, trial.attrs)
    sizes = {dim: len(values) for dim, values in trial.coords.items()}
    print(f"wrote {args.out}: {sizes}")
    return 0


if __name__ == "__main__":
    run_main(main)
