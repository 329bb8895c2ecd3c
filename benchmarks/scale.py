"""Scale check: torch_seed 0..999 x 4 trials through the real pipeline.

Usage: python -m benchmarks.scale [--seeds 1000] [--json scale.json]

Prints each stage's wall time and peak memory, measured by running its command directly,
then the wall time of a cold `dvc repro` of the whole pipeline and the shape of the result.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from tests.project_copy import make_copy, run_measured, stage_commands

from detflow.artifact import read_dataset

GIB = 1024.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=1000)
    parser.add_argument("--trials", default="a,b,c,d")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        repo = make_copy(
            Path(folder) / "project",
            torch_seed=f"0..{args.seeds - 1}",
            trial_id=args.trials.split(","),
        )
        stages = {}
        for name, command in stage_commands(repo).items():
            seconds, peak_mib = run_measured(command, repo)
            stages[name] = {"seconds": round(seconds, 2), "peak_mib": round(peak_mib, 1)}
            print(f"{name:>10}: {seconds:6.2f} s, peak {peak_mib:7.1f} MiB")
        repro_seconds, _ = run_measured(f"{sys.executable} -m dvc repro -f --no-run-cache -q", repo)
        result = read_dataset(repo / "data/result.nc")
        shape = {name: list(result[name].shape) for name in result.data_vars}
        verdict = json.loads((repo / "metrics.json").read_text())["deterministic"]

    peak = max(stage["peak_mib"] for stage in stages.values())
    print(f"cold dvc repro: {repro_seconds:.1f} s; result shape {shape}; deterministic {verdict}")
    print(f"largest stage peak: {peak:.1f} MiB ({'under' if peak < GIB else 'OVER'} 1 GiB)")
    if args.json:
        figures = {
            "seeds": args.seeds,
            "trials": args.trials.split(","),
            "stages": stages,
            "cold_repro_seconds": round(repro_seconds, 1),
            "shape": shape,
            "deterministic": verdict,
            "largest_peak_mib": peak,
        }
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
