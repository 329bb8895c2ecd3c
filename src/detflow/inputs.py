"""After the seeds ran: was every input the task touched a dependency of its stage?

``detflow.watch`` observes what the task opened and which environment variables its code read;
``sys.modules`` says which modules it ran. Each of them must be covered by the stage's deps in
dvc.yaml (or, for a variable, declared in `env_vars`, which the environment stage records),
else the stage refuses, naming what to add: a result made from an untracked input would be
called up to date after that input changed. And no dep may change while the stage runs, since
DVC hashes deps only after the command ends.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from detflow.cli import DetflowError
from detflow.tracking import STAGE, project_local
from detflow.watch import Observed

# Files a stage reads by design: its params and its own definition.
STAGE_FILES = ("params.yaml", "dvc.yaml", "dvc.lock")

# Params whose strings are names of things, never paths.
NOT_PATH_PARAMS = ("torch_seed", "trial_id", "task", "pre_task", "launcher", "device", "env_vars")


def stage_deps(root: Path, entry: Mapping[str, Any]) -> list[Path]:
    return [(root / dep).resolve() for dep in entry.get("deps") or [] if isinstance(dep, str)]


def covered(path: Path, deps: Sequence[Path]) -> bool:
    return any(path == dep or path.is_relative_to(dep) for dep in deps)


def shown(path: Path, root: Path) -> str:
    """A path as dvc.yaml would list it: relative inside the project, absolute outside."""
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def add_dep(path: Path, root: Path, why: str, dep: Path | None = None) -> DetflowError:
    """``dep``: what to add, when not ``path`` itself (a package's folder); without it the
    input is data, and inputs/ is its conventional place."""
    where = "" if dep is not None else " (or put data under inputs/, which the stage depends on)"
    return DetflowError(
        f"{why}, which the {STAGE} stage in dvc.yaml does not depend on, so changing it would "
        f"not rerun the trials: add `- {shown(dep or path, root)}` to stages.{STAGE}.deps{where}"
    )


def code_dep(path: Path, root: Path) -> Path:
    """What to depend on for a module: its top-level package's folder, or the file itself."""
    top = root / path.relative_to(root).parts[0]
    return top if top.is_dir() and (top / "__init__.py").is_file() else path


# --------------------------------------------------------------------------- before running


def path_params(values: Mapping[str, Any], root: Path) -> Iterable[tuple[str, Path]]:
    """(dotted key, path) for each param string that names a file or folder that exists."""

    def walk(key: str, value: Any) -> Iterable[tuple[str, Path]]:
        if isinstance(value, Mapping):
            for child_key, child in value.items():
                yield from walk(f"{key}.{child_key}", child)
        elif isinstance(value, list):
            for n, child in enumerate(value):
                yield from walk(f"{key}[{n}]", child)
        elif isinstance(value, str) and value.strip() not in ("", ".", "..") and "\n" not in value:
            candidate = Path(value) if os.path.isabs(value) else root / value
            try:
                if candidate.exists():
                    yield key, candidate.resolve()
            except OSError:  # a string too long to be a path
                return

    for key, value in values.items():
        if key not in NOT_PATH_PARAMS:
            yield from walk(key, value)


def check_path_params(values: Mapping[str, Any], root: Path, deps: Sequence[Path]) -> None:
    """A param that names a data file or folder (``root: data/mnist``) is an input too."""
    for key, path in path_params(values, root):
        if not covered(path, deps) and path.name not in STAGE_FILES:
            raise add_dep(path, root, f"the param {key} names {shown(path, root)}")


def dep_state(deps: Sequence[Path]) -> dict[str, tuple[int, int]]:
    """(size, mtime) of every file under the deps, to tell whether one changed during the run
    (``__pycache__`` is Python's, rewritten by any import)."""
    state: dict[str, tuple[int, int]] = {}
    for dep in deps:
        files = [dep] if dep.is_file() else sorted(p for p in dep.rglob("*") if p.is_file())
        for file in files:
            if "__pycache__" in file.parts:
                continue
            try:
                stat = file.stat()
            except OSError:
                continue
            state[str(file)] = (stat.st_size, stat.st_mtime_ns)
    return state


def check_deps_unchanged(before: Mapping[str, tuple[int, int]], deps: Sequence[Path], root: Path):
    after = dep_state(deps)
    for path in sorted(before.keys() | after.keys()):
        if before.get(path) != after.get(path):
            raise DetflowError(
                f"{shown(Path(path), root)} changed while this stage ran, so its results may come "
                f"from the file as it was before: run `dvc repro` again once nothing is editing it"
            )


# ---------------------------------------------------------------------------- after running


def module_files(before: Iterable[str]) -> dict[str, Path]:
    """Module name -> source file, for every module imported since ``before`` was taken."""
    found: dict[str, Path] = {}
    known = set(before)
    for name, module in list(sys.modules.items()):
        if name in known:
            continue
        file = getattr(module, "__file__", None)
        # Only real source files: torch.classes, for one, names a file that is not there.
        if isinstance(file, str) and file.endswith(".py") and os.path.isabs(file):
            found[name] = Path(file).resolve()
    return found


def owned_files() -> set[Path]:
    """Every file an installed distribution lists (slow: only asked about strays)."""
    from importlib import metadata

    owned: set[Path] = set()
    for dist in metadata.distributions():
        for file in dist.files or []:
            owned.add(Path(str(dist.locate_file(file))).resolve())
    return owned


def check_modules(modules: Mapping[str, Path], root: Path, deps: Sequence[Path], engine: Path):
    """Project code the task ran must be a dep; code outside it must belong to a package."""
    from detflow.watch import installation_roots

    installed = tuple(Path(p) for p in installation_roots())
    strays = []
    for name, path in sorted(modules.items()):
        if path.is_relative_to(engine):
            continue  # detflow's engine: its own deps, and code_digest
        if project_local(path, root):
            if not covered(path, deps):
                why = f"the task ran module {name} from {shown(path, root)}"
                raise add_dep(path, root, why, code_dep(path, root))
        elif not any(path.is_relative_to(p) for p in installed):
            strays.append((name, path))
    if strays:
        owned = owned_files()
        for name, path in strays:
            if path not in owned:
                raise DetflowError(
                    f"the task ran module {name} from {path}, outside the project and owned by "
                    f"no installed package, so editing it would not rerun the trials: move it "
                    f"into tasks/ (or install it as a package)"
                )


def project_code(modules: Mapping[str, Path], root: Path, engine: Path) -> dict[str, Path]:
    """The project's own modules the task ran, by path relative to the project."""
    return {
        str(path.relative_to(root)): path
        for path in modules.values()
        if project_local(path, root) and not path.is_relative_to(engine)
    }


def fresh_temporary(path: Path, started: float) -> bool:
    """A file in the temp folder made during the run, or gone since: scratch, not an input."""
    try:
        return path.stat().st_mtime >= started
    except OSError:
        return True


def check_files(
    observed: Observed,
    modules: Mapping[str, Path],
    root: Path,
    deps: Sequence[Path],
    outputs: Path,
    started: float,
) -> None:
    """Files read must be deps; files written inside the project must be the outputs."""
    code = {str(path) for path in modules.values()}
    temporary = Path(tempfile.gettempdir()).resolve()
    for name in sorted(observed.written):
        path = Path(name)
        if not path.is_relative_to(root) or not project_local(path, root):
            continue
        scratch = path.is_relative_to(outputs) and any(
            part.endswith(".tmp") for part in path.relative_to(outputs).parts
        )
        if not scratch:
            raise DetflowError(
                f"the task wrote {shown(path, root)}, inside the project but not an output of "
                f"its stage: a later seed or run that reads it back is shaped by an input no "
                f"one tracks (a cache); write it under a temporary folder instead "
                f"(tempfile.mkdtemp()), or return it as a result"
            )
    for name in sorted(observed.read - observed.written - code):
        path = Path(name)
        if path.name in STAGE_FILES and path.parent == root:
            continue
        if path.suffix == ".py" or not path.is_file():
            # Source read by linecache (warnings, tracebacks) is code, which check_modules
            # covers when it runs; a folder or a file gone since is no content to track.
            continue
        if path.is_relative_to(temporary) and fresh_temporary(path, started):
            continue
        if path.is_relative_to(root) and not project_local(path, root):
            continue  # a virtual environment inside the project: installed code
        if not covered(path, deps):
            raise add_dep(path, root, f"the task read {shown(path, root)}")


def check_env(observed: Observed, declared: Iterable[str]) -> dict[str, str]:
    """Variables the task's code read must be declared; returns name -> value read."""
    allowed = set(declared)
    for name, where in sorted(observed.env.items()):
        if name not in allowed:
            raise DetflowError(
                f"{where} reads the environment variable {name}, which params.yaml does not "
                f"declare, so changing it would not rerun the trials: add it to env_vars in "
                f"params.yaml (env_vars: [{name}])"
            )
    return {name: os.environ.get(name, "unset") for name in sorted(observed.env)}
