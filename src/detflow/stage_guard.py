"""The trial stage's guard: every input that shapes its numbers is tracked, or it refuses.

Before the seeds: the environment is the one the environment stage recorded, the code that
params name and the paths that params name are deps. While they run: what the task touches
is watched. After: every module, file and environment variable it touched is covered, and no
dep changed meanwhile. Then the attrs that say what made the numbers, for the aggregate
(which params, which config) and for collect and the cross-machine check (which code, which
environment).
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from detflow import inputs
from detflow.environment import (
    DEFAULT_OUT,
    check_recorded,
    declared_env_vars,
    process_fingerprint,
)
from detflow.params import Params, config_digest
from detflow.tracking import check_tracked, code_digest, code_files, stage_entry
from detflow.watch import Observed, watching

# Params that are axes of the result or say only how seeds ran: never attrs of a result.
NOT_ATTRS = ("torch_seed", "trial_id", "launcher")


class StageGuard:
    def __init__(self, root: Path, params: Params, out: Path) -> None:
        import detflow

        self.root, self.params, self.out = root.resolve(), params, out
        self.engine = Path(detflow.__file__).resolve().parent
        self.modules_before = set(sys.modules)
        self.declared = declared_env_vars(params.values)
        self.environment = process_fingerprint(self.declared)
        # Outside a DVC project (a stage run by hand, a test) there are no deps to check.
        self.entry = stage_entry(self.root / "dvc.yaml")
        self.deps = inputs.stage_deps(self.root, self.entry) if self.entry else []
        recorded = self.root / DEFAULT_OUT
        if self.entry is not None and any(dep == recorded.resolve() for dep in self.deps):
            check_recorded(recorded, self.environment)
        self.code: dict = {}
        self.bound: set[str] = set()
        self.state: dict[str, tuple[int, int]] = {}
        self.observed = Observed()
        self.job_modules: dict[str, Path] = {}
        self.started = time.time()

    def check_before(self) -> None:
        from detflow.run import stage_inputs

        self.code, self.bound = stage_inputs(self.params)
        if self.entry is not None:
            check_tracked(self.root, self.entry, self.code, self.bound)
            inputs.check_path_params(self.params.values, self.root, self.deps)
            self.state = inputs.dep_state(self.deps)
        self.started = time.time()

    @contextlib.contextmanager
    def watching(self) -> Iterator[None]:
        if self.entry is None:
            yield
            return
        from detflow import executor

        executor.watch_jobs(self.root)
        try:
            with watching(self.root, skip=(self.engine,)) as observed:
                yield
        finally:
            # What launcher jobs in other processes touched, beside what this process saw.
            jobs = executor.watch_jobs(None)
        observed.read |= jobs["read"]
        observed.written |= jobs["written"]
        for name, where in jobs["env"].items():
            observed.env.setdefault(name, where)
        self.job_modules = {name: Path(path) for name, path in jobs["modules"].items()}
        self.observed = observed

    def check_after(self) -> dict[str, str]:
        modules = {**self.job_modules, **inputs.module_files(self.modules_before)}
        env_read: dict[str, str] = {}
        if self.entry is not None:
            inputs.check_modules(modules, self.root, self.deps, self.engine)
            inputs.check_files(
                self.observed, modules, self.root, self.deps, self.out.parent, self.started
            )
            env_read = inputs.check_env(self.observed, self.declared)
            inputs.check_deps_unchanged(self.state, self.deps, self.root)
        return trial_record(
            self.params,
            self.root,
            self.code,
            self.bound,
            self.environment,
            inputs.project_code(modules, self.root, self.engine),
            env_read,
        )


def trial_record(
    params: Params,
    root: Path,
    code: Mapping[str, Any],
    bound: Iterable[str],
    environment: Mapping[str, str] | None,
    ran: Mapping[str, Path] | None = None,
    env_read: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """What made a trial's numbers, as its file's attrs: the code (each file's hash), the
    params it bound and their values, the config digest, the environment and the variables
    the task read."""
    files = code_files(root, code, ran)
    made_the_numbers = {
        key: params.values[key]
        for key in sorted(bound)
        if key in params.values and key not in NOT_ATTRS
    }
    record = {
        "code_digest": code_digest(files),
        "code_files": json.dumps(files, sort_keys=True),
        "bound_params": ",".join(sorted(bound)),
        "params": json.dumps(made_the_numbers, sort_keys=True, default=str),
        "config_digest": config_digest(params),
        "env_read": json.dumps(dict(env_read or {}), sort_keys=True),
    }
    if environment is not None:
        record["environment"] = json.dumps(dict(environment), sort_keys=True)
    return record


def unguarded_record(params: Params) -> dict[str, str]:
    """The record of a trial run outside the stage (a script, a test): nothing is checked,
    and no environment is recorded, since an earlier trial in the same process (its pre-task)
    may have changed it; reports then say that the result records no environment."""
    from detflow.run import stage_inputs

    code, bound = stage_inputs(params)
    return trial_record(params, Path.cwd().resolve(), code, bound, None)
