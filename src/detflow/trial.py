"""Stage `task`: for each seed run the pre-task, build the objects, run the task; save one netCDF.

The artifact holds nothing specific to one run (no trial label, no timestamp), so trials
that compute the same numbers produce byte-identical files and DVC's md5s agree.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from detflow.cli import DetflowError, run_main, stage_parser
from detflow.params import DEFAULT_PARAMS, Params, params_from_bytes, read_params_bytes


def write_trial(
    params: Params,
    out: Path,
    attrs: Mapping[str, str] | Callable[[], Mapping[str, str]] | None = None,
    before_replacing: Callable[[], None] | None = None,
    around_seeds: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> None:
    """Run every seed of one trial, in this process or as jobs of ``params.launcher``, and
    write them to ``out`` as they come: ``(torch_seed, <name>_dim<n>...)`` per result.

    ``attrs`` (what produced the numbers, or a function that says so once the seeds ran) join
    the provenance of the run in the file's attrs. ``around_seeds`` wraps the seeds' run (the
    stage watches what the task touches). ``before_replacing`` runs once the file is complete,
    before it replaces ``out``: if it raises, the file already at ``out`` stays.
    """
    from detflow.executor import run_seeds
    from detflow.stage_guard import unguarded_record
    from detflow.trial_file import trial_file

    if attrs is None:
        attrs = unguarded_record(params)
    with trial_file(out, params.task, params.torch_seeds) as writer:
        with around_seeds():
            # Launcher jobs write beside the output, where cluster jobs can see it too.
            provenance = run_seeds(params, out.parent, writer.add, label=f"{out.stem} seeds")
        extra = attrs() if callable(attrs) else attrs
        writer.finish({**provenance, **(extra or {})})
        if before_replacing is not None:
            before_replacing()


def run_trial(params: Params):
    """Run one trial and return it as an ``xarray.Dataset`` (for tests and scripts)."""
    from detflow.artifact import read_dataset

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "trial.nc"
        write_trial(params, path)
        return read_dataset(path)


def check_unchanged(path: Path, read: bytes) -> None:
    """DVC records params in dvc.lock when a stage ends, reading params.yaml then: had it
    changed since this stage read it, dvc.lock would pair the new params with numbers made
    from the old ones."""
    if path.read_bytes() != read:
        raise DetflowError(
            f"{path} changed while this stage ran, so its results come from params that "
            f"{path} no longer holds: run `dvc repro` again once no edit or other run is changing it"
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = stage_parser(__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS, help="params file")
    parser.add_argument("--out", type=Path, required=True, help="netCDF file to write")
    args = parser.parse_args(argv)

    from detflow.stage_guard import StageGuard

    # Paths as dvc.yaml gives them, relative to where the stage started, whatever the task
    # does to the working directory.
    out, params_path = args.out.absolute(), args.params.absolute()
    read = read_params_bytes(params_path)
    params = params_from_bytes(read, params_path)  # the very bytes check_unchanged compares
    # Before portable mode pins torch's CPU path: the environment the stage was started in,
    # as the environment stage recorded it.
    guard = StageGuard(Path.cwd(), params, out)
    if params.portable:
        from detflow.cpu import pin_portable_cpu_path

        pin_portable_cpu_path()  # before anything imports torch
    guard.check_before()

    def checked_attrs() -> dict[str, str]:
        check_unchanged(params_path, read)
        return guard.check_after()

    write_trial(params, out, checked_attrs, around_seeds=guard.watching)
    print(f"wrote {args.out}: torch_seed {len(params.torch_seeds)}")
    return 0


if __name__ == "__main__":
    run_main(main)
