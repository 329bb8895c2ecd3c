"""What tracking every input costs: one trial stage of the how-to with and without its guard.

Usage: python -m benchmarks.tracking [--repeats 3]

The same `python -m detflow.trial` runs in a project copy (dvc.yaml present: the stage watches
what the task opens and reads, then checks modules, files, variables and deps) and in a plain
folder holding only params.yaml (no dvc.yaml: nothing to check against, nothing watched), at
200 and 2000 seeds, so that the cost shows as the work grows. Median of `--repeats`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from tests.project_copy import make_copy, median_seconds

PYTHON = sys.executable
COMMAND = f"{PYTHON} -m detflow.trial --out data/trials/a.nc"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print("| how-to trial stage | watched and checked | unguarded | ratio |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as scratch:
        for seeds in (200, 2000):
            guarded = make_copy(Path(scratch) / f"guarded-{seeds}", torch_seed=f"0..{seeds - 1}")
            plain = Path(scratch) / f"plain-{seeds}"
            plain.mkdir()
            (plain / "params.yaml").write_bytes((guarded / "params.yaml").read_bytes())
            watched, bare = (
                median_seconds(COMMAND, guarded, args.repeats),
                median_seconds(COMMAND, plain, args.repeats),
            )
            print(f"| {seeds} seeds | {watched:.2f} s | {bare:.2f} s | {watched / bare:.3f} |")


if __name__ == "__main__":
    main()
