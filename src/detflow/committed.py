"""Did this machine reproduce the committed result bit for bit? Compare with git's HEAD.

metrics.json is versioned by git, so a fresh clone holds the digest, the per-seed values and
the provenance of the machine that made the commit. After `dvc repro` (and in `make run`) the
new metrics are compared with those: the same digest for the same params means this machine
reproduced the commit; a different ``config_digest`` means the commit's numbers came from
other params, and nothing is compared; otherwise the provenance fields that differ (CPU capability, CPU
model, threads, libraries, versions) say why, and the largest difference says how much.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from detflow.params import config_digest  # noqa: F401  (re-exported: pinpoint and tests)

# Shown first when they differ: what changes the bits of the same code on a CPU or GPU.
BIT_CHANGING = (
    "cpu_capability",
    "cpu_model",
    "intra_op_threads",
    "blas",
    "onednn",
    "portable",
    "torch_version",
    "device_name",
    "cuda_version",
    "cudnn_version",
)


def committed_text(path: Path) -> str | None:
    """The text of the file at ``path`` in git's HEAD, or None outside git or if absent."""
    try:
        shown = subprocess.run(
            ["git", "show", f"HEAD:./{path.name}"],
            cwd=path.parent if path.parent.is_dir() else None,
            capture_output=True,
            text=True,
            check=False,
        )
    except OSError:  # no git on this machine
        return None
    return shown.stdout if shown.returncode == 0 else None


def leaf_numbers(tree: Any, prefix: str = "") -> dict[str, float]:
    """Every number in a nested dict, by dotted path (``seeds.0.out``)."""
    if isinstance(tree, Mapping):
        found: dict[str, float] = {}
        for key, child in tree.items():
            found.update(leaf_numbers(child, f"{prefix}{key}."))
        return found
    if isinstance(tree, int | float) and not isinstance(tree, bool):
        return {prefix.rstrip("."): float(tree)}
    return {}


def largest_difference(metrics: Mapping[str, Any], committed: Mapping[str, Any]) -> str:
    """The largest |difference| between the per-seed and mean values of two metrics files."""
    ours = leaf_numbers({"seeds": metrics.get("seeds", {}), "mean": metrics.get("mean", {})})
    theirs = leaf_numbers({"seeds": committed.get("seeds", {}), "mean": committed.get("mean", {})})
    diffs = {
        path: abs(value - theirs[path])
        for path, value in ours.items()
        if path in theirs and not path.endswith("max_abs_diff")
    }
    if not diffs:
        return "no recorded value to compare"
    path = max(diffs, key=diffs.__getitem__)
    return f"largest difference {diffs[path]:.9g} ({path}: {ours[path]!r} vs {theirs[path]!r})"


def provenance_changes(ours: Mapping[str, Any], theirs: Mapping[str, Any]) -> list[str]:
    """``key ours vs theirs`` for each provenance field that differs, bit-changing ones first."""
    keys = sorted(
        (key for key in ours.keys() | theirs.keys() if ours.get(key) != theirs.get(key)),
        key=lambda key: (
            BIT_CHANGING.index(key) if key in BIT_CHANGING else len(BIT_CHANGING),
            key,
        ),
    )
    return [f"{key} {ours.get(key, 'absent')} vs {theirs.get(key, 'absent')}" for key in keys]


def mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def malformed(committed: Any) -> str | None:
    """What is wrong with a committed metrics.json that cannot be compared, or None."""
    if not isinstance(committed, Mapping):
        return f"is {type(committed).__name__}, not an object"
    for key in ("provenance", "seeds", "mean"):
        if key in committed and not isinstance(committed[key], Mapping):
            return f"has a '{key}' that is {type(committed[key]).__name__}, not an object"
    return None


# Where the cross-machine line leads when the bits differ: the op and the setting that made
# them differ, found against the reference trace the commit carries (see detflow.reference).
AGAINST = "to find the op and the setting: python -m detflow.pinpoint --against HEAD"
RECORD = (
    "to find the op and the setting, record a reference where the commit was made "
    "(python -m detflow.pinpoint --record) and commit pinpoint-reference/"
)
REFERENCE = "pinpoint-reference/trace.json"


def compare(
    metrics: Mapping[str, Any],
    committed: Mapping[str, Any],
    changed_code: Sequence[str] = (),
    reference: bool = False,
) -> str:
    """One line: did ``metrics`` reproduce ``committed`` bit for bit; if not, why and how much.

    ``metrics`` describes a result made in this environment (the caller checks that);
    ``changed_code`` names the files its code_digest covers that differ from the commit;
    ``reference``: the commit carries a reference trace for `pinpoint --against`.

    Examples
    --------
    >>> metrics = {"config_digest": "c", "digest": "d", "provenance": {"cpu_model": "x"}}
    >>> compare(metrics, metrics)
    'cross-machine: this machine reproduced the committed result bit for bit (digest d)'
    """
    problem = malformed(committed)
    if problem:
        return (
            f"cross-machine: not compared: the committed metrics.json {problem}; commit one "
            f"that `dvc repro` wrote"
        )
    if "config_digest" not in committed:
        return "cross-machine: not compared: the committed metrics.json records no config_digest"
    if metrics.get("config_digest") != committed.get("config_digest"):
        return (
            "cross-machine: not compared: the committed result was made from other params "
            "(`dvc params diff` names them)"
        )
    ours, theirs = mapping(metrics.get("provenance")), mapping(committed.get("provenance"))
    if ours.get("code_digest") != theirs.get("code_digest") and "code_digest" in theirs:
        if not changed_code:
            # The code here is the commit's: its metrics were made before it was committed.
            return (
                "cross-machine: not compared: other code: the committed result was made by "
                "other code than the commit holds; commit this run's dvc.lock, metrics.json "
                "and evidence.json with it"
            )
        return (
            f"cross-machine: not compared: other code: this result ran other code than the "
            f"committed one ({', '.join(changed_code)} differ from the commit); commit the "
            f"code and its result, or restore the committed code and `dvc repro`, to compare"
        )
    provenance = provenance_changes(ours, theirs)
    provenance = [line for line in provenance if not line.startswith("code_digest ")]
    if metrics.get("digest") == committed.get("digest"):
        also = f"; provenance differs in {'; '.join(provenance)}" if provenance else ""
        return (
            f"cross-machine: this machine reproduced the committed result bit for bit "
            f"(digest {metrics.get('digest')}){also}"
        )
    why = "; ".join(provenance) if provenance else "no provenance field differs"
    return (
        f"cross-machine: this machine did NOT reproduce the committed result bit for bit: "
        f"{largest_difference(metrics, committed)}; this machine vs the commit: {why}; "
        f"{AGAINST if reference else RECORD}"
    )


def committed_metrics(path: Path) -> tuple[Mapping[str, Any] | None, str | None]:
    """HEAD's metrics file at ``path``, merged with HEAD's evidence.json beside it where the
    commit has one (older commits kept everything in metrics.json); or None and the line that
    says why not."""
    text = committed_text(path)
    if text is None:
        return None, f"cross-machine: no committed {path} to compare with (commit one to compare)"
    try:
        committed = json.loads(text)
    except ValueError:
        return None, f"cross-machine: the committed {path} is not JSON; not compared"
    evidence = committed_text(path.with_name("evidence.json"))
    if evidence is not None and isinstance(committed, dict):
        try:
            found = json.loads(evidence)
        except ValueError:
            return None, "cross-machine: the committed evidence.json is not JSON; not compared"
        if isinstance(found, dict) and found.get("digest") == committed.get("digest"):
            committed = {**found, **committed}
    return committed, None


def compare_with_head(
    metrics: Mapping[str, Any], path: Path, code_files: Mapping[str, str] | None = None
) -> str:
    """Compare ``metrics`` with the metrics file at ``path`` in git's HEAD; ``code_files`` (the
    result's) name the files that differ from the commit when the code does."""
    committed, why_not = committed_metrics(path)
    if committed is None:
        return why_not or ""
    changed: list[str] = []
    ours, theirs = mapping(metrics.get("provenance")), mapping(mapping(committed).get("provenance"))
    if code_files and ours.get("code_digest") != theirs.get("code_digest"):
        changed = changed_since_commit(code_files, path.parent)
    return compare(metrics, committed, changed, committed_exists(path.parent, REFERENCE))


def committed_exists(where: Path | None, relative: str, rev: str = "HEAD") -> bool:
    """Does git's ``rev`` hold ``relative`` (from the repository's root)? ``where``: a folder
    in the repository (None: this process's working directory)."""
    try:
        found = subprocess.run(
            ["git", "cat-file", "-e", f"{rev}:{relative}"],
            cwd=where if where is not None and where.is_dir() else None,
            capture_output=True,
            check=False,
        )
    except OSError:
        return False
    return found.returncode == 0


def changed_since_commit(code_files: Mapping[str, str], where: Path) -> list[str]:
    """The files of ``code_files`` (name -> sha256) whose content differs from git's HEAD
    (detflow's engine, named ``detflow/<module>.py``, where it lies in this repository)."""
    import detflow

    top = subprocess.run(
        ["git", "rev-parse", "--show-toplevel"],
        cwd=where if where.is_dir() else None,
        capture_output=True,
        text=True,
        check=False,
    )
    if top.returncode != 0:
        return []
    root = Path(top.stdout.strip()).resolve()
    package = Path(detflow.__file__).resolve().parent
    changed = []
    for name, digest in sorted(code_files.items()):
        path = (
            package / name.removeprefix("detflow/") if name.startswith("detflow/") else root / name
        )
        if not path.is_relative_to(root):
            continue  # detflow installed outside this repository: its version says enough
        relative = path.relative_to(root).as_posix()
        shown = subprocess.run(
            ["git", "show", f"HEAD:{relative}"], cwd=root, capture_output=True, check=False
        )
        if shown.returncode != 0:
            changed.append(f"{relative} (not in the commit)")
        elif f"sha256:{hashlib.sha256(shown.stdout).hexdigest()}" != digest:
            changed.append(relative)
    return changed
