"""What a task returns, as arrays netCDF can hold: checked names and storable dtypes.

A task may return nested mappings (a ``state_dict()`` included): each array inside becomes one
variable named by its keys joined with ``.``, so ``{"weights": {"conv1.weight": w}}`` becomes
``weights.conv1.weight``. Where that name alone cannot say how the keys nested, the variable
keeps them in its ``detflow_key`` attr (JSON), from which ``detflow.artifact.read_nested``
rebuilds the mapping exactly as the task returned it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from detflow.cli import DetflowError, one_line

# A result name becomes a netCDF variable and a plot file: no slashes, nothing netCDF
# reserves. Dots join the keys of nested mappings, and occur in state_dict keys themselves
# (`layer1.0.weight`), so a key is words of letters, digits and '_' joined by single dots.
KEY = re.compile(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*")
RESULT_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*")
RESERVED_NAMES = {"torch_seed", "trial_id"}
STORABLE_KINDS = "biuf"  # bool, signed and unsigned int, float


class SeedResultError(DetflowError):
    """A seed's result that cannot be stored, carried with the error so that the trial
    stage can keep it beside the trial file (computed work is never thrown away)."""

    def __init__(self, message: str, seed: int, result: Any) -> None:
        super().__init__(message)
        self.message, self.seed, self.result = message, seed, result

    def __reduce__(self):  # launcher jobs pickle the error back to the stage
        return type(self), (self.message, self.seed, self.result)


@dataclass(frozen=True)
class Output:
    """One returned value as a numpy array, with the names of its axes if the task gave them."""

    array: np.ndarray
    dims: tuple[str, ...] | None
    key: tuple[str, ...] = ()  # the keys that led to it, outermost first; () for a flat name

    def describe(self) -> str:
        return f"{self.array.dtype}{list(self.array.shape)}" + (
            f" dims {list(self.dims)}" if self.dims else ""
        )


# netCDF's NC_MAX_NAME, less room for the "_dim<n>" of the name's axes.
MAX_NAME_LENGTH = 256 - len("_dim99")


def check_name(task_name: str, what: str, name: Any) -> None:
    if isinstance(name, str) and len(name) > MAX_NAME_LENGTH:
        raise DetflowError(
            f"task {task_name} returned the {what} '{name[:40]}...', {len(name)} characters "
            f"long: netCDF takes names up to {MAX_NAME_LENGTH}; use shorter keys"
        )
    if not isinstance(name, str) or not RESULT_NAME.fullmatch(name) or name in RESERVED_NAMES:
        raise DetflowError(
            f"task {task_name} returned the {what} {name!r}: use a name like 'out' or "
            f"'conv1.weight' (letters, digits, '_', single dots; a letter first), other than "
            f"{sorted(RESERVED_NAMES)}; nest a state_dict, e.g. {{'weights': model.state_dict()}}"
        )


def key_json(key: tuple[str, ...]) -> str | None:
    """The ``detflow_key`` attr of a nested result; None where the dotted name says it all
    (a top-level key), so a flat result's file holds the same bytes as before nesting."""
    return json.dumps(list(key)) if len(key) > 1 else None


def flatten(task_name: str, result: Mapping, outer: tuple[str, ...] = ()) -> Iterator:
    """(keys, value) of every leaf of nested mappings, in the order the task returned them."""
    for key, value in result.items():
        keys = (*outer, key)
        if not isinstance(key, str) or not KEY.fullmatch(key):
            where = f" inside '{'.'.join(outer)}'" if outer else ""
            raise DetflowError(
                f"task {task_name} returned the key {key!r}{where}: use string keys like "
                f"'out' or 'conv1.weight' (letters, digits, '_', single dots)"
            )
        if isinstance(value, Mapping):
            if not value:
                raise DetflowError(
                    f"task {task_name} returned '{'.'.join(keys)}' as an empty mapping: "
                    f"return arrays inside it, or leave it out"
                )
            yield from flatten(task_name, value, keys)
        else:
            yield keys, value


def as_storable(task_name: str, name: Any, value: Any, key: tuple[str, ...] = ()) -> Output:
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
    return Output(array, dims, key)


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
    """Check a task's return value: a non-empty dict of names to arrays, or to dicts of them.

    Examples
    --------
    >>> from collections import OrderedDict
    >>> state = OrderedDict([("conv1.weight", np.ones((2, 1))), ("conv1.bias", np.zeros(2))])
    >>> outputs = storable_outputs("t", {"loss": 0.5, "weights": state})
    >>> list(outputs)
    ['loss', 'weights.conv1.weight', 'weights.conv1.bias']
    >>> outputs["weights.conv1.weight"].key
    ('weights', 'conv1.weight')
    """
    if not isinstance(result, Mapping) or not result:
        raise DetflowError(
            f"task {task_name} returned {type(result).__name__}, not a dict of arrays: "
            f"return e.g. {{'out': tensor}}"
        )
    outputs: dict[str, Output] = {}
    keys_of: dict[str, tuple[str, ...]] = {}
    for keys, value in flatten(task_name, result):
        name = ".".join(keys)
        if name in outputs:
            raise DetflowError(
                f"task {task_name} returned '{name}' twice, as keys {list(keys_of[name])} and "
                f"{list(keys)}: a dotted name must be one result; rename one of them"
            )
        keys_of[name] = keys
        outputs[name] = as_storable(task_name, name, value, keys if len(keys) > 1 else ())
    return outputs
