"""Portable mode: its digests, for anyone to check their machine against, and its cost.

Usage: python -m benchmarks.portable [--repeats 3]

1. Runs the real pipeline (`dvc repro` in a throwaway git copy) with `portable: true` for the
   how-to defaults and for the training task, and prints `metrics.json`'s digest of each:
   any x86-64 CPU should print the same two digests.
2. Times one trial stage (`python -m detflow.trial`) natively and in portable mode, median
   of `--repeats`: the how-to over 200 seeds, the training task over 20 seeds, and a wider
   training run where the arithmetic dominates, so that the cost shows as the work grows.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from tests.project_copy import make_copy, median_seconds, run_measured

PYTHON = sys.executable
TRAIN = {"task": "detflow.tasks.train", "pre_task": "detflow.seeding.seed_everything"}
DIGEST_RUNS = {"how-to defaults": {}, "training task": TRAIN}
WIDE = {"_target_": "torch.nn.Linear", "in_features": 256, "out_features": 256}
TIMED_RUNS = {
    "how-to, 200 seeds": {"torch_seed": "0..199"},
    "training, 20 seeds": {**TRAIN, "torch_seed": "0..19"},
    # Where the arithmetic dominates: 256x256 weights, 4096 samples, 5 epochs.
    "training 256x256, 5 seeds": {
        **TRAIN,
        "torch_seed": "0..4",
        "module": WIDE,
        "train": {"epochs": 5, "lr": 0.01, "batch_size": 64, "num_workers": 0, "n_samples": 4096},
    },
}


def portable_digest(scratch: Path, name: str, params: dict) -> tuple[str, dict]:
    repo = make_copy(scratch / name.replace(" ", "-"), portable=True, **params)
    run_measured(f"{PYTHON} -m dvc repro -q", repo)
    metrics = json.loads((repo / "metrics.json").read_text())
    return metrics["digest"], metrics["provenance"]


def stage_seconds(scratch: Path, name: str, params: dict, portable: bool, repeats: int) -> float:
    repo = make_copy(scratch / f"{name.replace(' ', '-')}-{portable}", portable=portable, **params)
    return median_seconds(f"{PYTHON} -m detflow.trial --out data/trials/a.nc", repo, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        scratch = Path(folder)
        for name, params in DIGEST_RUNS.items():
            digest, provenance = portable_digest(scratch, name, params)
            print(f"portable digest, {name}: {digest}")
        print(
            f"  on {provenance['cpu_model']} ({provenance['cpu_capability']} path, "
            f"{provenance['intra_op_threads']} thread, MKL_CBWR={provenance['mkl_cbwr']}, "
            f"torch {provenance['torch_version']})"
        )
        print("| trial stage | native | portable | portable / native |")
        print("|---|---|---|---|")
        for name, params in TIMED_RUNS.items():
            native = stage_seconds(scratch, name, params, False, args.repeats)
            portable = stage_seconds(scratch, name, params, True, args.repeats)
            print(f"| {name} | {native:.2f} s | {portable:.2f} s | {portable / native:.2f} |")


if __name__ == "__main__":
    main()
