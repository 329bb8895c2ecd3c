"""The per-seed run: seed (the pre-task), build the objects from config, run the task.

Binding is hydra-zen's ``zen``, as mushin binds: each argument of the pre-task and the task is
taken by name from the params, and a Hydra config (a mapping with ``_target_``) is
instantiated after the pre-task, afresh for every seed. Every seed gets its own copy of the
params, so a task that mutates an input cannot change the next seed's. What the task returns
becomes storable arrays (``detflow.outputs``); ``provenance`` says where the numbers came from.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import logging
import platform
import re
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from detflow.cli import DetflowError, one_line
from detflow.outputs import Output, storable_outputs
from detflow.params import Params


def locate(key: str, dotted_path: str) -> Any:
    """Import what params key ``key`` names, as Hydra resolves a ``_target_``
    (``pkg.module.Class.method`` included)."""
    from hydra.utils import get_object

    # get_object logs its multi-line explanation before raising; the one line below says it.
    hydra_log = logging.getLogger("hydra.utils")
    was_disabled, hydra_log.disabled = hydra_log.disabled, True
    try:
        return get_object(dotted_path)
    except Exception as error:
        raise DetflowError(
            f"{key} '{dotted_path}' does not import: {why_not(dotted_path)}: fix the dotted path"
        ) from error
    finally:
        hydra_log.disabled = was_disabled


def why_not(dotted_path: str) -> str:
    """Why ``dotted_path`` does not import: the module that fails, or the name it lacks."""
    parts = dotted_path.split(".")
    found, length = None, 0
    for length in range(1, len(parts) + 1):
        name = ".".join(parts[:length])
        try:
            found = importlib.import_module(name)
        except ModuleNotFoundError as error:
            if error.name != name or found is None:  # a real failure, not "not a module"
                return one_line(error)
            length -= 1
            break
        except Exception as error:  # the module exists but raises on import
            return one_line(error)
    owner = ".".join(parts[:length])
    for part in parts[length:]:
        if not hasattr(found, part):
            return f"module '{owner}' has no '{part}'"
        found, owner = getattr(found, part), f"{owner}.{part}"
    return "it resolves, but Hydra could not load it"


def locate_function(key: str, dotted_path: str) -> Callable[..., Any]:
    function = locate(key, dotted_path)
    if not callable(function):
        raise DetflowError(f"{key} '{dotted_path}' is not callable: name a function")
    return function


def is_config(value: Any) -> bool:
    """True for a Hydra config: a mapping with a ``_target_``."""
    return isinstance(value, Mapping) and "_target_" in value


def check_config(key: str, config: Mapping[str, Any]) -> None:
    """Fail before any work, naming ``key``, if a config's target does not import or does not
    take one of its arguments. The one place configs are checked."""
    target_path = config["_target_"]
    if not isinstance(target_path, str) or "." not in target_path:
        raise DetflowError(
            f"{key}._target_ {target_path!r} is not a dotted import path: give e.g. torch.nn.Linear"
        )
    target = locate(f"{key}._target_", target_path)
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):
        signature = None  # A builtin such as torch.arange: Hydra reports bad arguments itself.
    accepts_any = signature is None or any(
        p.kind is p.VAR_KEYWORD for p in signature.parameters.values()
    )
    for name, value in config.items():
        if is_config(value):
            check_config(f"{key}.{name}", value)
        if (name.startswith("_") and name.endswith("_")) or accepts_any:
            continue
        if name not in signature.parameters:
            raise DetflowError(
                f"{key}.{name} is not an argument of {target_path}: remove it or fix its spelling"
            )


def check_device(device: str) -> None:
    """Fail before any work if the device param names a device this machine lacks."""
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DetflowError(f"device '{device}' is not available on this machine: set device: cpu")


def on_device(task: Callable[..., Any], device: str) -> Callable[..., Any]:
    """``task`` with its built modules and tensors moved to ``device`` first (same signature,
    so that ``zen`` binds the same arguments)."""
    import torch

    @functools.wraps(task)
    def moved(*args: Any, **kwargs: Any) -> Any:
        def move(value: Any) -> Any:
            return value.to(device) if isinstance(value, torch.nn.Module | torch.Tensor) else value

        return task(*map(move, args), **{name: move(value) for name, value in kwargs.items()})

    return moved


def check_arguments(role: str, function: Callable[..., Any], values: Mapping[str, Any]) -> None:
    """Every argument without a default must be a key of params.yaml."""
    for name, parameter in inspect.signature(function).parameters.items():
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        if name not in values and parameter.default is parameter.empty:
            raise DetflowError(
                f"{role} {function.__module__}.{function.__qualname__} needs '{name}', "
                f"which params.yaml does not define: add it there and to the stage's "
                f"params in dvc.yaml"
            )


FULL_KEY = re.compile(r"full_key: (\S+)")


def failure(params: Params, seed: int, error: Exception) -> DetflowError:
    """One line for what went wrong in a seed: a config that does not build, or the task."""
    from hydra.errors import InstantiationException

    if isinstance(error, InstantiationException):
        key = FULL_KEY.search(str(error))
        name = key.group(1) if key else "a config"
        config = params.values.get(name, {})
        target = config.get("_target_") if isinstance(config, Mapping) else None
        return DetflowError(
            f"{name}: cannot instantiate {target} ({one_line(error.__cause__ or error)}): "
            f"fix its arguments in params.yaml"
        )
    return DetflowError(f"task {params.task} failed on torch_seed {seed}: {one_line(error)}")


def seed_runner(params: Params) -> Callable[[int], dict[str, Output]]:
    """Check and import what params name, once; return the per-seed run (seed, build, task)."""
    from hydra_zen import zen

    check_device(params.device)
    pre_task = locate_function("pre_task", params.pre_task) if params.pre_task else None
    task = locate_function("task", params.task)
    for key, value in params.values.items():
        if is_config(value):
            check_config(key, value)
    # The seed list is replaced per seed, so a sweep's length never enters a seed's config.
    values = {**params.values, "torch_seed": 0, "device": params.device}
    if pre_task is not None:
        check_arguments("pre_task", pre_task, values)
    check_arguments("task", task, values)
    run = zen(
        on_device(task, params.device),
        pre_call=zen(pre_task) if pre_task is not None else None,
    )

    def run_seed(seed: int) -> dict[str, Output]:
        try:
            # zen copies this mapping into a fresh config: nothing a seed does leaks onward.
            result = run({**values, "torch_seed": seed})
        except DetflowError:
            raise
        except Exception as error:
            raise failure(params, seed, error) from error
        return storable_outputs(params.task, result)

    return run_seed


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
