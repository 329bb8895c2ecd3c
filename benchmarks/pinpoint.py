"""Pinpoint's cost: the training task for one seed, plain and under the op tracer.

Usage: python -m benchmarks.pinpoint [--repeats 3] [--n-samples N]

Each measurement is one fresh process, as pinpoint starts them: ``plain`` runs the seed through
``detflow.run.seed_runner``, ``traced`` through ``detflow.trace.trace_seed`` (every aten op
hashed and streamed to disk). The params are the project's params.yaml with the training task
(``task: detflow.tasks.train``, ``pre_task: detflow.seeding.seed_everything``). Prints the median
wall time of the whole process and of the seed alone, the slowdown, and the trace's size; it
asserts nothing about timings.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
TRAIN = {"task": "detflow.tasks.train", "pre_task": "detflow.seeding.seed_everything"}

# Runs one seed in a fresh process and prints its summary as JSON. The seed alone is timed
# after the imports and params checks that plain and traced runs share, including two that the
# training task would otherwise pay inside the seed: xarray, and torch._inductor, which
# torch.use_deterministic_algorithms (in seed_everything) imports on first call, about 1 s.
CHILD = """
import json, sys, time
from pathlib import Path
import torch._inductor, xarray
from detflow.params import load_params
from detflow.run import seed_runner
from detflow.trace import trace_seed

params_path, mode, prefix = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
params = load_params(params_path)
run_seed = seed_runner(params)
start = time.perf_counter()
if mode == "traced":
    summary = trace_seed(run_seed, params.torch_seeds[0], prefix, params_path)
else:
    run_seed(params.torch_seeds[0])
    summary = {}
summary["seed_seconds"] = time.perf_counter() - start
print(json.dumps(summary))
"""


def training_params(folder: Path, n_samples: int | None) -> Path:
    """The project's params.yaml, switched to the training task, for one seed."""
    values = yaml.safe_load((HERE.parent / "params.yaml").read_text())
    values.update(TRAIN, torch_seed=[0])
    if n_samples is not None:
        values["train"] = {**values["train"], "n_samples": n_samples}
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def measure(params_path: Path, mode: str, prefix: Path) -> tuple[float, dict]:
    """Wall seconds of one fresh process, and what it printed."""
    command = [sys.executable, "-c", CHILD, str(params_path), mode, str(prefix)]
    start = time.perf_counter()
    run = subprocess.run(command, capture_output=True, text=True, check=True)
    seconds = time.perf_counter() - start
    return seconds, json.loads(run.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--n-samples", type=int, default=None, help="override train.n_samples")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        scratch = Path(folder)
        params_path = training_params(scratch, args.n_samples)
        train = yaml.safe_load(params_path.read_text())["train"]
        figures: dict[str, tuple[float, float]] = {}
        summary: dict = {}
        for mode in ("plain", "traced"):
            measure(params_path, mode, scratch / "warm")  # warm the file cache
            runs = [measure(params_path, mode, scratch / f"{mode}{n}") for n in range(args.repeats)]
            figures[mode] = (
                statistics.median(seconds for seconds, _ in runs),
                statistics.median(printed["seed_seconds"] for _, printed in runs),
            )
            summary = runs[-1][1] if mode == "traced" else summary
    print(
        f"training task, one seed ({train['epochs']} epochs, {train['n_samples']} samples, "
        f"batch {train['batch_size']}), median of {args.repeats} fresh processes:"
    )
    print("| run | process | seed alone |")
    print("|---|---|---|")
    for mode, (process, seed) in figures.items():
        print(f"| {mode} | {process:.2f} s | {seed:.3f} s |")
    plain, traced = figures["plain"], figures["traced"]
    print(
        f"slowdown: {traced[0] / plain[0]:.2f}x per process, {traced[1] / plain[1]:.2f}x for the "
        f"seed alone"
    )
    ops, size = summary["ops"], summary["bytes"]
    print(f"ops traced: {ops}; trace: {size} bytes ({size / ops:.1f} bytes per op)")


if __name__ == "__main__":
    main()
