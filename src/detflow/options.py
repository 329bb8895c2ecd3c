"""A task's own options: an argument annotated with a dataclass is built from its param.

So the task, not detflow's generic params schema, says which options it takes and which
values are valid (``detflow.tasks.TrainOptions`` is an example), and a bad one stops the
stage before any seed runs, with one line that names it.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Callable, Mapping
from typing import Any

from detflow.cli import DetflowError


def options_class(function: Callable[..., Any], name: str) -> type | None:
    """The dataclass that ``function`` annotates its argument ``name`` with, if any."""
    try:
        hints = typing.get_type_hints(function)
    except Exception:  # an annotation that does not resolve: no options class to honour
        return None
    hint = hints.get(name)
    return hint if isinstance(hint, type) and dataclasses.is_dataclass(hint) else None


def build_options(key: str, options_type: type, value: Any, owner: str) -> Any:
    """A task's options dataclass from its param, or one line naming what is wrong."""
    fields = [field.name for field in dataclasses.fields(options_type)]
    if not isinstance(value, Mapping):
        raise DetflowError(f"{key} {value!r} is not a mapping: give {', '.join(fields)}")
    for name in value:
        if name not in fields:
            raise DetflowError(f"{key}.{name} is not an option of {owner}: use {', '.join(fields)}")
    for field in dataclasses.fields(options_type):
        if field.name not in value and field.default is dataclasses.MISSING:
            raise DetflowError(f"{key} has no '{field.name}': add it (see params.yaml)")
    try:
        return options_type(**value)
    except (TypeError, ValueError) as error:
        raise DetflowError(f"{key}.{error}") from error


def option_values(function: Callable[..., Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """The params that ``function`` takes as options dataclasses, built and checked."""
    owner = f"{function.__module__}.{function.__qualname__}"
    built = {}
    for name in inspect.signature(function).parameters:
        options_type = options_class(function, name)
        if options_type is not None and name in values:
            built[name] = build_options(name, options_type, values[name], owner)
    return built
