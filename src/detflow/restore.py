"""Bring back a committed result (params, lock, metrics, plots and the cached files), or
refuse, changing nothing, when this machine cannot.

`git checkout -- dvc.lock ...` then `dvc checkout` looks like recovery, but when the committed
dvc.lock names bytes this machine's DVC cache lacks (a clone without a DVC remote, on a CPU
that does not reproduce the commit), `dvc checkout` deletes the workspace's results and
restores nothing. So this checks the cache first, and only then restores.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from detflow.cli import DetflowError, run_main, stage_parser
from detflow.committed import committed_exists
from detflow.params import parse_yaml

# What git versions of a run, beside the lock: restored with it so that all describe one run.
GIT_VERSIONED = (
    "params.yaml",
    "dvc.lock",
    "metrics.json",
    "evidence.json",
    "pinpoint.json",
    "data/plots",
    "data/environment.json",
)


def git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], capture_output=True, text=True, check=False)


def committed_outputs(rev: str) -> dict[str, str]:
    """Cached output path -> md5, as the lock file at ``rev`` records them."""
    shown = git("show", f"{rev}:dvc.lock")
    if shown.returncode != 0:
        raise DetflowError(
            f"no dvc.lock at {rev} ({shown.stderr.strip() or 'git failed'}): name a commit "
            f"that has one, e.g. --rev HEAD"
        )
    lock = parse_yaml(shown.stdout, f"{rev}:dvc.lock") or {}
    found = {}
    for stage in (lock.get("stages") or {}).values():
        for out in stage.get("outs") or []:
            if out.get("md5") and out.get("path"):
                found[out["path"]] = out["md5"]
    return found


def cache_dir() -> Path:
    shown = subprocess.run(
        [sys.executable, "-m", "dvc", "cache", "dir"], capture_output=True, text=True, check=False
    )
    return Path(shown.stdout.strip()) if shown.returncode == 0 else Path(".dvc/cache")


def in_cache(cache: Path, md5: str) -> bool:
    """DVC 3 keeps a file's bytes at files/md5/<2>/<30>; a folder's listing as <md5>.dir,
    whose every file must be there too."""
    path = cache / "files" / "md5" / md5[:2] / md5[2:]
    if not path.is_file():
        return False
    if md5.endswith(".dir"):
        import json

        try:
            entries = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            return False
        return all(in_cache(cache, entry.get("md5", "")) for entry in entries)
    return True


def missing_outputs(rev: str) -> list[str]:
    """The outputs that only DVC's cache can restore (git holds the `cache: false` ones) and
    that this machine's cache lacks."""
    cache = cache_dir()
    return [
        path
        for path, md5 in committed_outputs(rev).items()
        if not in_git(rev, path) and not in_cache(cache, md5)
    ]


def in_git(rev: str, path: str) -> bool:
    return committed_exists(None, path, rev)


def restore(rev: str) -> list[str]:
    """Restore ``rev``'s run into the workspace; the outputs restored."""
    missing = missing_outputs(rev)
    if missing:
        remotes = subprocess.run(
            [sys.executable, "-m", "dvc", "remote", "list"], capture_output=True, text=True
        ).stdout.strip()
        fix = (
            "run `dvc pull` first, then restore"
            if remotes
            else "no DVC remote is configured, so only `dvc repro` can make them (with this "
            "machine's bits)"
        )
        raise DetflowError(
            f"the result committed at {rev} is not in this machine's DVC cache "
            f"({', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}): {fix}; "
            f"nothing was changed"
        )
    tracked = [
        path for path in GIT_VERSIONED if git("cat-file", "-e", f"{rev}:{path}").returncode == 0
    ]
    checked_out = git("checkout", rev, "--", *tracked)
    if checked_out.returncode != 0:
        raise DetflowError(
            f"git checkout of {', '.join(tracked)} failed: {checked_out.stderr.strip()}"
        )
    # --force: outputs a failed or strict run left are not in the cache, and must go.
    done = subprocess.run(
        [sys.executable, "-m", "dvc", "checkout", "--force"], capture_output=True, text=True
    )
    if done.returncode != 0:
        raise DetflowError(f"dvc checkout failed: {done.stderr.strip().splitlines()[-1:]}")
    return sorted(committed_outputs(rev))


def main(argv: Sequence[str] | None = None) -> int:
    parser = stage_parser(__doc__.splitlines()[0])
    parser.add_argument("--rev", default="HEAD", help="the commit whose result to restore")
    args = parser.parse_args(argv)
    restored = restore(args.rev)
    print(
        f"restored the result committed at {args.rev}: {', '.join(restored)}, and the files git keeps"
    )
    return 0


def cli() -> None:
    """The ``detflow-restore`` entry point."""
    run_main(main)


if __name__ == "__main__":
    cli()
