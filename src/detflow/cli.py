"""How every detflow command runs: one-line errors for users, with the traceback only when
they ask for it, and a memory footprint that does not grow with the number of seeds."""

from __future__ import annotations

import argparse
import contextlib
import ctypes
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


# glibc's M_MMAP_THRESHOLD, and the size from which blocks are mmapped: freed, they go back to
# the OS. By default glibc raises the threshold to the size of each large block freed, after
# which such blocks come from the heap and stay: a stage receiving one 8 MB result per seed then
# grew by 20% from 10 to 40 seeds. A fixed threshold turns that adjustment off.
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 4 << 20


def return_large_blocks_to_the_os() -> None:
    """Fix glibc's mmap threshold (elsewhere, or without mallopt, nothing changes)."""
    if not sys.platform.startswith("linux"):
        return
    # Another C library (musl has no mallopt) keeps its own behaviour.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)


def run_main(main: Callable[[Sequence[str] | None], int | None]) -> None:
    """Call ``main`` and exit, printing a DetflowError as ``detflow: error: ...``.

    Unexpected exceptions are bugs in detflow and keep their traceback.
    """
    return_large_blocks_to_the_os()
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
