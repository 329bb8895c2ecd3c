"""Did this machine reproduce the committed result bit for bit? Compare with git's HEAD.

metrics.json is versioned by git, so a fresh clone holds the digest, the per-seed values and
the provenance of the machine that made the commit. After `dvc repro` (and in `make run`) the
new metrics are compared with those: the same digest for the same params means this machine
reproduced the commit; otherwise the provenance fields that differ (CPU capability, CPU
model, threads, libraries, versions) say why, and the largest difference says how much.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping
from typing import Any

from detflow.cli import DetflowError
from detflow.params import parse_params, parse_yaml

# Params that never change the numbers: how seeds were run, and whether disagreement fails.
NOT_NUMBERS = ("launcher", "strict")

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


def committed_text(path: str) -> str | None:
    """The text of ``path`` (relative to the working directory) at git's HEAD, or None."""
    try:
        shown = subprocess.run(
            ["git", "show", f"HEAD:./{path}"], capture_output=True, text=True, check=False
        )
    except OSError:  # no git on this machine
        return None
    return shown.stdout if shown.returncode == 0 else None


def numbers_config(values: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in values.items() if key not in NOT_NUMBERS}


def leaf_numbers(tree: Any, prefix: str = "") -> dict[str, float]:
    """Every finite number in a nested dict, by dotted path (``seeds.0.out``)."""
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
        key=lambda key: (BIT_CHANGING.index(key) if key in BIT_CHANGING else 99, key),
    )
    return [f"{key} {ours.get(key, 'absent')} vs {theirs.get(key, 'absent')}" for key in keys]


def compare(
    metrics: Mapping[str, Any],
    values: Mapping[str, Any],
    committed_metrics: Mapping[str, Any],
    committed_values: Mapping[str, Any],
) -> str:
    """One line: did these metrics reproduce the committed ones, and if not, why and by how much.

    Examples
    --------
    >>> metrics = {"digest": "sha256:1", "seeds": {"0": {"out": 1.5}}, "provenance": {"a": "x"}}
    >>> compare(metrics, {"task": "t"}, metrics, {"task": "t", "strict": True})
    'cross-machine: this machine reproduced the committed result bit for bit (digest sha256:1)'
    """
    changed = sorted(
        key
        for key in numbers_config(values).keys() | numbers_config(committed_values).keys()
        if values.get(key) != committed_values.get(key)
    )
    if changed:
        return (
            f"cross-machine: not compared with the commit, whose params differ in "
            f"{', '.join(changed)}"
        )
    provenance = provenance_changes(
        metrics.get("provenance", {}), committed_metrics.get("provenance", {})
    )
    if metrics.get("digest") == committed_metrics.get("digest"):
        also = f"; provenance differs in {'; '.join(provenance)}" if provenance else ""
        return (
            f"cross-machine: this machine reproduced the committed result bit for bit "
            f"(digest {metrics.get('digest')}){also}"
        )
    why = "; ".join(provenance) if provenance else "no provenance field differs"
    return (
        f"cross-machine: this machine did NOT reproduce the committed result bit for bit: "
        f"{largest_difference(metrics, committed_metrics)}; this machine vs the commit: {why}"
    )


def compare_with_head(metrics: Mapping[str, Any], values: Mapping[str, Any], path: str) -> str:
    """Compare ``metrics`` (made from params ``values``) with ``path`` and params.yaml at HEAD."""
    committed_metrics = committed_text(path)
    committed_params = committed_text("params.yaml")
    if committed_metrics is None or committed_params is None:
        return f"cross-machine: no committed {path} to compare with (commit one to compare)"
    try:
        committed_values = parse_params(parse_yaml(committed_params, "HEAD:params.yaml")).values
        committed = json.loads(committed_metrics)
    except (DetflowError, ValueError):
        return f"cross-machine: the committed params.yaml or {path} is unreadable; not compared"
    return compare(metrics, values, committed, committed_values)
