"""Print the result table and the determinism verdict after `dvc repro`.

Everything printed comes from the result on disk (data/result.nc): its table, its verdict
and digest; metrics.json is used only when it describes that result, and a line says so when
it does not. ``--brief`` (the pipeline's `report` stage) prints the verdict as the aggregate
wrote it, without the table.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from detflow.cli import run_main, stage_parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = stage_parser(__doc__.splitlines()[0])
    parser.add_argument("--result", type=Path, default=Path("data/result.nc"))
    parser.add_argument("--metrics", type=Path, default=Path("metrics.json"))
    parser.add_argument(
        "--brief", action="store_true", help="the verdict and the cross-machine line only"
    )
    args = parser.parse_args(argv)

    from detflow.result_record import read_record, report_lines

    read_record(args.result)  # a missing or damaged result is one line, before any table
    if not args.brief:
        from detflow.artifact import read_dataset

        result = read_dataset(args.result)
        for name in result.data_vars:
            print(result[name].drop_attrs())
    print("\n".join(report_lines(args.result, args.metrics, brief=args.brief)))
    return 0


def cli() -> None:
    """The ``detflow-show`` entry point."""
    run_main(main)


if __name__ == "__main__":
    cli()
