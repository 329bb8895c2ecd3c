"""What a task returns, as arrays netCDF can hold: checked names and storable dtypes."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from detflow.cli import DetflowError, one_line

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
        value = tensor_as_array(task_name, name, value)
    try:
        array = np.asarray(value)
    except Exception as error:
        raise DetflowError(
            f"task {task_name} returned '{name}' as {type(value).__name__}, which is not an "
            f"array ({one_line(error)}): return numbers, arrays or tensors"
        ) from error
    if array.dtype.kind not in STORABLE_KINDS or array.dtype.itemsize > 8:
        raise DetflowError(
            f"task {task_name} returned '{name}' as {type(value).__name__} of dtype {array.dtype}, "
            f"which cannot be stored: return bool, int or float (16 to 64 bits) numbers, arrays "
            f"or tensors"
        )
    return Output(array, dims)


def tensor_as_array(task_name: str, name: str, tensor: Any) -> np.ndarray:
    """A tensor's values on the CPU, or one line saying why they cannot be stored."""
    layout = str(getattr(tensor, "layout", "torch.strided"))
    kind = f"a {tensor.dtype} tensor" + ("" if layout == "torch.strided" else f" ({layout})")
    if getattr(tensor, "is_meta", False):
        fix = "a meta tensor has no values; return a real one"
    elif layout != "torch.strided":
        fix = "return it dense, e.g. tensor.to_dense()"
    else:
        fix = "return a dtype numpy holds, e.g. tensor.float() for bfloat16"
    try:
        return tensor.detach().cpu().numpy()
    except Exception as error:
        raise DetflowError(
            f"task {task_name} returned '{name}' as {kind}, which cannot be stored "
            f"({one_line(error)}): {fix}"
        ) from error


def storable_outputs(task_name: str, result: Any) -> dict[str, Output]:
    """Check a task's return value: a non-empty dict of names to arrays."""
    if not isinstance(result, Mapping) or not result:
        raise DetflowError(
            f"task {task_name} returned {type(result).__name__}, not a dict of arrays: "
            f"return e.g. {{'out': tensor}}"
        )
    return {name: as_storable(task_name, name, value) for name, value in result.items()}
