"""Stage `pinpoint`: with ``pinpoint: true``, name the op where the trials first diverge.

It runs after the aggregate, on the seeds metrics.json says disagree (or, when every trial
agreed, on the first seed, for the ops torch flags as non-deterministic), and writes
pinpoint.json, a DVC metrics file, so `dvc exp show` and `dvc metrics diff` show the op. With
``pinpoint: false`` (the default) it writes only that it did not run, and never imports torch.
A divergence (``diverged: true``) or an inconclusive run (``diverged: null``: the trials
disagreed, fresh runs of one seed did not) is a finding, not a failure: ``strict: true`` is
what fails a pipeline.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from detflow.cli import run_main, stage_parser
from detflow.params import DEFAULT_PARAMS, load_params
from detflow.pinpoint import pinpoint_seeds, write_report
from detflow.pinpoint_metrics import read_verdict, seeds_to_pinpoint

NOT_RUN = "set pinpoint: true in params.yaml to run it, or run `python -m detflow.pinpoint`"


def not_run_record() -> dict[str, Any]:
    return {"ran": False, "diverged": None, "note": NOT_RUN}


def main(argv: Sequence[str] | None = None) -> int:
    parser = stage_parser(__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS, help="params file")
    parser.add_argument("--metrics", type=Path, default=Path("metrics.json"), help="the verdict")
    parser.add_argument("--out", type=Path, default=Path("pinpoint.json"), help="report file")
    args = parser.parse_args(argv)

    params = load_params(args.params)
    if not params.pinpoint:
        record = not_run_record()
        print(f"pinpoint: not run ({NOT_RUN})")
    else:
        seeds, why = seeds_to_pinpoint(params, args.metrics)
        print(why)
        disagreed = read_verdict(params, args.metrics).disagreeing
        report = pinpoint_seeds(args.params, seeds, disagreed=disagreed)
        print("\n".join(report.lines()))
        record = {"ran": True, **report.record()}
    write_report(args.out, record)
    return 0


if __name__ == "__main__":
    run_main(main)
