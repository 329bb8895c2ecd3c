"""Bind params to a function's arguments by name, as mushin does, instantiating Hydra configs."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from typing import Any

from detflow.cli import DetflowError, one_line


def import_object(key: str, dotted_path: str) -> Any:
    """Import ``package.module.name`` named by params key ``key``."""
    module_path, _, name = dotted_path.rpartition(".")
    try:
        module = importlib.import_module(module_path)
    except ImportError as error:
        raise DetflowError(
            f"{key} '{dotted_path}' does not import ({one_line(error)}): fix the dotted path"
        ) from error
    try:
        return getattr(module, name)
    except AttributeError:
        raise DetflowError(
            f"{key} '{dotted_path}' does not import: module '{module_path}' has no '{name}'"
        ) from None


def import_function(key: str, dotted_path: str) -> Callable[..., Any]:
    """Import a callable named by params key ``key``."""
    function = import_object(key, dotted_path)
    if not callable(function):
        raise DetflowError(f"{key} '{dotted_path}' is not callable: name a function")
    return function


def is_config(value: Any) -> bool:
    """True for a Hydra config: a mapping with a ``_target_``."""
    return isinstance(value, Mapping) and "_target_" in value


def check_config(key: str, config: Mapping[str, Any]) -> None:
    """Fail early, naming ``key``, if a config's target does not import or rejects an argument.

    Hydra would also fail, but later and with a multi-line message.
    """
    target_path = config["_target_"]
    if not isinstance(target_path, str):
        raise DetflowError(f"{key}._target_ {target_path!r} is not a dotted import path")
    target = import_object(f"{key}._target_", target_path)
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):
        return  # A builtin such as torch.arange: Hydra reports bad arguments when it calls it.
    accepts_any = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
    for name, value in config.items():
        if is_config(value):
            check_config(f"{key}.{name}", value)
        if (name.startswith("_") and name.endswith("_")) or accepts_any:
            continue
        if name not in signature.parameters:
            raise DetflowError(
                f"{key}.{name} is not an argument of {target_path}: remove it or fix its spelling"
            )


def instantiate(key: str, config: Mapping[str, Any]) -> Any:
    """Build the object a Hydra config describes; errors name the params key."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate as hydra_instantiate

    try:
        return hydra_instantiate(dict(config), _convert_="all")
    except InstantiationException as error:
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

    Trials build their objects once per seed, after the pre-task. Hydra's ``instantiate``
    costs milliseconds a call, so a flat config is resolved once with Hydra's ``_partial_``
    and the resulting ``functools.partial`` is called per seed. A config with nested configs
    (or its own ``_partial_``) is instantiated afresh each time, so that nothing inside it is
    built before the pre-task or shared between seeds.
    """
    if "_partial_" in config or has_nested_config(config):
        return lambda: instantiate(key, config)
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


def bind_arguments(
    role: str,
    function: Callable[..., Any],
    values: Mapping[str, Any],
    builders: Mapping[str, Callable[[], Any]] | None = None,
) -> dict[str, Any]:
    """Pick the arguments ``function`` names out of ``values``, instantiating Hydra configs.

    A config is built with ``builders[name]`` where given (see ``config_builder``).
    Parameters with a default may be absent from ``values``; the others must be present.

    Examples
    --------
    >>> def task(torch_seed, scale=2): return torch_seed * scale
    >>> bind_arguments("task", task, {"torch_seed": 3, "trial_id": ["a"]})
    {'torch_seed': 3}
    """
    builders = builders or {}
    arguments = {}
    for name, parameter in inspect.signature(function).parameters.items():
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        if name not in values:
            if parameter.default is parameter.empty:
                raise DetflowError(
                    f"{role} {function.__module__}.{function.__qualname__} needs '{name}', "
                    f"which params.yaml does not define: add it there and to the stage's "
                    f"params in dvc.yaml"
                )
            continue
        value = values[name]
        if name in builders:
            arguments[name] = builders[name]()
        else:
            arguments[name] = instantiate(name, value) if is_config(value) else value
    return arguments
