"""Compare traces in lockstep while their runs still write them: each pair of runs is read as
far as both have got, a window at a time, so the first divergence is seen within moments of
being written, and memory stays at a few windows whatever the traces' length. No torch."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np

from detflow.trace_format import (
    CHUNK_RECORDS,
    OUTPUT_UNINITIALISED,
    RECORD,
    RECORD_DTYPE,
    Difference,
    TraceFiles,
    digests_differ,
)

# Records held per side of a pair at most: a run far ahead of the other waits on disk.
WINDOW_RECORDS = 4 * CHUNK_RECORDS


@dataclass
class NameTable:
    """Op names across runs, numbered once: two runs number their names in their own order."""

    numbers: dict[str, int] = field(default_factory=dict)

    def number(self, name: str) -> int:
        return self.numbers.setdefault(name, len(self.numbers) + 1)


def open_regular(path: Path) -> BinaryIO | None:
    """``path`` for reading, or None while it is missing, or if it is no regular file (a
    device such as /dev/full would read forever)."""
    try:
        stream = open(path, "rb")  # noqa: SIM115 (the caller closes it)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(os.fstat(stream.fileno()).st_mode):
        stream.close()
        return None
    return stream


class GrowingTrace:
    """One run's trace as it grows: whole records only, and its op names as they appear.

    The writer flushes strings before records, so every name a visible record uses is there.
    """

    def __init__(self, files: TraceFiles, names: NameTable) -> None:
        self.files = files
        self.names = names
        self.ops: BinaryIO | None = None
        self.strings: BinaryIO | None = None
        self.ops_tail = b""
        self.strings_tail = b""
        self.canonical = [0]  # this run's name id -> the table's number

    def read(self, most: int) -> np.ndarray:
        """Up to ``most`` whole records not read before (none while the file is missing)."""
        if most <= 0:
            return np.zeros(0, RECORD_DTYPE)
        if self.ops is None:
            self.ops = open_regular(self.files.ops)
            if self.ops is None:
                return np.zeros(0, RECORD_DTYPE)
        data = self.ops_tail + self.ops.read(most * RECORD.size - len(self.ops_tail))
        whole = len(data) // RECORD.size * RECORD.size
        self.ops_tail = data[whole:]
        return np.frombuffer(data[:whole], RECORD_DTYPE).copy()

    def canonical_names(self, ids: np.ndarray) -> np.ndarray:
        if len(ids) and int(ids.max()) >= len(self.canonical):
            self.read_names()
        table = np.asarray(self.canonical, dtype=np.int64)
        # An id whose string is not there (a run killed mid-write) matches no other name.
        return np.where(ids < len(table), table[np.minimum(ids, len(table) - 1)], -1)

    def read_names(self) -> None:
        if self.strings is None:
            self.strings = open_regular(self.files.strings)
            if self.strings is None:
                return
        data = self.strings_tail + self.strings.read()
        *lines, self.strings_tail = data.split(b"\n")
        for line in lines:
            kind, _, text = line.decode("utf-8", "replace").partition("\t")
            if kind == "name":
                self.canonical.append(self.names.number(text))

    def close(self) -> None:
        for stream in (self.ops, self.strings):
            if stream is not None:
                stream.close()


@dataclass
class Lockstep:
    """The first difference between a reference run and another, found as they are written.

    ``advance`` compares what both have written; ``done`` says which runs ended normally, so
    that a trace that stops short counts as a difference only when its run really ended (a run
    pinpoint stopped is merely cut short).
    """

    first: GrowingTrace
    second: GrowingTrace
    position: int = 0
    inputs_index: int | None = None
    difference: Difference | None = None
    agreed: bool = False
    pending: list[np.ndarray] = field(default_factory=lambda: [np.zeros(0, RECORD_DTYPE)] * 2)

    @classmethod
    def of(cls, first: TraceFiles, second: TraceFiles, names: NameTable) -> Lockstep:
        return cls(GrowingTrace(first, names), GrowingTrace(second, names))

    @property
    def settled(self) -> bool:
        return self.agreed or self.difference is not None

    def advance(self, done: tuple[bool, bool] = (False, False), limit: int | None = None) -> None:
        """Compare all that both runs have written (up to position ``limit``)."""
        while not self.settled:
            grown = False
            for side, trace in enumerate((self.first, self.second)):
                room = WINDOW_RECORDS - len(self.pending[side])
                new = trace.read(room)
                if len(new):
                    self.pending[side] = np.concatenate([self.pending[side], new])
                    grown = True
            compared = self.compare(limit)
            if self.settled or (limit is not None and self.position >= limit):
                return
            if not grown and not compared:
                self.check_ended(done)
                return

    def compare(self, limit: int | None) -> bool:
        a, b = self.pending
        common = min(len(a), len(b))
        if limit is not None:
            common = min(common, max(limit - self.position, 0))
        if not common:
            return False
        a_common, b_common = a[:common], b[:common]
        names_a = self.first.canonical_names(a_common["name"])
        names_b = self.second.canonical_names(b_common["name"])
        same_op = names_a == names_b
        garbage = ((a_common["flags"] | b_common["flags"]) & OUTPUT_UNINITIALISED) != 0
        outputs_differ = digests_differ(a_common, b_common, "outputs") & ~garbage
        found = np.flatnonzero(~same_op | outputs_differ)
        end = int(found[0]) if len(found) else common
        if self.inputs_index is None:
            inputs_differ = np.flatnonzero(digests_differ(a_common, b_common, "inputs")[: end + 1])
            if len(inputs_differ):
                self.inputs_index = self.position + int(inputs_differ[0])
        if len(found):
            kind = "outputs" if same_op[end] else "path"
            index = self.position + end
            self.difference = Difference(index, kind, a[end], b[end], self.inputs_index)
            return True
        self.pending = [a[common:], b[common:]]
        self.position += common
        return True

    def check_ended(self, done: tuple[bool, bool]) -> None:
        """With nothing left to read: a finished run whose trace stops short of the other's."""
        a, b = self.pending
        if done[0] and done[1] and not len(a) and not len(b):
            self.agreed = True
        elif done[0] and not len(a) and len(b):
            self.difference = Difference(self.position, "ended", None, b[0], None)
        elif done[1] and not len(b) and len(a):
            self.difference = Difference(self.position, "ended", a[0], None, None)

    def close(self) -> None:
        self.first.close()
        self.second.close()


def first_difference(first: Path, second: Path) -> Difference | None:
    """Where two finished traces (file prefixes) first differ, or None."""
    from detflow.trace_format import trace_files

    pair = Lockstep.of(trace_files(first), trace_files(second), NameTable())
    try:
        pair.advance(done=(True, True))
    finally:
        pair.close()
    return pair.difference
