"""The plots the aggregate writes: one CSV per plotted variable, for `dvc plots show` with
the `trials` template (a panel per seed, a line per trial).

Plots stay readable and small whatever the model: disagreeing seeds first, then the others, up
to ``PLOT_MAX_SEEDS``; at most ``PLOT_MAX_POSITIONS`` values of each; and the variables that
`plot_variables` lists, or by default up to ``PLOT_MAX_VARIABLES`` of them, the smallest
first (a loss curve before a layer's weights).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from detflow.artifact import write_text
from detflow.cli import DetflowError
from detflow.determinism import Verdict
from detflow.report import json_number
from detflow.trial_stack import data_variables, open_trial, read_slab

PLOT_MAX_SEEDS = 10
PLOT_MAX_POSITIONS = 500
PLOT_MAX_VARIABLES = 10


def plotted_variables(sizes: Mapping[str, int], selected: Any) -> list[str]:
    """The variables to plot: ``selected`` (the `plot_variables` param) when it lists them;
    ``auto`` (or null) plots up to ``PLOT_MAX_VARIABLES``, those with the fewest values per
    seed first.

    Examples
    --------
    >>> plotted_variables({"loss": 5, "w": 100, "out": 1}, None)  # the result's own order
    ['loss', 'w', 'out']
    >>> plotted_variables({"loss": 5, "w": 100}, ["w"])
    ['w']
    """
    if selected is None or selected == "auto":
        by_size = sorted(sizes, key=lambda name: (sizes[name], name))[:PLOT_MAX_VARIABLES]
        return [name for name in sizes if name in by_size]
    if not isinstance(selected, list) or not all(isinstance(name, str) for name in selected):
        raise DetflowError(
            f"plot_variables {selected!r} is not a list of result names: use e.g. "
            f"plot_variables: [loss], or auto"
        )
    for name in selected:
        if name not in sizes:
            known = ", ".join(sorted(sizes)[:8]) + (" ..." if len(sizes) > 8 else "")
            raise DetflowError(
                f"plot_variables names '{name}', which the result does not hold: use some "
                f"of {known}"
            )
    return list(dict.fromkeys(selected))


def plot_seeds(verdict: Verdict) -> list[int]:
    agreeing = [seed for seed in verdict.torch_seeds if seed not in verdict.disagreeing_seeds]
    return [*verdict.disagreeing_seeds, *agreeing][:PLOT_MAX_SEEDS]


def plot_rows(result: Any, name: str, seeds: Sequence[int]) -> str:
    """Long-format CSV of one variable of the result file: torch_seed, trial_id, index, value.

    ``index`` is the position within the variable (the epoch, for a loss curve), so every
    trial of a seed draws one line: lines that do not overlap are trials that disagree.
    Only the first ``PLOT_MAX_POSITIONS`` values of a seed are read.
    """
    variable = result.variables[name]
    row_size = math.prod(variable.shape[3:])
    rows = (
        min(variable.shape[2], -(-PLOT_MAX_POSITIONS // max(row_size, 1)))
        if variable.ndim > 2
        else None
    )
    positions = {int(seed): n for n, seed in enumerate(result.variables["torch_seed"][:])}
    labels = list(result.variables["trial_id"][:])
    lines = ["torch_seed,trial_id,index,value"]
    for seed in seeds:
        for trial, label in enumerate(labels):
            slab = (positions[seed], trial) + ((slice(0, rows),) if rows is not None else ())
            values = read_slab(variable, slab).ravel()[:PLOT_MAX_POSITIONS]
            if values.dtype == np.bool_:
                values = values.astype(np.uint8)  # a plot's y axis is numeric: 1 and 0
            for index, value in enumerate(values):
                lines.append(f"{seed},{label},{index},{json_number(value)}")
    return "\n".join(lines) + "\n"


def choose_plots(trial_path: Path, selected: Any) -> tuple[list[str], int]:
    """The variables to plot, from a trial file (so that a bad `plot_variables` fails before
    the result is replaced), and how many the trials hold."""
    with open_trial(trial_path) as trial:
        names = data_variables(trial)
        sizes = {name: math.prod(trial.variables[name].shape[1:]) for name in names}
    return plotted_variables(sizes, selected), len(names)


def write_plots(result_path: Path, verdict: Verdict, plots_dir: Path, names: Sequence[str]):
    """One CSV per variable of ``names``."""
    seeds = plot_seeds(verdict)
    with open_trial(result_path) as result:
        for name in names:
            write_text(plots_dir / f"{name}.csv", plot_rows(result, name, seeds))
