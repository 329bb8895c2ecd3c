"""Run the trial stage's code on CUDA and report, per task, whether 3 trials agree bitwise.

Usage: python scripts/gpu_check.py   (exits 0 with a note where there is no CUDA device)

For the Linear task, the training task and a task built on index_add_ (a CUDA op with no
fixed summation order), it runs 3 in-process trials of 2 seeds with deterministic
algorithms on and then off, and prints whether the trials agree and the largest difference.
With deterministic algorithms on, an op without a deterministic kernel is refused by torch;
the script shows that error rather than a verdict.
"""

from __future__ import annotations

import copy
import sys
import time
from pathlib import Path

import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[1]
TRIALS = ("a", "b", "c")

TASKS = {
    "linear": {"task": "detflow.tasks.forward"},
    "train": {"task": "detflow.tasks.train"},
    "index_add": {"task": "detflow.tasks.scatter_sum"},
}


def check(name: str, values: dict) -> str:
    from detflow.aggregate import combine_trials
    from detflow.cli import DetflowError
    from detflow.determinism import compare_trials
    from detflow.params import parse_params
    from detflow.trial import run_trial

    params = parse_params(values)
    try:
        trials = {trial_id: run_trial(params) for trial_id in TRIALS}
    except DetflowError as error:
        return f"refused by torch: {error}"
    verdict = compare_trials(combine_trials(trials, {}))
    worst = max(verdict.max_abs_diff_by_seed.values())
    agree = "agree bitwise" if verdict.deterministic else "DISAGREE"
    where = "".join(
        f"; seed {d.torch_seed} '{d.variable}' first differs in trial {d.trial_id} at {list(d.index)}"
        for d in verdict.disagreements[:2]
    )
    return f"{agree}, max |diff| {worst:.9g}{where}"


def main() -> int:
    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device on this machine; nothing to check")
        return 0
    print(
        f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN "
        f"{torch.backends.cudnn.version()}, {torch.cuda.get_device_name()}"
    )
    base = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    base.update(device="cuda", pre_task="detflow.seeding.seed_everything")
    for name, overrides in TASKS.items():
        for deterministic in (True, False):
            values = {**copy.deepcopy(base), **overrides, "deterministic_algorithms": deterministic}
            started = time.perf_counter()
            outcome = check(name, values)
            mode = "on " if deterministic else "off"
            print(
                f"{name:>9} | deterministic algorithms {mode} | {outcome} "
                f"({time.perf_counter() - started:.1f} s)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
