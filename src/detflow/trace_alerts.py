"""The ops torch flags as non-deterministic: a run of the seed under torch's deterministic
mode, warn-only, in a process of its own (that mode may pick other kernels, so it never
shares a process with a traced run)."""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch

from detflow.trace_origin import display_path

# `put_ does not have a deterministic implementation, but you set ...`
ALERT = re.compile(r"^(?P<op>.+?) does not have a deterministic implementation")


def alert_op(message: str) -> str | None:
    """The op a deterministic-mode alert names, or None for any other warning.

    Examples
    --------
    >>> alert_op("put_ does not have a deterministic implementation, but you set 'torch...'")
    'put_'
    >>> alert_op("some other warning") is None
    True
    """
    first_line = message.strip().splitlines()[0] if message.strip() else ""
    match = ALERT.match(first_line)
    if match:
        return match["op"]
    if "uses CuBLAS" in message:  # cuBLAS's alert names no op, only the missing setting
        return "cuBLAS (CUBLAS_WORKSPACE_CONFIG unset)"
    return None


def alerts(caught: Iterable[warnings.WarningMessage]) -> dict[str, dict[str, Any]]:
    """Deterministic-mode alerts by op: how many, and the line of the first."""
    found: dict[str, dict[str, Any]] = {}
    for warning in caught:
        op = alert_op(str(warning.message))
        if op is None:
            continue
        entry = found.setdefault(
            op, {"count": 0, "source": f"{display_path(warning.filename)}:{warning.lineno}"}
        )
        entry["count"] += 1
    return found


def run_with_alerts(run_seed: Callable[[int], Any], seed: int) -> dict[str, dict[str, Any]]:
    """Run ``seed`` with torch's deterministic mode on, warn-only, and collect its alerts.

    A pre-task may set the mode itself: seed_everything turns it on without warn_only (the
    first alert would raise) and a user may turn it off (nothing would alert), so within this
    process such calls are ignored; the mode is reset at the end.
    """
    setting = torch.use_deterministic_algorithms
    setting(True, warn_only=True)
    torch.use_deterministic_algorithms = lambda *args, **kwargs: None
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run_seed(seed)
    finally:
        torch.use_deterministic_algorithms = setting
        setting(False)
    return alerts(caught)
