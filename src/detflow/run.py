"""The per-seed run: seed (the pre-task), build the objects from config, run the task.

Each argument of the pre-task and the task is bound by name from the params, as mushin binds
them, and a Hydra config (a mapping with ``_target_``) is instantiated after the pre-task,
afresh for every seed. Every seed gets its own copy of the params, so a task that mutates an
input cannot change the next seed's. What the task returns becomes storable arrays
(``detflow.outputs``); ``provenance`` says where the numbers came from.

The seed reaches a function through ``torch_seed``, or, where it takes no ``torch_seed``,
through an argument named ``seed`` (Lightning's ``seed_everything(seed=None)``, NumPy's
``np.random.seed``); a pre-task that takes neither is refused, never run with one seed for all.
"""

from __future__ import annotations

import copy
import inspect
import platform
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from detflow.cli import DetflowError, one_line
from detflow.configs import check_config, config_builder, config_targets, is_config, locate_function
from detflow.options import option_values
from detflow.outputs import Output, SeedResultError, storable_outputs
from detflow.params import Params


def check_device(device: str) -> None:
    """Fail before any work if the device param names a device this machine lacks."""
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DetflowError(f"device '{device}' is not available on this machine: set device: cpu")


def on_device(value: Any, device: str) -> Any:
    """Move built modules and tensors to ``device``; leave everything else alone."""
    import torch

    return value.to(device) if isinstance(value, torch.nn.Module | torch.Tensor) else value


def parameters(label: str, function: Callable[..., Any]) -> Mapping[str, inspect.Parameter]:
    """The arguments detflow binds by name, or one line saying it cannot read them
    (``label`` names the function, e.g. ``pre_task numpy.random.seed``)."""
    try:
        return inspect.signature(function).parameters
    except (TypeError, ValueError) as error:
        raise DetflowError(
            f"{label} has no signature detflow can read "
            f"({one_line(error)}): wrap it in a function of torch_seed in tasks/"
        ) from error


def describe(function: Callable[..., Any]) -> str:
    module = getattr(function, "__module__", None)
    name = getattr(function, "__qualname__", None) or type(function).__name__
    return f"{module}.{name}" if module else name


# The name a function may take the seed by when it takes no `torch_seed`.
SEED_ALIAS = "seed"


def seed_argument(
    role: str, function: Callable[..., Any], values: Mapping[str, Any], path: str | None = None
) -> str | None:
    """The argument the seed reaches ``function`` (named ``path`` in params.yaml) by:
    ``torch_seed``, else ``seed``.

    Examples
    --------
    >>> def seed_everything(seed=None, workers=False): ...
    >>> seed_argument("pre_task", seed_everything, {"torch_seed": 0})
    'seed'
    """
    named = path or describe(function)
    names = parameters(f"{role} {named}", function)
    if "torch_seed" in names:
        return "torch_seed"
    if SEED_ALIAS in names:
        if SEED_ALIAS in values:
            raise DetflowError(
                f"{role} {named} takes its seed as '{SEED_ALIAS}', which "
                f"params.yaml sets to {values[SEED_ALIAS]!r} for every torch_seed: remove "
                f"'{SEED_ALIAS}' from params.yaml, and it receives torch_seed"
            )
        return SEED_ALIAS
    if role == "pre_task":
        raise DetflowError(
            f"pre_task {named} takes neither torch_seed nor seed, so every "
            f"torch_seed would start alike: give it a torch_seed argument (or set pre_task: null)"
        )
    return None


def check_arguments(role: str, function: Callable[..., Any], values: Mapping[str, Any]) -> None:
    """Every argument without a default must be a key of params.yaml (or the seed)."""
    names = parameters(f"{role} {describe(function)}", function)
    for name, parameter in names.items():
        if name == SEED_ALIAS and SEED_ALIAS not in values and "torch_seed" not in names:
            continue  # the seed goes there
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        if name not in values and parameter.default is parameter.empty:
            raise DetflowError(
                f"{role} {function.__module__}.{function.__qualname__} needs '{name}', "
                f"which params.yaml does not define: add it to params.yaml"
            )


def bind(
    function: Callable[..., Any],
    values: Mapping[str, Any],
    builders: Mapping[str, Callable[[], Any]],
    seed_as: str | None = "torch_seed",
) -> dict[str, Any]:
    """The arguments ``function`` names, from ``values``: configs built afresh by their
    builder, anything else deep-copied, so that what one seed changes the next never sees.
    ``seed_as`` (from ``seed_argument``) is the name the seed, ``values["torch_seed"]``, goes by.

    Examples
    --------
    >>> def task(torch_seed, scale=2): return torch_seed * scale
    >>> bind(task, {"torch_seed": 3, "trial_id": ["a"]}, {})
    {'torch_seed': 3}
    >>> def seed_everything(seed=None, workers=False): ...
    >>> bind(seed_everything, {"torch_seed": 3}, {}, seed_as="seed")
    {'seed': 3}
    """
    if seed_as is not None and seed_as != "torch_seed":
        values = {**values, seed_as: values["torch_seed"]}
    arguments = {}
    for name, parameter in inspect.signature(function).parameters.items():
        if name not in values or parameter.kind in (
            parameter.VAR_POSITIONAL,
            parameter.VAR_KEYWORD,
        ):
            continue
        arguments[name] = builders[name]() if name in builders else copy.deepcopy(values[name])
    return arguments


# Params the stage itself reads to make the numbers, whatever the task binds.
STAGE_KEYS = ("torch_seed", "pre_task", "task", "device", "portable")


def stage_inputs(params: Params) -> tuple[dict[str, Any], set[str]]:
    """What shapes a trial's numbers: the code it runs (by role: the task, the pre-task, each
    ``_target_``) and the param keys it reads or binds."""
    code: dict[str, Any] = {}
    bound = set(STAGE_KEYS)
    if params.pre_task:
        code[f"pre_task {params.pre_task}"] = locate_function("pre_task", params.pre_task)
    code[f"task {params.task}"] = locate_function("task", params.task)
    for label, function in list(code.items()):
        for name in parameters(label, function):
            if name in params.values:
                bound.add(name)
    for key in sorted(bound):
        value = params.values.get(key)
        if is_config(value):
            code.update(config_targets(key, value))
    return code, bound


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
    seed_as = {}
    for role, function, path in (
        ("pre_task", pre_task, params.pre_task),
        ("task", task, params.task),
    ):
        if function is not None:
            seed_as[role] = seed_argument(role, function, values, path)
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
                pre_task(**bind(pre_task, seed_values, builders, seed_as["pre_task"]))
            arguments = bind(task, seed_values, builders, seed_as["task"])
            result = task(**{name: on_device(v, params.device) for name, v in arguments.items()})
        except DetflowError:
            raise
        except Exception as error:
            raise DetflowError(
                f"task {params.task} failed on torch_seed {seed}: {one_line(error)}"
            ) from error
        try:
            return storable_outputs(params.task, result)
        except DetflowError as error:  # the work is done: the trial stage keeps the result
            raise SeedResultError(str(error), seed, result) from error

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
