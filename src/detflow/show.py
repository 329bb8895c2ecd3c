"""Print the result table and the determinism verdict after `dvc repro`."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from detflow.cli import DetflowError, run_main, stage_parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = stage_parser(__doc__.splitlines()[0])
    parser.add_argument("--result", type=Path, default=Path("data/result.nc"))
    parser.add_argument("--metrics", type=Path, default=Path("metrics.json"))
    args = parser.parse_args(argv)

    from detflow.artifact import read_dataset
    from detflow.committed import compare_with_head

    result = read_dataset(args.result)
    for name in result.data_vars:
        print(result[name].drop_attrs())
    try:
        metrics = json.loads(args.metrics.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise DetflowError(
            f"{args.metrics} is missing or not JSON ({error}): run `dvc repro`"
        ) from None
    seeds = metrics.get("disagreeing_seeds") or "none"
    print(f"deterministic: {metrics.get('deterministic')} (disagreeing torch_seed: {seeds})")
    print(f"digest: {metrics.get('digest')}")
    print(compare_with_head(metrics, args.metrics))
    return 0


def cli() -> None:
    """The ``detflow-show`` entry point."""
    run_main(main)


if __name__ == "__main__":
    cli()
