"""Peak memory of the trial and aggregate stages, and trial file size, as the data grows.

Usage: python -m benchmarks.memory [--values 2000000] [--seeds 10] [--trials a,b,c]

Runs each stage's command directly (no DVC) in a scratch folder, for the base case and for
4x the data two ways: 4x the seeds, and 4x the values per seed. Prints peak RSS per stage, how
it grows against the base case, and each trial file's size against its raw values' bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import yaml
from tests.project_copy import run_measured

HERE = Path(__file__).resolve().parent
MIB = 1 << 20


def measure(folder: Path, seeds: int, values: int, trials: list[str]) -> dict:
    folder.mkdir(parents=True)
    params = {
        "torch_seed": f"0..{seeds - 1}",
        "trial_id": trials,
        "pre_task": None,
        "task": "bench_tasks.random_values",
        "n_values": values,
    }
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    python = sys.executable
    trial_peaks = []
    for trial in trials:
        _, peak = run_measured(f"{python} -m detflow.trial --out data/trials/{trial}.nc", folder)
        trial_peaks.append(peak)
    seconds, aggregate_peak = run_measured(f"{python} -m detflow.aggregate", folder)
    raw = seeds * values * 4
    file_bytes = (folder / f"data/trials/{trials[0]}.nc").stat().st_size
    return {
        "seeds": seeds,
        "values_per_seed": values,
        "data_mib": round(raw * len(trials) / MIB, 1),
        "trial_peak_mib": round(max(trial_peaks), 1),
        "aggregate_peak_mib": round(aggregate_peak, 1),
        "aggregate_s": round(seconds, 2),
        "trial_file_vs_raw": round(file_bytes / raw, 4),
        "result_file_vs_raw": round(
            (folder / "data/result.nc").stat().st_size / (raw * len(trials)), 4
        ),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--values", type=int, default=2_000_000)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--trials", default="a,b,c")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    trials = args.trials.split(",")
    os.environ["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(HERE), os.environ.get("PYTHONPATH")])
    )
    cases = {
        "1x": (args.seeds, args.values),
        "4x seeds": (4 * args.seeds, args.values),
        "4x values": (args.seeds, 4 * args.values),
    }
    with tempfile.TemporaryDirectory() as folder:
        _, torch_peak = run_measured(f"{sys.executable} -c 'import torch'", Path(folder))
        figures = {
            name: measure(Path(folder) / name.replace(" ", "-"), seeds, values, trials)
            for name, (seeds, values) in cases.items()
        }
    base = figures["1x"]
    print(f"import torch: {torch_peak:.0f} MiB")
    print(
        f"{'case':<10} {'data':>9} {'trial peak':>11} {'bound':>7} {'aggregate peak':>15} {'growth':>7} {'agg s':>6} {'trial file/raw':>15}"
    )
    for name, row in figures.items():
        seed_mib = row["values_per_seed"] * 4 / MIB
        bound = torch_peak + 2 * seed_mib + 100
        growth = row["aggregate_peak_mib"] / base["aggregate_peak_mib"] - 1
        print(
            f"{name:<10} {row['data_mib']:>5.0f} MiB {row['trial_peak_mib']:>7.0f} MiB "
            f"{bound:>7.0f} {row['aggregate_peak_mib']:>11.0f} MiB {growth:>+6.0%} "
            f"{row['aggregate_s']:>6.1f} {row['trial_file_vs_raw']:>15.4f}"
        )
    if args.json:
        args.json.write_text(
            json.dumps({"import_torch_mib": torch_peak, **figures}, indent=2) + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
