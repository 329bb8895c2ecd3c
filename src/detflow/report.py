"""How a verdict reads, in one place for the aggregate stage and for collect: the lines a
user reads in the log, the JSON evidence, and the number formats DVC can show."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from detflow.determinism import Disagreement, Verdict


def describe(variable: Any) -> str:
    """dtype, dims and shape of an xarray variable, e.g. ``float32['torch_seed'][2]``."""
    return f"{variable.dtype}{list(variable.dims)}{list(variable.shape)}"


def disagreement_records(verdict: Verdict) -> list[dict[str, Any]]:
    """The evidence behind a NOT deterministic verdict, as JSON."""
    return [
        {
            "torch_seed": d.torch_seed,
            "variable": d.variable,
            "trial_id": d.trial_id,
            "index": list(d.index),
            "max_abs_diff": d.max_abs_diff if np.isfinite(d.max_abs_diff) else "inf",
        }
        for d in verdict.disagreements
    ]


def disagreement_line(d: Disagreement) -> str:
    return (
        f"  torch_seed {d.torch_seed}: '{d.variable}' first differs in trial {d.trial_id} "
        f"at index {list(d.index)}; max |diff| {d.max_abs_diff:.9g}"
    )


def format_seeds(seeds: Iterable[int]) -> str:
    """``0..49, 60, 62..63``: runs of consecutive seeds, so big sweeps fit on a line."""
    runs: list[list[int]] = []
    for seed in sorted(seeds):
        if runs and seed == runs[-1][-1] + 1:
            runs[-1].append(seed)
        else:
            runs.append([seed])
    return ", ".join(str(run[0]) if len(run) == 1 else f"{run[0]}..{run[-1]}" for run in runs)


def verdict_record(verdict: Verdict) -> dict[str, Any]:
    """The verdict as JSON: metrics.json and collect's report both start with it."""
    return {
        "deterministic": verdict.deterministic,
        # A string, because `dvc metrics show` drops lists.
        "disagreeing_seeds": ",".join(map(str, verdict.disagreeing_seeds)),
    }


def verdict_lines(verdict: Verdict, agreeing: str, copies: str) -> list[str]:
    """The log's verdict: ``agreeing`` when every copy agrees, else which ``copies`` (trials,
    or copies across experiments) disagree for which seeds, then where each first differs."""
    if verdict.deterministic:
        return [f"deterministic: {agreeing}"]
    seeds = format_seeds(verdict.disagreeing_seeds)
    return [
        f"NOT deterministic: {copies} disagree for torch_seed {seeds}",
        *(disagreement_line(d) for d in verdict.disagreements),
    ]


def json_number(value: np.generic) -> float | int | bool | str:
    """A numpy scalar as the shortest JSON value that reads back to it; non-finite as text."""
    if value.dtype.kind == "b":
        return bool(value)
    if value.dtype.kind in "iu":
        return int(value)
    if not np.isfinite(value):
        return str(float(value))  # JSON has no NaN or Infinity
    return float(str(value))  # str() of a float32 is its shortest round-trip form


def strict_json(value: Any) -> Any:
    """``value`` with every non-finite float as text (``"nan"``, ``"inf"``, ``"-inf"``) and numpy
    scalars as Python numbers, so that any JSON reader (jq, ``JSON.parse``) reads the report.

    Examples
    --------
    >>> strict_json({"a": float("inf"), "b": [np.float32(0.5), float("nan")]})
    {'a': 'inf', 'b': [0.5, 'nan']}
    """
    if isinstance(value, Mapping):
        return {str(key): strict_json(child) for key, child in value.items()}
    if isinstance(value, list | tuple):
        return [strict_json(child) for child in value]
    if isinstance(value, np.generic):
        return json_number(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def json_text(value: Any) -> str:
    """The one JSON writer of every report: strict JSON (no NaN or Infinity), indented."""
    return json.dumps(strict_json(value), indent=2, allow_nan=False) + "\n"


def write_json(path: Path, value: Any) -> None:
    """Write a report atomically through ``json_text``."""
    from detflow.artifact import write_text

    write_text(path, json_text(value))
