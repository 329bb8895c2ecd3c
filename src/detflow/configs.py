"""Hydra configs and dotted paths in params.yaml: located as Hydra locates them, and checked
before any work (the one place configs are checked)."""

from __future__ import annotations

import functools
import importlib
import inspect
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from detflow.cli import DetflowError, one_line


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
        reason, fix, cause = why_not(dotted_path)
        raise DetflowError(f"{key} '{dotted_path}' does not import: {reason}: {fix}") from (
            cause or error
        )
    finally:
        hydra_log.disabled = was_disabled


FIX_PATH = "fix the dotted path"


def why_not(dotted_path: str) -> tuple[str, str, BaseException | None]:
    """Why ``dotted_path`` does not import, and the fix: a module that raises while importing
    (its own error, not the path's), a module or name that does not exist, or a file that
    exists in the workspace but not in this copy of the commit (a queued experiment's)."""
    parts = dotted_path.split(".")
    found, length = None, 0
    for length in range(1, len(parts) + 1):
        name = ".".join(parts[:length])
        try:
            found = importlib.import_module(name)
        except ModuleNotFoundError as error:
            if error.name != name and module_file(name) is not None:
                return raised_while_importing(name, error)  # a missing dependency inside it
            if error.name != name or found is None:
                return one_line(error), missing_fix(error.name or name), error
            length -= 1
            break
        except Exception as error:  # the module exists but raises on import
            return raised_while_importing(name, error)
    owner = ".".join(parts[:length])
    for part in parts[length:]:
        if not hasattr(found, part):
            missing = f"{owner}.{part}" if hasattr(found, "__path__") else owner
            return f"module '{owner}' has no '{part}'", missing_fix(missing), None
        found, owner = getattr(found, part), f"{owner}.{part}"
    return "it resolves, but Hydra could not load it", FIX_PATH, None


def module_file(name: str) -> str | None:
    """The file module ``name`` loads from, relative to the project when inside it."""
    import importlib.util
    import os

    try:
        spec = importlib.util.find_spec(name)
    except Exception:  # a parent that fails to import, or is not a package
        return None
    if spec is None or not spec.origin or not os.path.exists(spec.origin):
        return None
    path = Path(spec.origin)
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)


def raised_while_importing(name: str, error: BaseException) -> tuple[str, str, BaseException]:
    file = module_file(name) or name
    return (
        f"importing {file} raised {one_line(error)}",
        f"fix {file} (DETFLOW_VERBOSE=1 shows the traceback)",
        error,
    )


# DVC runs a queued experiment in a copy of the commit at <workspace>/.dvc/tmp/exps/<tmp>/.
EXPERIMENT_COPY = (".dvc", "tmp", "exps")


def missing_fix(module: str) -> str:
    """How to fix a module that does not exist here: commit it, if it is a file of the
    workspace that this copy lacks; else fix the path."""
    relative = module.replace(".", "/")
    candidates = (f"{relative}.py", f"{relative}/__init__.py")
    cwd = Path.cwd()
    parts = cwd.parts
    for start in range(len(parts) - len(EXPERIMENT_COPY)):
        if parts[start : start + len(EXPERIMENT_COPY)] == EXPERIMENT_COPY:
            workspace = Path(*parts[:start])
            for candidate in candidates:
                if (workspace / candidate).exists() and not (cwd / candidate).exists():
                    return (
                        f"{candidate} is not tracked by git: queued and remote experiments "
                        f"only see committed files; git add it"
                    )
    return FIX_PATH


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


def children(value: Any) -> list[tuple[Any, Any]]:
    """(key or index, child) of a mapping or a list inside a config; none for a scalar."""
    if isinstance(value, Mapping):
        return list(value.items())
    return list(enumerate(value)) if isinstance(value, list | tuple) else []


def interpolations(value: Any):
    """Every string inside ``value`` that OmegaConf would interpolate (``${...}``)."""
    if isinstance(value, str) and "${" in value:
        yield value
    for _, child in children(value):
        yield from interpolations(child)


def config_targets(key: str, value: Any) -> dict[str, Any]:
    """Each ``_target_`` inside a config, located, by its dotted key."""
    found = {}
    if is_config(value) and isinstance(value["_target_"], str):
        found[f"{key}._target_ {value['_target_']}"] = locate(f"{key}._target_", value["_target_"])
    for name, child in children(value):
        found.update(config_targets(f"{key}.{name}", child))
    return found


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
    return any(is_config(child) or has_nested_config(child) for _, child in children(value))


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
