"""Speed and memory of detflow's pipeline against the floor and an in-process Hydra multirun.

Usage: python benchmarks/bench.py [--repeats 3] [--json benchmarks/results.json]

The floor is the wall time of `python -c "import torch"` (median of 5). For the how-to's
sweep and a wide one it takes the median of `--repeats` runs of: a cold
`dvc repro -f --no-run-cache`, a following no-op `dvc repro`, and the same sweep run as an
in-process multirun through hydra-zen's `launch` (benchmarks/multirun.py). It also runs each
stage's command once on its own to read that stage's peak memory.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

from project_copy import make_copy, run_measured, stage_commands

from detflow.params import check_torch_seeds

HERE = Path(__file__).resolve().parent
PYTHON = sys.executable

SWEEPS = {
    "how-to": {"torch_seed": [0, 1], "trial_id": ["a", "b", "c"]},
    # As a user writes a big sweep: a range is one line in params.yaml and dvc.lock.
    "wide": {"torch_seed": "0..49", "trial_id": ["a", "b", "c", "d"]},
}
TARGETS = {"how-to": 4.5, "wide": 6.0}  # cold repro, in floors
WIDE_VS_MULTIRUN = 0.35
NOOP_FLOORS = 1.0
STAGE_MEMORY_VS_TORCH = 1.3


def median_run(command: str, folder: Path, repeats: int) -> tuple[float, float]:
    """Median wall seconds and median peak MiB of ``repeats`` runs of ``command``."""
    runs = [run_measured(command, folder) for _ in range(repeats)]
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)


def measure_sweep(name: str, sweep: dict, scratch: Path, repeats: int) -> dict:
    repo = make_copy(scratch / name, **sweep)
    dvc = f"{PYTHON} -m dvc"
    run_measured(f"{dvc} repro -q", repo)  # warm the file cache once, as a user's second run
    cold, cold_peak = median_run(f"{dvc} repro -f --no-run-cache -q", repo, repeats)
    noop, _ = median_run(f"{dvc} repro -q", repo, repeats)
    stages = {
        stage: run_measured(command, repo)[1] for stage, command in stage_commands(repo).items()
    }
    seed_list = check_torch_seeds(sweep["torch_seed"])
    seeds = ",".join(map(str, seed_list))
    trials = ",".join(sweep["trial_id"])
    multirun_dir = scratch / f"{name}-multirun"
    multirun_dir.mkdir()
    multirun, multirun_peak = median_run(
        f"{PYTHON} {HERE / 'multirun.py'} --seeds {seeds} --trials {trials}", multirun_dir, repeats
    )
    return {
        "jobs": len(seed_list) * len(sweep["trial_id"]),
        "cold_repro_s": round(cold, 2),
        "cold_repro_peak_mib": round(cold_peak, 1),
        "noop_repro_s": round(noop, 2),
        "stage_peak_mib": {stage: round(peak, 1) for stage, peak in stages.items()},
        "multirun_s": round(multirun, 2),
        "multirun_peak_mib": round(multirun_peak, 1),
    }


def report(figures: dict) -> str:
    floor, torch_mib = figures["floor_s"], figures["import_torch_peak_mib"]
    lines = [
        f"floor (python -c 'import torch'): {floor:.2f} s, peak {torch_mib:.0f} MiB",
        "",
        f"{'sweep':<8} {'jobs':>5} {'cold repro':>18} {'no-op repro':>18} "
        f"{'multirun':>10} {'detflow/multirun':>17} {'max stage MiB':>18}",
    ]
    for name, sweep in figures["sweeps"].items():
        cold_floors = sweep["cold_repro_s"] / floor
        noop_floors = sweep["noop_repro_s"] / floor
        ratio = sweep["cold_repro_s"] / sweep["multirun_s"]
        stage_peak = max(sweep["stage_peak_mib"].values())
        lines.append(
            f"{name:<8} {sweep['jobs']:>5} {sweep['cold_repro_s']:>7.2f} s {cold_floors:>4.2f} fl "
            f"{sweep['noop_repro_s']:>7.2f} s {noop_floors:>4.2f} fl {sweep['multirun_s']:>8.2f} s "
            f"{ratio:>17.2f} {stage_peak:>8.0f} ({stage_peak / torch_mib:.2f}x)"
        )
    lines += ["", "targets:"]
    for name, sweep in figures["sweeps"].items():
        cold_floors = sweep["cold_repro_s"] / floor
        lines.append(
            f"  {name} cold repro <= {TARGETS[name]} floors: {cold_floors:.2f} "
            f"{'met' if cold_floors <= TARGETS[name] else 'MISSED'}"
        )
        noop_floors = sweep["noop_repro_s"] / floor
        lines.append(
            f"  {name} no-op repro <= {NOOP_FLOORS} floor: {noop_floors:.2f} "
            f"{'met' if noop_floors <= NOOP_FLOORS else 'MISSED'}"
        )
        memory = max(sweep["stage_peak_mib"].values()) / torch_mib
        lines.append(
            f"  {name} stage peak <= {STAGE_MEMORY_VS_TORCH}x import torch: {memory:.2f} "
            f"{'met' if memory <= STAGE_MEMORY_VS_TORCH else 'MISSED'}"
        )
    wide = figures["sweeps"]["wide"]
    ratio = wide["cold_repro_s"] / wide["multirun_s"]
    lines.append(
        f"  wide detflow/multirun <= {WIDE_VS_MULTIRUN}: {ratio:.2f} "
        f"{'met' if ratio <= WIDE_VS_MULTIRUN else 'MISSED'}"
    )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=HERE / "results.json")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        scratch = Path(folder)
        floors = [run_measured(f"{PYTHON} -c 'import torch'", scratch) for _ in range(5)]
        figures = {
            "floor_s": round(statistics.median(f[0] for f in floors), 3),
            "import_torch_peak_mib": round(statistics.median(f[1] for f in floors), 1),
            "sweeps": {},
        }
        for name, sweep in SWEEPS.items():
            print(f"measuring the {name} sweep ...", flush=True)
            figures["sweeps"][name] = measure_sweep(name, sweep, scratch, args.repeats)
    print(report(figures))
    args.json.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
