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
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from detflow.params import RUN_ONLY_PARAMS, Params

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


def config_digest(params: Params) -> str:
    """sha256 of every param that shapes the numbers, seeds expanded (``0..1`` is ``[0, 1]``).

    Stored in metrics.json, so that a result is compared only with one made from the same
    params, whatever params.yaml says by the time the comparison runs.
    """
    values = {key: value for key, value in params.values.items() if key not in RUN_ONLY_PARAMS}
    values["torch_seed"] = list(params.torch_seeds)
    values["trial_id"] = list(params.trial_ids)
    text = json.dumps(values, sort_keys=True, default=str)
    return f"sha256:{hashlib.sha256(text.encode()).hexdigest()}"


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


def compare(metrics: Mapping[str, Any], committed: Mapping[str, Any]) -> str:
    """One line: did ``metrics`` reproduce ``committed`` bit for bit; if not, why and how much.

    Examples
    --------
    >>> metrics = {"config_digest": "c", "digest": "d", "provenance": {"cpu_model": "x"}}
    >>> compare(metrics, metrics)
    'cross-machine: this machine reproduced the committed result bit for bit (digest d)'
    """
    if "config_digest" not in committed:
        return "cross-machine: not compared: the committed metrics.json records no config_digest"
    if metrics.get("config_digest") != committed.get("config_digest"):
        return (
            "cross-machine: not compared: the committed result was made from other params "
            "(`dvc params diff` names them)"
        )
    provenance = provenance_changes(metrics.get("provenance", {}), committed.get("provenance", {}))
    if metrics.get("digest") == committed.get("digest"):
        also = f"; provenance differs in {'; '.join(provenance)}" if provenance else ""
        return (
            f"cross-machine: this machine reproduced the committed result bit for bit "
            f"(digest {metrics.get('digest')}){also}"
        )
    why = "; ".join(provenance) if provenance else "no provenance field differs"
    return (
        f"cross-machine: this machine did NOT reproduce the committed result bit for bit: "
        f"{largest_difference(metrics, committed)}; this machine vs the commit: {why}"
    )


def compare_with_head(metrics: Mapping[str, Any], path: Path) -> str:
    """Compare ``metrics`` with the metrics file at ``path`` in git's HEAD."""
    text = committed_text(path)
    if text is None:
        return f"cross-machine: no committed {path} to compare with (commit one to compare)"
    try:
        committed = json.loads(text)
    except ValueError:
        return f"cross-machine: the committed {path} is not JSON; not compared"
    return compare(metrics, committed)
