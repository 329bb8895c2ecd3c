"""Which seeds pinpoint traces, and which of them the trials disagreed on: from metrics.json,
when it was made from the current params. No torch."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from detflow.params import Params

# Seeds traced when metrics.json lists more disagreeing seeds than this (--seed names others).
AUTO_SEEDS_MAX = 3


@dataclass(frozen=True)
class TrialVerdict:
    """What metrics.json says of these params' trials: the disagreeing seeds (empty when all
    agreed), or ``problem``, a reason it says nothing (missing, unreadable, other params, fewer
    than two trials)."""

    disagreeing: tuple[int, ...] = ()
    problem: str | None = None


def read_verdict(params: Params, metrics_path: Path) -> TrialVerdict:
    from detflow.committed import config_digest

    try:
        metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return TrialVerdict(problem=f"no {metrics_path}")
    except (OSError, ValueError):
        return TrialVerdict(problem=f"{metrics_path} is unreadable")
    if not isinstance(metrics, dict) or metrics.get("config_digest") != config_digest(params):
        return TrialVerdict(problem=f"{metrics_path} was made from other params")
    if "deterministic" in metrics and metrics["deterministic"] is None:
        return TrialVerdict(problem=f"{metrics_path} compared no trials (fewer than two ran)")
    text = str(metrics.get("disagreeing_seeds") or "")
    try:
        seeds = tuple(int(seed) for seed in text.split(",") if seed.strip())
    except ValueError:
        return TrialVerdict(problem=f"{metrics_path} lists unreadable seeds {text!r}")
    return TrialVerdict(disagreeing=seeds)


def seeds_to_pinpoint(params: Params, metrics_path: Path) -> tuple[list[int], str]:
    """metrics.json's disagreeing seeds if it was made from ``params``, else the first seed;
    and one line that says which, and why."""
    first = params.torch_seeds[0]
    verdict = read_verdict(params, metrics_path)
    if verdict.problem is not None:
        return [first], f"pinpoint: {verdict.problem}: tracing the first seed, torch_seed {first}"
    seeds = list(verdict.disagreeing)
    if not seeds:
        return [first], (
            f"pinpoint: {metrics_path} says every trial agrees: tracing torch_seed {first} "
            f"for latent risks"
        )
    if len(seeds) > AUTO_SEEDS_MAX:
        return seeds[:AUTO_SEEDS_MAX], (
            f"pinpoint: {metrics_path} says {len(seeds)} seeds disagree: tracing the first "
            f"{AUTO_SEEDS_MAX} (name others with --seed)"
        )
    listed = ",".join(map(str, seeds))
    return seeds, f"pinpoint: {metrics_path} says torch_seed {listed} disagree"
