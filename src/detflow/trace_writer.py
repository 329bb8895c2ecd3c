"""Streams a traced run's records and strings to disk, flushed often enough that pinpoint,
reading the files as they grow, compares the runs while they run and stops them early."""

from __future__ import annotations

import contextlib
import errno
import math
import os
import struct
import time
from typing import Any

from detflow.cli import DetflowError
from detflow.trace_format import RECORD, TraceFiles

# With --values, one float64 per record: the sum of the op's first floating-point output (NaN
# where it has none), so that a difference from a commit can say how large it is.
VALUE = struct.Struct("<d")

# Flush at least this often (seconds): what pinpoint sees lags the run by about this much.
FLUSH_SECONDS = 0.05


def write_failure(path: os.PathLike | str, error: OSError) -> DetflowError:
    """One line for a trace that could not be written, the disk-full case named."""
    folder = os.path.dirname(os.fspath(path))
    why = error.strerror or str(error)
    if error.errno == errno.ENOSPC:
        return DetflowError(
            f"the trace {path} could not be written: no space left on the device of {folder} "
            f"(ENOSPC): free space there, or point TMPDIR at a disk with room"
        )
    return DetflowError(
        f"the trace {path} could not be written: {why}: check that {folder} is writable, or "
        f"point TMPDIR elsewhere"
    )


class TraceWriter:
    """Streams records to ``files.ops`` and each new string, once, to ``files.strings``.

    Strings are numbered per kind in order of first use (0 means none), so two runs that agree
    up to an op also agree on the numbers of the op names seen so far. The strings are flushed
    before the records, so a reader never sees a record whose strings are not yet there.

    A write that fails (a full disk) is kept in ``error`` and raised, once, as a DetflowError:
    a task that catches it cannot make the trace look whole, since ``trace_seed`` checks it.
    """

    def __init__(self, files: TraceFiles, values: os.PathLike | str | None = None) -> None:
        self.files = files
        self.error: DetflowError | None = None
        self.values = None
        try:
            self.ops = open(files.ops, "wb", buffering=1 << 20)  # noqa: SIM115 (closed in close())
            self.strings = open(files.strings, "w", encoding="utf-8")  # noqa: SIM115
            if values is not None:
                self.values = open(values, "wb", buffering=1 << 16)  # noqa: SIM115
        except OSError as error:
            raise write_failure(files.ops, error) from error
        self.ids: dict[str, dict[str, int]] = {}
        self.count = 0
        self.flushed_at = time.monotonic()

    def intern(self, kind: str, text: str) -> int:
        table = self.ids.setdefault(kind, {})
        number = table.get(text)
        if number is None:
            number = table[text] = len(table) + 1
            clean = " ".join(text.split())  # one line per string
            self.guarded(self.strings.write, f"{kind}\t{clean}\n")
        return number

    def write(self, *fields: Any, value: float = math.nan) -> None:
        if self.values is not None:
            self.guarded(self.values.write, VALUE.pack(value))
        self.guarded(self.ops.write, RECORD.pack(*fields))
        self.count += 1
        if time.monotonic() - self.flushed_at > FLUSH_SECONDS:
            self.flush()

    def guarded(self, call: Any, *args: Any) -> Any:
        if self.error is not None:
            raise self.error
        try:
            return call(*args)
        except OSError as error:
            self.error = write_failure(self.files.ops, error)
            raise self.error from error

    def flush(self) -> None:
        if not self.ops.closed and self.error is None:
            self.guarded(self.strings.flush)
            if self.values is not None:
                self.guarded(self.values.flush)
            self.guarded(self.ops.flush)
        self.flushed_at = time.monotonic()

    def close(self) -> None:
        try:
            self.flush()
        finally:
            for stream in (self.ops, self.strings, self.values):
                if stream is None:
                    continue
                # The data is lost either way; the first error says why.
                with contextlib.suppress(OSError):
                    stream.close()

    def __enter__(self) -> TraceWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
