"""``python -m detflow.pinpoint --against REV``: where this machine first computes differently
from a commit, and the setting that made it so.

The commit carries a reference trace (``detflow.reference``). This runs the same seed here
under the same trace (a fresh ``python -m detflow.trace``), aligns the two traces and names
the first op whose outputs differ from the commit's (``against_compare``). Then, for each
bit-shaping setting in which the two runs differ (``against_cause``) that this machine can set
to the commit's value, it reruns the seed with that setting alone and says which one gives the
commit's outputs at that op and the commit's digests for the whole run; where none can (a
version, a CPU feature this machine lacks) it says that is the remaining difference and what
would make the two agree. No torch here; the runs are child processes.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from detflow.against_cause import (
    Setting,
    differing_settings,
    env_words,
    together,
    tryable,
)
from detflow.against_compare import Found, Trace, first_found
from detflow.against_report import DISK_ENVIRONMENT, AgainstReport, Tried
from detflow.cli import DetflowError
from detflow.params import config_digest, load_params
from detflow.pinpoint_report import describe
from detflow.pinpoint_runs import Child, machine_slots
from detflow.reference import MAX_REFERENCE_OPS, install_reference, load_reference, scratch_folder
from detflow.trace_format import TraceFiles


def environment_with(changes: dict[str, str | None], portable: bool) -> dict[str, str]:
    """This environment (with portable mode's settings where the params ask for it, as the
    trial stage has them) and ``changes`` on top (a None value unsets a variable)."""
    environment = dict(os.environ)
    if portable:
        from detflow.cpu import PORTABLE_ENV

        environment.update(PORTABLE_ENV)
    for key, value in changes.items():
        if value is None:
            environment.pop(key, None)
        else:
            environment[key] = value
    return environment


@dataclass
class Run:
    """One traced run here: its files and summary once it ended."""

    child: Child
    setting: Setting | None = None
    files: TraceFiles | None = None
    summary: dict[str, Any] = field(default_factory=dict)


def traced_children(
    params_path: Path, seed: int, folder: Path, max_ops: int, settings: list[Setting | None]
) -> list[Run]:
    """Trace ``seed`` once per setting (None: this environment as it is), as many at once as
    the machine holds, and wait for all."""
    runs = []
    for number, setting in enumerate(settings):
        prefix = folder / f"here{number}"
        command = [sys.executable, "-m", "detflow.trace", "--params", str(params_path)]
        command += [
            "--seed",
            str(seed),
            "--out",
            str(prefix),
            "--max-ops",
            str(max_ops),
            "--values",
        ]
        label = "run here" if setting is None else f"run with {env_words(setting.env or {})}"
        runs.append(Run(Child(f"traced {label} of torch_seed {seed}", command, prefix), setting))
    slots = machine_slots()[0]
    portable = load_params(params_path).portable
    waiting = list(runs)
    try:
        while waiting or any(r.child.poll() is None for r in runs if r.child.process):
            running = [r for r in runs if r.child.process is not None and r.child.poll() is None]
            while waiting and len(running) < slots:
                run = waiting.pop(0)
                changes = (run.setting.env or {}) if run.setting is not None else {}
                run.child.start(environment_with(changes, portable))
                running.append(run)
            time.sleep(0.05)
    finally:  # interrupted: no run outlives pinpoint
        for run in runs:
            run.child.stop()
    for run in runs:
        if run.child.returncode != 0:
            raise DetflowError(run.child.failure())
        run.files, run.summary = run.child.files, run.child.summary()
    return runs


def record_reference(
    params_path: Path, seed: int, root: Path, max_ops: int = MAX_REFERENCE_OPS
) -> TraceFiles:
    """Trace ``seed`` here and keep it as ``root``/pinpoint-reference, for git."""
    params_path = Path(params_path).absolute()
    digest = config_digest(load_params(params_path))
    with scratch_folder() as folder:
        (run,) = traced_children(params_path, seed, Path(folder), max_ops, [None])
        meta = {"torch_seed": seed, "config_digest": digest, "max_ops": max_ops}
        return install_reference(run.child.prefix, root, meta)


def compare_run(commit: Trace, commit_summary: dict, run: Run) -> tuple[Found | None, bool]:
    here = Trace.load(run.files)
    return first_found(commit, here), run.summary.get("results") == commit_summary.get("results")


def against(
    rev: str, params_path: Path, seed: int | None = None, log: TextIO | None = None
) -> AgainstReport:
    """Compare a run of the reference's seed here with commit ``rev``'s reference trace."""
    log = log or sys.stderr
    params_path = Path(params_path).absolute()
    with scratch_folder() as scratch:
        folder = Path(scratch)
        files, summary = load_reference(rev, Path.cwd(), folder)
        recorded = summary.get("torch_seed")
        if isinstance(recorded, bool) or not isinstance(recorded, int):
            raise DetflowError(
                f"{rev}'s reference trace names no torch_seed (it has {recorded!r}): record it "
                f"again with `python -m detflow.pinpoint --record`"
            )
        if seed is not None and seed != recorded:
            raise DetflowError(
                f"{rev}'s reference trace ran torch_seed {recorded}, not {seed}: drop --seed, "
                f"or record that seed with `python -m detflow.pinpoint --record --seed {seed}`"
            )
        seed = recorded
        if summary.get("config_digest") != config_digest(load_params(params_path)):
            raise DetflowError(
                f"{rev}'s reference trace was made from other params than {params_path.name}: "
                f"run with the commit's (`git checkout {rev} -- params.yaml`), or record again"
            )
        max_ops = int(summary.get("max_ops") or MAX_REFERENCE_OPS)
        print(f"pinpoint: tracing torch_seed {seed} here, as {rev} did", file=log, flush=True)
        commit = Trace.load(files)
        (here,) = traced_children(params_path, seed, folder, max_ops, [None])
        found, results_agree = compare_run(commit, summary, here)
        description, size, sums = None, None, None
        if found is not None and found.kind != "path":
            here_trace = Trace.load(here.files)
            difference = found.difference(commit, here_trace)
            description = describe(difference, (files, here.files), (1, 2))
            size = found.size(commit, here_trace)
            sums = {
                "here": here_trace.sum_at(found.here_index),
                "commit": commit.sum_at(found.commit_index),
            }
        settings = differing_settings(summary.get("environment", {}), here.summary["environment"])
        tried: list[Tried] = []
        cause, reproduced = None, False
        if not (found is None and results_agree):
            candidates = tryable(settings)
            if candidates:
                words = ", ".join(env_words(s.env or {}) for s in candidates)
                print(f"pinpoint: trying the commit's settings here: {words}", file=log, flush=True)
            runs = traced_children(params_path, seed, folder, max_ops, list(candidates))
            both = together(settings)
            tried = [trial(commit, summary, found, run) for run in runs]
            if both is not None and not any(t.run_agrees for t in tried):
                (run,) = traced_children(params_path, seed, folder, max_ops, [both])
                tried.append(trial(commit, summary, found, run))
            hit = next((t for t in tried if t.run_agrees), None)
            if hit is not None:
                cause, reproduced = hit.setting, True
            else:
                fixed = [s for s in settings if s.env is None]
                cause = fixed[0] if fixed else (settings[0] if settings else None)
        return AgainstReport(
            rev,
            seed,
            summary,
            here.summary,
            found,
            results_agree,
            description,
            size,
            sums,
            tuple(settings),
            tuple(tried),
            cause,
            reproduced,
            disk_differences(here.summary["environment"]),
        )


def disk_differences(here: dict[str, str]) -> tuple[str, ...]:
    """``field disk vs here`` for each fingerprint field in which this run's environment and
    the one data/environment.json records differ (none where there is no such file)."""
    from detflow.environment import differences

    try:
        made = json.loads(DISK_ENVIRONMENT.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ()
    if not isinstance(made, dict):
        return ()
    return tuple(differences(made, {key: here.get(key, "absent") for key in made}))


def trial(commit: Trace, summary: dict, found: Found | None, run: Run) -> Tried:
    again, results_agree = compare_run(commit, summary, run)
    op_agrees = again is None or (found is not None and again.commit_index > found.commit_index)
    assert run.setting is not None
    return Tried(run.setting, op_agrees, again is None and results_agree)
