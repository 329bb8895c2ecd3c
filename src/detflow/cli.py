"""One-line errors for users, with the traceback only when they ask for it."""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Callable, Sequence

VERBOSE_ENV = "DETFLOW_VERBOSE"


class DetflowError(Exception):
    """A problem the user can fix; the message names the bad value and the fix."""


def one_line(error: BaseException) -> str:
    """Render an exception as a single line, so a log shows one clear message per failure."""
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def stage_parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with the ``--verbose`` flag that every detflow command shares."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--verbose",
        action="store_true",
        help=f"show the full traceback on errors (or set {VERBOSE_ENV}=1)",
    )
    return parser


def run_main(main: Callable[[Sequence[str] | None], int | None]) -> None:
    """Call ``main`` and exit, printing a DetflowError as ``detflow: error: ...``.

    Unexpected exceptions are bugs in detflow and keep their traceback.
    """
    argv = sys.argv[1:]
    verbose = "--verbose" in argv or os.environ.get(VERBOSE_ENV, "") not in ("", "0")
    try:
        code = main(argv)
    except DetflowError as error:
        if verbose:
            traceback.print_exc()
        print(f"detflow: error: {' '.join(str(error).split())}", file=sys.stderr)
        sys.exit(1)
    sys.exit(code or 0)
