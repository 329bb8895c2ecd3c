"""How a trial's seeds run, chosen by the ``launcher`` param: a loop in this process, or one
Hydra job per seed through a Hydra launcher plugin.

detflow builds no scheduler of its own. With ``launcher: joblib`` (or ``submitit_slurm``,
``ray``, ...) the trial stage sweeps ``torch_seed`` over the seeds with hydra-zen's
``launch`` and ``hydra/launcher=<name>``, waits, and returns what the jobs return, exactly as
the loop does. Each job runs the stage's own snapshot of the params through the same
per-seed function, so the artifact is the same bytes.
"""

from __future__ import annotations

import base64
import json
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from detflow.cli import DetflowError, one_line
from detflow.outputs import Output
from detflow.params import Launcher, Params, parse_params
from detflow.run import provenance, seed_runner

JOB_CONFIG_NAME = "detflow_seed_job"

# pip extras that provide the launchers detflow is tested with.
EXTRAS = {
    "joblib": "detflow[joblib]",
    "submitit_local": "detflow[submitit]",
    "submitit_slurm": "detflow[submitit]",
}


# Set by the trial stage's guard while it watches: launcher jobs then watch what their task
# touches too, and report it with their outputs (a job in another process is out of sight).
WATCH_ROOT: Path | None = None
JOBS_OBSERVED: dict[str, Any] = {}


def watch_jobs(root: Path | None) -> dict[str, Any]:
    """Start (``root``) or stop (None) watching launcher jobs; what jobs reported since the
    last start. Each stage run starts afresh, so one run never sees another's jobs."""
    global WATCH_ROOT, JOBS_OBSERVED
    seen = JOBS_OBSERVED
    WATCH_ROOT = root
    JOBS_OBSERVED = {"read": set(), "written": set(), "env": {}, "modules": {}} if root else {}
    return seen


# A stage shorter than this shows no progress; a longer one updates at most once a second, so
# that a log (dvc repro's output in CI) gets a line a second, not one per seed.
PROGRESS_DELAY_S = 2.0
PROGRESS_INTERVAL_S = 1.0


def progress(seeds: Sequence[int], label: str) -> Iterable[int]:
    """``seeds``, with seeds done and total, the rate and the ETA on stderr (the terminal
    where `dvc repro` runs) once the stage has taken a while."""
    from tqdm import tqdm

    return tqdm(
        seeds,
        desc=label,
        unit="seed",
        file=sys.stderr,
        delay=PROGRESS_DELAY_S,
        mininterval=PROGRESS_INTERVAL_S,
        maxinterval=PROGRESS_INTERVAL_S * 10,
        dynamic_ncols=True,
    )


def run_seeds(
    params: Params, work_dir: Path, write: Callable[[dict[str, Output]], None], label: str = "seeds"
) -> dict[str, str]:
    """Pass every seed's outputs, in order, to ``write``; return the provenance of the run.

    In this process when ``params.launcher`` is None, each seed written as soon as it ran;
    else one Hydra job per seed through that launcher, written once the launcher returns.
    """
    if params.launcher is None:
        run = seed_runner(params)
        for seed in progress(params.torch_seeds, label):
            write(run(seed))
        return provenance(params.device, params.portable)
    seed_runner(params)  # fails here, before any job starts, on a bad config
    outputs, attrs = launch_seeds(params, work_dir)
    for output in outputs:
        write(output)
    return attrs


def seed_job(config: Any) -> tuple[dict[str, Any], dict[str, str], dict[str, Any]]:
    """One Hydra job: run one seed as the in-process loop would; return outputs and provenance.

    Module-level, so that launchers that pickle the task function (joblib, submitit) can.
    """
    # The stage's snapshot of its params, never params.yaml: an edit during a long run must not
    # reach the jobs that start late. Base64, so that OmegaConf never interpolates a `${...}`.
    params = parse_params(json.loads(base64.b64decode(config.params_snapshot)))
    if params.portable:
        from detflow.cpu import pin_portable_cpu_path

        pin_portable_cpu_path()  # a job inherits the stage's settings; this checks them
    import torch

    # The thread count changes how MKL splits a reduction, so every job uses the stage's,
    # whatever the launcher's workers default to (joblib's loky lowers it, for one).
    torch.set_num_threads(int(config.intra_op_threads))
    if not config.watch_root:
        return (
            seed_runner(params)(int(config.torch_seed)),
            provenance(params.device, params.portable),
            {},
        )
    import detflow
    from detflow.inputs import module_files
    from detflow.watch import watching

    before = set(sys.modules)
    engine = Path(detflow.__file__).resolve().parent
    with watching(Path(config.watch_root), skip=(engine,)) as observed:
        outputs = seed_runner(params)(int(config.torch_seed))
    seen = {
        "read": sorted(observed.read),
        "written": sorted(observed.written),
        "env": dict(observed.env),
        "modules": {name: str(path) for name, path in module_files(before).items()},
    }
    return outputs, provenance(params.device, params.portable), seen


def params_snapshot(params: Params) -> str:
    """The params every job runs, as the stage read them (JSON is YAML, and a job parses it
    exactly as the stage did)."""
    try:
        text = json.dumps(params.values, sort_keys=True)
    except TypeError as error:
        raise DetflowError(
            f"params.yaml holds a value that is not plain data ({error}): quote it as a string"
        ) from None
    return base64.b64encode(text.encode()).decode()


def job_config(
    launcher: Launcher, params: Params, sweep_dir: Path, intra_op_threads: int
) -> dict[str, Any]:
    """The primary config of every job: the launcher, its options, and where Hydra may write."""
    return {
        "defaults": [
            {"override hydra/launcher": launcher.name},
            # detflow prints its own one-line messages; Hydra adds no log files.
            {"override hydra/job_logging": "none"},
            {"override hydra/hydra_logging": "none"},
            "_self_",
        ],
        "torch_seed": 0,
        "params_snapshot": params_snapshot(params),
        "intra_op_threads": intra_op_threads,
        "watch_root": str(WATCH_ROOT or ""),
        "hydra": {
            "launcher": dict(launcher.options),
            "sweep": {"dir": str(sweep_dir), "subdir": "${hydra.job.num}"},
            "output_subdir": None,
            "job": {"chdir": False},
        },
    }


def installed_launchers() -> list[str]:
    """The names in Hydra's hydra/launcher group (plugins register on first use)."""
    from hydra import initialize
    from hydra.core.global_hydra import GlobalHydra

    with initialize(version_base="1.3", config_path=None):
        loader = GlobalHydra.instance().config_loader()
        return sorted(loader.get_group_options("hydra/launcher"))


def composition_error(launcher: Launcher, error: Exception) -> DetflowError:
    """Turn Hydra's complaint about the launcher into a message that names the fix."""
    names = installed_launchers()
    if launcher.name not in names:
        extra = EXTRAS.get(launcher.name)
        install = f"pip install '{extra}'" if extra else "install the Hydra plugin that provides it"
        return DetflowError(
            f"launcher '{launcher.name}' is not an installed Hydra launcher "
            f"(installed: {', '.join(names)}): {install}, or set launcher: loop"
        )
    return DetflowError(
        f"launcher '{launcher.name}' rejected its options {dict(launcher.options)} "
        f"({one_line(error)}): fix them under launcher: in params.yaml"
    )


def run_jobs(params: Params, sweep_dir: Path):
    """Sweep ``torch_seed`` over ``seeds`` through the launcher with hydra-zen's ``launch``;
    return Hydra's JobReturns."""
    import torch
    from hydra.errors import HydraException
    from hydra_zen import launch

    launcher, seeds = params.launcher, params.torch_seeds
    config = job_config(launcher, params, sweep_dir, torch.get_num_threads())
    try:
        batches = launch(
            config,
            seed_job,
            overrides=[f"torch_seed={','.join(map(str, seeds))}"],
            multirun=True,
            version_base="1.3",
            config_name=JOB_CONFIG_NAME,
            with_log_configuration=False,
        )
    except HydraException as error:  # composing the launcher's config: before any job ran
        raise composition_error(launcher, error) from error
    return [job for batch in batches for job in batch]


def collect_returns(
    params: Params, jobs: Sequence[Any]
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Each seed's outputs, in the order of ``params.torch_seeds``, and the provenance all
    jobs share."""
    seeds = params.torch_seeds
    by_seed: dict[int, tuple[dict[str, Any], dict[str, str]]] = {}
    for job in jobs:
        seed = int(job.cfg.torch_seed)
        try:
            outputs, attrs, seen = job.return_value  # re-raises the job's own exception
            by_seed[seed] = outputs, attrs
            note_job_inputs(seen)
        except DetflowError:
            raise
        except Exception as error:
            raise DetflowError(
                f"launcher '{params.launcher.name}' job for torch_seed {seed} failed: "
                f"{one_line(error)}"
            ) from error
    missing = [seed for seed in seeds if seed not in by_seed]
    if missing:
        raise DetflowError(
            f"launcher '{params.launcher.name}' returned no result for torch_seed {missing[0]}: "
            f"check the launcher's options, or set launcher: loop"
        )
    first = by_seed[seeds[0]][1]
    for seed in seeds[1:]:
        other = by_seed[seed][1]
        changed = sorted(key for key in first if first[key] != other.get(key))
        if changed:
            key = changed[0]
            raise DetflowError(
                f"launcher '{params.launcher.name}' ran torch_seed {seed} with "
                f"{key}={other.get(key)!r} but torch_seed {seeds[0]} with {first[key]!r}: "
                f"one trial must run on one kind of machine; pin the launcher's options"
            )
    # The in-process loop records the settings in force after its last seed; so does this.
    return [by_seed[seed][0] for seed in seeds], by_seed[seeds[-1]][1]


def note_job_inputs(seen: dict[str, Any]) -> None:
    """What a job's task touched, for the stage's guard to check with its own."""
    if not JOBS_OBSERVED:
        return  # no stage is watching
    JOBS_OBSERVED["read"].update(seen.get("read", ()))
    JOBS_OBSERVED["written"].update(seen.get("written", ()))
    for name, where in seen.get("env", {}).items():
        JOBS_OBSERVED["env"].setdefault(name, where)
    JOBS_OBSERVED["modules"].update(seen.get("modules", {}))


def launch_seeds(params: Params, work_dir: Path) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Run every seed as a job of ``params.launcher``; Hydra's own files go in a temporary
    folder inside ``work_dir``, removed afterwards."""
    work_dir.mkdir(parents=True, exist_ok=True)
    # `*.tmp` keeps DVC from hashing it when it sits among the trial files.
    sweep_dir = Path(tempfile.mkdtemp(dir=work_dir, prefix=".detflow-launch-", suffix=".tmp"))
    try:
        jobs = run_jobs(params, sweep_dir)
        return collect_returns(params, jobs)
    finally:
        shutil.rmtree(sweep_dir, ignore_errors=True)
