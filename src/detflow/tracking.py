"""Every input that shapes a trial's numbers must be a dependency of its DVC stage.

DVC reruns a stage only when a dep or a listed param changes. A task whose code, or a param it
binds, is not listed would keep its old numbers after an edit, and `dvc repro` would call them
up to date. So before any seed runs, the trial stage reads its own entry in dvc.yaml and
refuses, naming what to add, when a project-local module it runs (the task, the pre-task, a
``_target_``) is not under one of its deps, or a param it binds is not among its params.
"""

from __future__ import annotations

import hashlib
import inspect
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from detflow.cli import DetflowError
from detflow.params import parse_yaml

STAGE = "task"

# detflow's modules that a trial runs: the task stage's deps in dvc.yaml, and its code_digest.
ENGINE_MODULES = (
    "__init__",
    "artifact",
    "cli",
    "configs",
    "cpu",
    "environment",
    "executor",
    "inputs",
    "options",
    "outputs",
    "params",
    "run",
    "seeding",
    "stage_guard",
    "tasks",
    "tracking",
    "trial",
    "trial_file",
    "watch",
)


def stage_entry(dvc_yaml: Path, stage: str = STAGE) -> Mapping[str, Any] | None:
    """The stage's entry in dvc.yaml, or None where there is no such file or stage (a stage
    run by hand outside a DVC project checks nothing)."""
    if not dvc_yaml.is_file():
        return None
    entry = (parse_yaml(dvc_yaml.read_text(encoding="utf-8"), str(dvc_yaml)) or {}).get(
        "stages", {}
    )
    return entry.get(stage) if isinstance(entry, Mapping) else None


def declared_params(entry: Mapping[str, Any]) -> tuple[set[str], bool]:
    """The params.yaml keys the stage lists, and whether it tracks the whole file."""
    keys: set[str] = set()
    for item in entry.get("params") or []:
        if isinstance(item, str):
            keys.add(item)
        elif isinstance(item, Mapping):
            for file, listed in item.items():
                if Path(file).name == "params.yaml":
                    if not listed:
                        return keys, True  # `- params.yaml:` tracks every key
                    keys.update(listed)
    return keys, False


def module_file(obj: Any) -> Path | None:
    module = sys.modules.get(getattr(obj, "__module__", "") or "")
    try:
        found = inspect.getsourcefile(module) if module is not None else None
    except TypeError:  # a builtin module has no file
        return None
    return Path(found).resolve() if found else None


def project_local(path: Path, root: Path) -> bool:
    """A file of the project itself, not of an installed library (a virtual environment inside
    the project does not count)."""
    return path.is_relative_to(root) and "site-packages" not in path.parts


def check_tracked(
    root: Path, entry: Mapping[str, Any], code: Mapping[str, Any], bound: Iterable[str]
) -> None:
    """Refuse to run when ``code`` (role -> the object run) or the ``bound`` param keys are
    inputs that the stage ``entry`` does not declare."""
    deps = [(root / dep).resolve() for dep in entry.get("deps") or [] if isinstance(dep, str)]
    for role, obj in code.items():
        path = module_file(obj)
        if path is None or not project_local(path, root):
            continue
        if not any(path == dep or path.is_relative_to(dep) for dep in deps):
            relative = path.relative_to(root)
            raise DetflowError(
                f"{role} comes from {relative}, which the {STAGE} stage in dvc.yaml does not "
                f"depend on, so editing it would not rerun the trials: add `- {relative}` "
                f"(or its folder) to stages.{STAGE}.deps"
            )
    keys, everything = declared_params(entry)
    if everything:
        return
    for key in sorted(bound):
        if key not in keys:
            raise DetflowError(
                f"the {STAGE} stage binds the param '{key}', which dvc.yaml does not list for "
                f"it, so changing it would not rerun the trials: add `- {key}` to "
                f"stages.{STAGE}.params"
            )


def code_files(
    root: Path, code: Mapping[str, Any], ran: Mapping[str, Path] | None = None
) -> dict[str, str]:
    """sha256 of each source file that makes a trial's numbers, by name: detflow's engine
    (``detflow/<module>.py``), every project-local module of ``code`` and the project modules
    the task ``ran`` (helpers included), so that two results are known to come from the same
    code and, when not, which files differ (a library's version is in the provenance)."""
    import detflow

    package = Path(detflow.__file__).resolve().parent
    # The engine's modules, by package path wherever detflow is installed; the same set
    # whichever path ran (a launcher's stage process never imports the provenance modules).
    files = {f"detflow/{name}.py": package / f"{name}.py" for name in ENGINE_MODULES}
    for obj in code.values():
        path = module_file(obj)
        if path is not None and project_local(path, root) and path.parent != package:
            files[str(path.relative_to(root))] = path
    files.update(ran or {})
    return {
        name: f"sha256:{hashlib.sha256(files[name].read_bytes()).hexdigest()}"
        for name in sorted(files)
    }


def code_digest(files: Mapping[str, str]) -> str:
    """One digest of ``code_files``: equal exactly when every file and its name are."""
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(f"{name}\0".encode())
        digest.update(bytes.fromhex(files[name].removeprefix("sha256:")))
    return f"sha256:{digest.hexdigest()}"
