"""The reference trace a commit carries: a prefix of one seed's op trace, in git, so that a
fresh clone without a DVC remote can ask where this machine first computes differently.

``python -m detflow.pinpoint --record [--seed N]`` traces the seed here and writes
``pinpoint-reference/trace.{ops,strings,json,values}`` (today's trace format, plus each op's
output sum, at most ``MAX_REFERENCE_OPS`` ops: 64 bytes each, so under 3 MB); commit the folder
with the result.
``python -m detflow.pinpoint --against REV`` reads it back with ``git show``. No torch.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from detflow.cli import DetflowError
from detflow.trace_format import TraceFiles, trace_files, values_path

REFERENCE_DIR = Path("pinpoint-reference")
REFERENCE_PREFIX = REFERENCE_DIR / "trace"
# Machine differences show in the first ops (the first kernel that computes differently):
# 45,000 ops are 2.9 MB, and the training task's whole seed is 4,708.
MAX_REFERENCE_OPS = 45_000


def reference_files(folder: Path) -> TraceFiles:
    return trace_files(folder / REFERENCE_PREFIX)


def install_reference(traced_prefix: Path, root: Path, meta: dict[str, Any]) -> TraceFiles:
    """Move a finished traced run into ``root``/pinpoint-reference, each file atomically, the
    summary (with ``meta``: seed, params) last, so a half-written reference has no summary."""
    source, target = trace_files(traced_prefix), reference_files(root)
    target.ops.parent.mkdir(parents=True, exist_ok=True)
    summary = json.loads(source.summary.read_text(encoding="utf-8"))
    summary.update(meta)
    pairs = [(source.ops, target.ops), (source.strings, target.strings)]
    if os.path.exists(values_path(traced_prefix)):
        pairs.append((Path(values_path(traced_prefix)), Path(values_path(root / REFERENCE_PREFIX))))
    for src, dst in pairs:
        temporary = dst.with_name(f".{dst.name}.tmp")
        shutil.copyfile(src, temporary)
        os.replace(temporary, dst)
    from detflow.artifact import write_text

    write_text(target.summary, json.dumps(summary, indent=1, sort_keys=True) + "\n")
    return target


def git_show(rev: str, path: Path, cwd: Path) -> bytes | None:
    """``path`` (relative to ``cwd``) as commit ``rev`` holds it, or None where it has none."""
    try:
        shown = subprocess.run(
            ["git", "show", f"{rev}:./{path.as_posix()}"], cwd=cwd, capture_output=True
        )
    except OSError as error:
        raise DetflowError(
            f"--against {rev} needs git, which could not run ({error.strerror}): install git"
        ) from error
    return shown.stdout if shown.returncode == 0 else None


def check_rev(rev: str, cwd: Path) -> None:
    try:
        probe = subprocess.run(
            ["git", "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"],
            cwd=cwd,
            capture_output=True,
        )
    except OSError as error:
        raise DetflowError(
            f"--against {rev} needs git, which could not run ({error.strerror}): install git"
        ) from error
    if b"not a git repository" in probe.stderr:
        raise DetflowError(
            f"--against {rev} compares with a git commit, and {cwd} is in no git repository: "
            f"run it in the project's clone"
        )
    if probe.returncode != 0:
        raise DetflowError(
            f"--against {rev}: no such commit in the git repository of {cwd}: give a "
            f"commit, branch or tag (e.g. HEAD)"
        )


def load_reference(rev: str, cwd: Path, folder: Path) -> tuple[TraceFiles, dict[str, Any]]:
    """The reference trace of commit ``rev``, copied into ``folder``, and its summary."""
    check_rev(rev, cwd)
    files = trace_files(folder / "reference")
    committed_files = trace_files(REFERENCE_PREFIX)
    for committed, local in (
        (committed_files.ops, files.ops),
        (committed_files.strings, files.strings),
        (committed_files.summary, files.summary),
    ):
        data = git_show(rev, committed, cwd)
        if data is None:
            raise DetflowError(
                f"{rev} carries no reference trace ({committed} is not in that commit): "
                f"record one with `python -m detflow.pinpoint --record` where the result was "
                f"made, and commit {REFERENCE_DIR}/ with it"
            )
        local.write_bytes(data)
    # The output sums are optional: without them a difference is named, not sized.
    values = git_show(rev, Path(values_path(REFERENCE_PREFIX)), cwd)
    if values is not None:
        Path(values_path(folder / "reference")).write_bytes(values)
    try:
        summary = json.loads(files.summary.read_text(encoding="utf-8"))
    except ValueError as error:
        raise DetflowError(
            f"{rev}:{REFERENCE_PREFIX}.json is not JSON ({error}): record the reference again "
            f"with `python -m detflow.pinpoint --record`"
        ) from error
    return files, summary


def scratch_folder() -> tempfile.TemporaryDirectory:
    try:
        return tempfile.TemporaryDirectory(prefix="detflow-against-")
    except OSError as error:
        raise DetflowError(
            f"pinpoint could not make its folder in {tempfile.gettempdir()}: "
            f"{error.strerror or error}: free space there, or point TMPDIR elsewhere"
        ) from error
