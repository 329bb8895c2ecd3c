"""Peak memory of `python -m detflow.collect` as the collected data grows.

Usage: python -m benchmarks.collect_memory [--values 2000000] [--seeds 10] [--experiments 3]
                                            [--trials a]

For each case it makes a throwaway git copy of the project whose task returns ``--values``
float32 values per seed (``benchmarks/bench_tasks.random_values``, copied into the copy's
``tasks/``, where the trial stage accepts project code), runs ``--experiments`` DVC experiments
of ``--trials`` that all run every seed, each in its own order (so every seed has experiments
times trials copies to compare, read from rows in different places), then measures the collect
command's peak RSS. Cases: the base, 4x the seeds, and 4x the values per seed. Prints figures only.
"""

from __future__ import annotations

import argparse
import inspect
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks import bench_tasks
from tests.project_copy import environment, make_copy, run_measured

PYTHON = sys.executable
MIB = 1 << 20
# What collect imports before it reads a value: the floor its peak is measured against.
IMPORTS = f"{PYTHON} -c 'import dvc.api, dvc.repo, detflow.collect'"


def seed_orders(seeds: int, experiments: int) -> list[list[int]]:
    """Every seed in each experiment, each experiment in its own order: ascending,
    descending, then evens before odds, and so on by stride."""
    orders = [list(range(seeds)), list(range(seeds))[::-1]]
    for stride in range(2, experiments):
        orders.append([s for start in range(stride) for s in range(start, seeds, stride)])
    return orders[:experiments]


def bench_project(folder: Path, values: int, trials: list[str]) -> Path:
    """A project copy whose task is ``random_values``, committed."""
    make_copy(folder, task="tasks.bench.random_values", pre_task=None, trial_id=trials)
    source = inspect.getsource(bench_tasks.random_values)
    header = '"""The benchmark\'s task, where the trial stage accepts project code."""\n\n'
    (folder / "tasks/bench.py").write_text(header + source)
    params = folder / "params.yaml"
    params.write_text(params.read_text() + f"n_values: {values}\n")
    for command in (["git", "add", "-A"], ["git", "commit", "-qm", "bench task"]):
        subprocess.run(command, cwd=folder, env=environment(), check=True)
    return folder


def run_experiments(folder: Path, seeds: int, experiments: int) -> None:
    for number, order in enumerate(seed_orders(seeds, experiments)):
        listed = "[" + ",".join(map(str, order)) + "]"
        command = [PYTHON, "-m", "dvc", "exp", "run", "-n", f"e{number}", "-S"]
        subprocess.run(
            [*command, f"torch_seed={listed}"],
            cwd=folder,
            env=environment(),
            check=True,
            capture_output=True,
        )


def measure(folder: Path, seeds: int, values: int, experiments: int, trials: list[str]) -> dict:
    """Run the experiments in a fresh copy, then collect them; the collect's figures."""
    bench_project(folder, values, trials)
    run_experiments(folder, seeds, experiments)
    seconds, peak = run_measured(f"{PYTHON} -m detflow.collect", folder)
    return {
        "seeds": seeds,
        "values_per_seed": values,
        # Every copy of every seed: what is read and compared.
        "data_mib": experiments * len(trials) * seeds * values * 4 / MIB,
        "peak_mib": peak,
        "seconds": seconds,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--values", type=int, default=2_000_000, help="float32 values per seed")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--experiments", type=int, default=3)
    parser.add_argument("--trials", default="a", help="each experiment's trial_id, e.g. a,b,c")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    trials = args.trials.split(",")
    cases = {
        "1x": (args.seeds, args.values),
        "4x seeds": (4 * args.seeds, args.values),
        "4x values": (args.seeds, 4 * args.values),
    }
    with tempfile.TemporaryDirectory() as scratch:
        _, floor = run_measured(IMPORTS, Path(scratch))
        figures = {}
        for name, (seeds, values) in cases.items():
            folder = Path(scratch) / name.replace(" ", "-")
            folder.mkdir()
            figures[name] = measure(folder, seeds, values, args.experiments, trials)
            print(f"{name}: done", file=sys.stderr)
    base = figures["1x"]["peak_mib"]
    print(f"imports alone: {floor:.0f} MiB")
    print(f"{'case':<10} {'data':>10} {'peak':>10} {'growth':>7} {'seconds':>8}")
    for name, row in figures.items():
        growth = row["peak_mib"] / base - 1
        print(
            f"{name:<10} {row['data_mib']:>6.0f} MiB {row['peak_mib']:>6.0f} MiB "
            f"{growth:>+7.1%} {row['seconds']:>8.1f}"
        )
    if args.json:
        args.json.write_text(json.dumps({"imports_mib": floor, **figures}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
