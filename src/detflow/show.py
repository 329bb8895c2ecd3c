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
    parser.add_argument("--all", action="store_true", help="every variable's table, however many")
    args = parser.parse_args(argv)

    from detflow.result_record import read_record, report_lines

    read_record(args.result)  # a missing or damaged result is one line, before any table
    if not args.brief:
        print("\n".join(table_lines(args.result, everything=args.all)))
    print("\n".join(report_lines(args.result, args.metrics, brief=args.brief)))
    return 0


# The tables of a small result are printed whole; a big model's (a state_dict of 122 arrays)
# would run to thousands of lines, so it gets a line per variable, up to this many.
TABLE_MAX_LINES = 50
SUMMARY_MAX_VARIABLES = 40


def table_lines(result_path: Path, everything: bool) -> list[str]:
    from detflow.artifact import read_dataset

    result = read_dataset(result_path)
    tables = [str(result[name].drop_attrs()) for name in result.data_vars]
    lines = "\n".join(tables).splitlines()
    if everything or len(lines) <= TABLE_MAX_LINES:
        return lines
    names = list(result.data_vars)
    shown = [
        f"{name}: {result[name].dtype} {dict(result[name].sizes)}"
        for name in names[:SUMMARY_MAX_VARIABLES]
    ]
    left = len(names) - len(shown)
    more = f", and {left} more" if left else ""
    return [
        f"{len(names)} variables{more} ({len(lines)} lines of tables: "
        f"`python -m detflow.show --all` prints them):",
        *shown,
    ]


def cli() -> None:
    """The ``detflow-show`` entry point."""
    run_main(main)


if __name__ == "__main__":
    cli()
