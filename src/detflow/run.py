"""The per-seed run: seed (the pre-task), build the objects from config, run the task.

Each argument of the pre-task and the task is bound by name from the params, as mushin binds
them, and a Hydra config (a mapping with ``_target_``) is instantiated after the pre-task,
afresh for every seed. Every seed gets its own copy of the params, so a task that mutates an
input cannot change the next seed's. What the task returns becomes storable arrays
(``detflow.outputs``); ``provenance`` says where the numbers came from.
"""

from __future__ import annotations

import copy
import functools
import importlib
import inspect
import logging
import platform
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from detflow.cli import DetflowError, one_line
from detflow.options import option_values
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
        interpolation = next(interpolations(value), None)
        if interpolation is not None:
            raise DetflowError(
                f"{key}.{name} holds {interpolation!r}, an interpolation: an input DVC does "
                f"not track (an environment variable, another key); write the value itself"
            )
        if is_config(value):
            check_config(f"{key}.{name}", value)
        if (name.startswith("_") and name.endswith("_")) or accepts_any:
            continue
        if name not in signature.parameters:
            raise DetflowError(
                f"{key}.{name} is not an argument of {target_path}: remove it or fix its spelling"
            )


def interpolations(value: Any):
    """Every string inside ``value`` that OmegaConf would interpolate (``${...}``)."""
    if isinstance(value, str):
        if "${" in value:
            yield value
    elif isinstance(value, Mapping | list | tuple):
        for child in value.values() if isinstance(value, Mapping) else value:
            yield from interpolations(child)


def check_device(device: str) -> None:
    """Fail before any work if the device param names a device this machine lacks."""
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DetflowError(f"device '{device}' is not available on this machine: set device: cpu")


def on_device(value: Any, device: str) -> Any:
    """Move built modules and tensors to ``device``; leave everything else alone."""
    import torch

    return value.to(device) if isinstance(value, torch.nn.Module | torch.Tensor) else value


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


def instantiate(key: str, config: Mapping[str, Any]) -> Any:
    """Build the object a Hydra config describes; errors name the params key."""
    from hydra.utils import instantiate as hydra_instantiate

    try:
        return hydra_instantiate(dict(config), _convert_="all")
    except Exception as error:  # Hydra's InstantiationException, or the target's own error
        cause = error.__cause__ or error
        raise DetflowError(
            f"{key}: cannot instantiate {config.get('_target_')} ({one_line(cause)}): "
            f"fix its arguments in params.yaml"
        ) from error


def has_nested_config(value: Any) -> bool:
    """True if a config holds another config anywhere inside it."""
    if not isinstance(value, Mapping | list | tuple):
        return False
    children = value.values() if isinstance(value, Mapping) else value
    return any(is_config(child) or has_nested_config(child) for child in children)


def config_builder(key: str, config: Mapping[str, Any]) -> Callable[[], Any]:
    """A zero-argument function that builds a fresh object from ``config`` on each call.

    Hydra's ``instantiate`` costs milliseconds a call, so a flat config is resolved once with
    Hydra's ``_partial_`` and the ``functools.partial`` it gives is called per seed. A config
    with nested configs (or its own ``_partial_``) is instantiated afresh each time, so that
    nothing inside it is built before the pre-task or shared between seeds.
    """
    if "_partial_" in config or has_nested_config(config):
        return functools.partial(instantiate, key, config)
    factory = instantiate(key, {**config, "_partial_": True})

    def build() -> Any:
        try:
            return factory()
        except Exception as error:
            raise DetflowError(
                f"{key}: cannot instantiate {config['_target_']} ({one_line(error)}): "
                f"fix its arguments in params.yaml"
            ) from error

    return build


def bind(
    function: Callable[..., Any],
    values: Mapping[str, Any],
    builders: Mapping[str, Callable[[], Any]],
) -> dict[str, Any]:
    """The arguments ``function`` names, from ``values``: configs built afresh by their
    builder, anything else deep-copied, so that what one seed changes the next never sees.

    Examples
    --------
    >>> def task(torch_seed, scale=2): return torch_seed * scale
    >>> bind(task, {"torch_seed": 3, "trial_id": ["a"]}, {})
    {'torch_seed': 3}
    """
    arguments = {}
    for name, parameter in inspect.signature(function).parameters.items():
        if name not in values or parameter.kind in (
            parameter.VAR_POSITIONAL,
            parameter.VAR_KEYWORD,
        ):
            continue
        arguments[name] = builders[name]() if name in builders else copy.deepcopy(values[name])
    return arguments


def seed_runner(params: Params) -> Callable[[int], dict[str, Output]]:
    """Check and import what params name, once; return the per-seed run (seed, build, task).

    Binding is by name, as mushin's ``zen`` binds, but without ``zen``: zen instantiates
    through a fresh OmegaConf config per call, 2.6 ms a seed against 0.6 ms here
    (`README.md`, Performance).
    """
    check_device(params.device)
    pre_task = locate_function("pre_task", params.pre_task) if params.pre_task else None
    task = locate_function("task", params.task)
    # The seed list is replaced per seed, so a sweep's length never enters a seed's values.
    values = {**params.values, "torch_seed": 0, "device": params.device}
    for role, function in (("pre_task", pre_task), ("task", task)):
        if function is not None:
            check_arguments(role, function, values)
            values.update(option_values(function, values))
    builders = {}
    for key, value in params.values.items():
        if is_config(value):
            check_config(key, value)
            builders[key] = config_builder(key, value)

    def run_seed(seed: int) -> dict[str, Output]:
        seed_values = {**values, "torch_seed": seed}
        try:
            if pre_task is not None:
                pre_task(**bind(pre_task, seed_values, builders))
            arguments = bind(task, seed_values, builders)
            result = task(**{name: on_device(v, params.device) for name, v in arguments.items()})
        except DetflowError:
            raise
        except Exception as error:
            raise DetflowError(
                f"task {params.task} failed on torch_seed {seed}: {one_line(error)}"
            ) from error
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
