"""Speed and memory of detflow's pipeline against the floor and an in-process Hydra multirun.

Usage: python -m benchmarks.bench [--repeats 3] [--json benchmarks/results.json]

The floor is the wall time of `python -c "import torch"` (median of 5, taken between each
sweep's runs). For the how-to's sweep and a wide one it takes the median of `--repeats`
rounds of: a cold `dvc repro -f --no-run-cache`, a following no-op `dvc repro`, and the same
sweep run as an in-process multirun through hydra-zen's `launch` (benchmarks/multirun.py).
It also runs each stage's command once on its own to read that stage's peak memory.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

from tests.project_copy import make_copy, run_measured, stage_commands

from detflow.params import check_torch_seeds

HERE = Path(__file__).resolve().parent
PYTHON = sys.executable

SWEEPS = {
    "how-to": {"torch_seed": [0, 1], "trial_id": ["a", "b", "c"]},
    # As a user writes a big sweep: a range is one line in params.yaml and dvc.lock.
    "wide": {"torch_seed": "0..49", "trial_id": ["a", "b", "c", "d"]},
}
# Regression guards: a cold `dvc repro` against the same sweep as an in-process multirun. The
# old targets in floors (4.5 and 6) are retired: one fresh process per trial stays.
VS_MULTIRUN = {"how-to": 1.5, "wide": 0.4}
NOOP_FLOORS = 1.0
STAGE_MEMORY_VS_TORCH = 1.3


FLOOR = f"{PYTHON} -c 'import torch'"
FLOOR_SAMPLES = 5


def median(values) -> float:
    return statistics.median(list(values))


def measure_sweep(name: str, sweep: dict, scratch: Path, repeats: int) -> dict:
    """Each figure is a median; the floor's samples are interleaved with the sweep's runs.

    This machine's speed drifts by 20% or more over minutes (it is a shared VM), so a floor
    taken minutes earlier would misjudge the sweep; each sweep gets its own floor.
    """
    repo = make_copy(scratch / name, **sweep)
    dvc = f"{PYTHON} -m dvc"
    run_measured(f"{dvc} repro -q", repo)  # warm the file cache once, as a user's second run
    seed_list = check_torch_seeds(sweep["torch_seed"])
    seeds = ",".join(map(str, seed_list))
    trials = ",".join(sweep["trial_id"])
    multirun_dir = scratch / f"{name}-multirun"
    multirun_dir.mkdir()
    multirun_command = f"{PYTHON} {HERE / 'multirun.py'} --seeds {seeds} --trials {trials}"
    floors, colds, noops, multiruns = [], [], [], []
    for _ in range(repeats):
        floors.append(run_measured(FLOOR, scratch))
        colds.append(run_measured(f"{dvc} repro -f --no-run-cache -q", repo))
        noops.append(run_measured(f"{dvc} repro -q", repo))
        multiruns.append(run_measured(multirun_command, multirun_dir))
    floors += [run_measured(FLOOR, scratch) for _ in range(FLOOR_SAMPLES - repeats)]
    stages = {
        stage: run_measured(command, repo)[1] for stage, command in stage_commands(repo).items()
    }
    return {
        "jobs": len(seed_list) * len(sweep["trial_id"]),
        "floor_s": round(median(f[0] for f in floors), 3),
        "import_torch_peak_mib": round(median(f[1] for f in floors), 1),
        "cold_repro_s": round(median(c[0] for c in colds), 2),
        "cold_repro_peak_mib": round(median(c[1] for c in colds), 1),
        "noop_repro_s": round(median(n[0] for n in noops), 2),
        "stage_peak_mib": {stage: round(peak, 1) for stage, peak in stages.items()},
        "multirun_s": round(median(m[0] for m in multiruns), 2),
        "multirun_peak_mib": round(median(m[1] for m in multiruns), 1),
    }


def report(figures: dict) -> str:
    lines = [
        f"{'sweep':<8} {'jobs':>5} {'floor':>7} {'cold repro':>18} {'no-op repro':>18} "
        f"{'multirun':>10} {'detflow/multirun':>17} {'max stage MiB':>18}",
    ]
    checks = []
    for name, sweep in figures["sweeps"].items():
        floor, torch_mib = sweep["floor_s"], sweep["import_torch_peak_mib"]
        cold_floors = sweep["cold_repro_s"] / floor
        noop_floors = sweep["noop_repro_s"] / floor
        ratio = sweep["cold_repro_s"] / sweep["multirun_s"]
        memory = max(sweep["stage_peak_mib"].values()) / torch_mib
        lines.append(
            f"{name:<8} {sweep['jobs']:>5} {floor:>5.2f} s "
            f"{sweep['cold_repro_s']:>7.2f} s {cold_floors:>4.2f} fl "
            f"{sweep['noop_repro_s']:>7.2f} s {noop_floors:>4.2f} fl {sweep['multirun_s']:>8.2f} s "
            f"{ratio:>17.2f} {memory * torch_mib:>8.0f} ({memory:.2f}x)"
        )
        checks.append((f"{name} no-op repro <= {NOOP_FLOORS} floor", noop_floors, NOOP_FLOORS))
        checks.append(
            (
                f"{name} stage peak <= {STAGE_MEMORY_VS_TORCH}x import torch",
                memory,
                STAGE_MEMORY_VS_TORCH,
            )
        )
        guard = VS_MULTIRUN[name]
        checks.append((f"{name} detflow/multirun <= {guard}", ratio, guard))
    lines += ["", "floor: python -c 'import torch', median of 5 taken between the sweep's runs", ""]
    lines.append("targets:")
    for label, value, target in checks:
        lines.append(f"  {label}: {value:.2f} {'met' if value <= target else 'MISSED'}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=HERE / "results.json")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        scratch = Path(folder)
        figures = {"sweeps": {}}
        for name, sweep in SWEEPS.items():
            print(f"measuring the {name} sweep ...", flush=True)
            figures["sweeps"][name] = measure_sweep(name, sweep, scratch, args.repeats)
    print(report(figures))
    args.json.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
