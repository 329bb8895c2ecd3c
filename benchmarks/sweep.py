"""A sweep of 100,000 seeds x 2 trials: params load time, detflow's own cost per seed, and a
cold `dvc repro` of the whole pipeline.

Usage: python -m benchmarks.sweep [--seeds 100000] [--overhead-seeds 2000] [--json sweep.json]

detflow's cost per seed is the trial stage's loop (seed, build from config, task, checks,
writing) minus the same work done by hand in a plain loop (seed_torch, Linear, arange, the
forward pass), both in this process, medians of 3.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from tests.project_copy import make_copy, run_measured

from detflow.params import parse_yaml

HOW_TO = {
    "pre_task": "detflow.seeding.seed_torch",
    "task": "detflow.tasks.forward",
    "trial_id": ["a"],
    "module": {"_target_": "torch.nn.Linear", "in_features": 10, "out_features": 1},
    "data": {"_target_": "torch.arange", "_args_": [10.0]},
}


def median_seconds(function, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def params_load_seconds(seeds: int) -> dict[str, float]:
    """Parse and validate params.yaml with the seeds as a range and as a block list."""
    from detflow.params import params_from_bytes

    as_range = f"torch_seed: 0..{seeds - 1}\ntrial_id: [a, b]\npre_task: null\ntask: t.f\n"
    as_list = "torch_seed:\n" + "".join(f"- {s}\n" for s in range(seeds))
    as_list += "trial_id: [a, b]\npre_task: null\ntask: t.f\n"
    path = Path("params.yaml")
    return {
        form: round(median_seconds(lambda t=text: params_from_bytes(t.encode(), path)), 3)
        for form, text in (("range", as_range), ("list", as_list))
    }


def per_seed_overhead_ms(seeds: int) -> dict[str, float]:
    """The trial stage's loop against the same work in a plain loop, per seed."""
    import torch

    from detflow.params import parse_params
    from detflow.trial import write_trial

    def by_hand() -> None:
        for seed in range(seeds):
            torch.manual_seed(seed)
            module, data = torch.nn.Linear(10, 1), torch.arange(10.0)
            module(data).detach().numpy()

    params = parse_params({**HOW_TO, "torch_seed": f"0..{seeds - 1}"})
    with tempfile.TemporaryDirectory() as folder:
        stage = median_seconds(lambda: write_trial(params, Path(folder) / "a.nc"))
    plain = median_seconds(by_hand)
    return {
        "stage_ms": round(1000 * stage / seeds, 3),
        "task_ms": round(1000 * plain / seeds, 3),
        "overhead_ms": round(1000 * (stage - plain) / seeds, 3),
    }


def cold_repro_seconds(seeds: int) -> float:
    with tempfile.TemporaryDirectory() as folder:
        repo = make_copy(
            Path(folder) / "project", torch_seed=f"0..{seeds - 1}", trial_id=["a", "b"]
        )
        seconds, _ = run_measured(f"{sys.executable} -m dvc repro -f --no-run-cache -q", repo)
        metrics = json.loads((repo / "metrics.json").read_text())
        assert metrics["n_torch_seeds"] == seeds and metrics["deterministic"], metrics
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=100_000)
    parser.add_argument("--overhead-seeds", type=int, default=2000)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    parse_yaml("a: 1", "warm-up")  # the first call imports ruamel
    load = params_load_seconds(args.seeds)
    print(
        f"params load, {args.seeds} seeds: range {load['range']:.3f} s, list {load['list']:.3f} s"
    )
    overhead = per_seed_overhead_ms(args.overhead_seeds)
    print(
        f"per seed ({args.overhead_seeds} how-to seeds in one process): trial stage "
        f"{overhead['stage_ms']:.3f} ms, the same work by hand {overhead['task_ms']:.3f} ms, "
        f"detflow's own cost {overhead['overhead_ms']:.3f} ms (target <= 3 ms)"
    )
    seconds = cold_repro_seconds(args.seeds)
    per_seed = 1000 * seconds / (2 * args.seeds)
    print(
        f"cold dvc repro, {args.seeds} seeds x 2 trials: {seconds:.1f} s "
        f"({per_seed:.2f} ms per seed and trial, every stage included)"
    )
    if args.json:
        figures = {"seeds": args.seeds, "params_load_s": load, "per_seed": overhead}
        figures["cold_repro_s"] = round(seconds, 1)
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
