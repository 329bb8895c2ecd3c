"""Where a run here first computes differently from a commit's reference trace: two finished,
bounded traces, aligned by op name where their sequences part, so that an op another torch
version inserts, drops or renames does not hide the first op that really computes otherwise.
No torch."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from detflow.trace_format import (
    OUTPUT_UNINITIALISED,
    RECORD_DTYPE,
    Difference,
    TraceFiles,
    digests_differ,
    read_strings,
    values_path,
)

# Ops aligned after the sequences part: difflib's matcher is quadratic at worst, and another
# torch's decompositions differ locally, so the first real difference comes soon after.
ALIGN_WINDOW = 4000


@dataclass(frozen=True)
class Trace:
    records: np.ndarray
    names: np.ndarray  # each record's op name (object array of str)
    sums: np.ndarray | None = None  # each op's output sum, where the run kept them

    @classmethod
    def load(cls, files: TraceFiles) -> Trace:
        records = np.fromfile(files.ops, dtype=RECORD_DTYPE)
        table = np.array(["", *read_strings(files.strings).get("name", [])], dtype=object)
        ids = records["name"].astype(np.int64)
        names = np.where(ids < len(table), table[np.minimum(ids, len(table) - 1)], "?")
        path = Path(values_path(files.ops.with_suffix("")))
        sums = np.fromfile(path, dtype="<f8") if path.is_file() else None
        return cls(records, names, sums if sums is not None and len(sums) == len(records) else None)

    def sum_at(self, index: int) -> float | None:
        if self.sums is None or index >= len(self.sums) or not np.isfinite(self.sums[index]):
            return None
        return float(self.sums[index])

    def __len__(self) -> int:
        return len(self.records)


@dataclass(frozen=True)
class Found:
    """The first difference from the commit: ``kind`` outputs (the same op gave other outputs,
    at ``commit_index`` in the commit's trace and ``here_index`` here), path (the sequences part
    there and no aligned op differs within the window) or ended (one trace stops short).
    ``parted``: where the op sequences first parted, when they did, and the ops there."""

    kind: str
    commit_index: int
    here_index: int
    parted: tuple[int, int, str, str] | None = None
    skipped: tuple[int, int] = (0, 0)  # ops only the commit, only here, before the difference

    def size(self, commit: Trace, here: Trace) -> str | None:
        """How much the outputs differ, from the runs' output sums, when both kept them."""
        ours, theirs = here.sum_at(self.here_index), commit.sum_at(self.commit_index)
        if ours is None or theirs is None:
            return None
        gap = abs(ours - theirs)
        if not gap:
            return (
                f"the sum of its outputs is {ours!r} both here and at the commit: they differ "
                f"by less than the sum shows, or in order only"
            )
        relative = f", relative {gap / abs(theirs):.1e}" if theirs else ""
        return (
            f"the sum of its outputs is {ours!r} here vs {theirs!r} at the commit "
            f"(difference {gap:.2e}{relative})"
        )

    def difference(self, commit: Trace, here: Trace) -> Difference:
        """As ``pinpoint_report.describe`` takes it: the commit's record first."""
        first = commit.records[self.commit_index] if self.commit_index < len(commit) else None
        second = here.records[self.here_index] if self.here_index < len(here) else None
        kind = "outputs" if self.kind == "outputs" else self.kind
        return Difference(self.commit_index, kind, first, second, None)


def outputs_differ(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    garbage = ((a["flags"] | b["flags"]) & OUTPUT_UNINITIALISED) != 0
    return digests_differ(a, b, "outputs") & ~garbage


def first_found(commit: Trace, here: Trace) -> Found | None:
    """The first op that differs from the commit, or None where every traced op agrees.

    Examples
    --------
    >>> def trace(names, outputs):
    ...     records = np.zeros(len(names), RECORD_DTYPE); records["outputs_lo"] = outputs
    ...     return Trace(records, np.array(names, dtype=object))
    >>> first_found(trace(["a", "b", "c"], [1, 2, 3]), trace(["a", "x", "b", "c"], [1, 9, 2, 4]))
    Found(kind='outputs', commit_index=2, here_index=3, parted=(1, 1, 'b', 'x'), skipped=(0, 1))
    """
    common = min(len(commit), len(here))
    same = commit.names[:common] == here.names[:common]
    differ = outputs_differ(commit.records[:common], here.records[:common])
    found = np.flatnonzero(~same | differ)
    if not len(found):
        if len(commit) == len(here):
            return None
        return Found("ended", common, common)
    start = int(found[0])
    if same[start]:
        return Found("outputs", start, start)
    parted = (start, start, str(commit.names[start]), str(here.names[start]))
    return aligned(commit, here, start, parted)


def aligned(commit: Trace, here: Trace, start: int, parted: tuple[int, int, str, str]) -> Found:
    """Align the ops from ``start`` by name and find the first matched op whose outputs differ."""
    ours = list(commit.names[start : start + ALIGN_WINDOW])
    theirs = list(here.names[start : start + ALIGN_WINDOW])
    matcher = difflib.SequenceMatcher(None, ours, theirs, autojunk=False)
    for a, b, size in matcher.get_matching_blocks():
        if not size:
            continue
        left = commit.records[start + a : start + a + size]
        right = here.records[start + b : start + b + size]
        hits = np.flatnonzero(outputs_differ(left, right))
        if len(hits):
            offset = int(hits[0])
            i, j = start + a + offset, start + b + offset
            skipped = (i - start - matched_before(matcher, a + offset), 0)
            skipped = (skipped[0], j - start - matched_before(matcher, a + offset))
            return Found("outputs", i, j, parted, skipped)
    return Found("path", start, start, parted)


def matched_before(matcher: difflib.SequenceMatcher, position: int) -> int:
    """How many of the commit's ops before ``position`` (from the parting) were matched."""
    count = 0
    for a, _, size in matcher.get_matching_blocks():
        count += max(0, min(size, position - a))
    return count
