"""The trace format: one fixed-size record per aten op, written by ``detflow.trace`` in a
child process and compared here in lockstep, a chunk of records at a time, so that traces of
millions of ops need little memory. No torch."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

# One fixed-size record per op: the ids of its strings (0: none; numbered per kind in order of
# first use, in the run's strings file), flags, and blake2b-128 digests of inputs and outputs.
RECORD = struct.Struct("<5IB3x16s16s")
RECORD_DTYPE = np.dtype(
    [
        ("name", "<u4"),
        ("module", "<u4"),
        ("module_class", "<u4"),
        ("source", "<u4"),
        ("via", "<u4"),
        ("flags", "u1"),
        ("pad", "V3"),
        ("inputs_lo", "<u8"),
        ("inputs_hi", "<u8"),
        ("outputs_lo", "<u8"),
        ("outputs_hi", "<u8"),
    ]
)
STRING_FIELDS = ("name", "module", "module_class", "source", "via")

# Record flags.
BACKWARD = 1  # ran in autograd's backward pass
OUTPUT_UNINITIALISED = 2  # the outputs are uninitialised memory (empty-like ops): not hashed
READ_UNINITIALISED = 4  # an input was memory never written: left out of the inputs' digest
OUTSIDE_FORWARD = 8  # the module was found from a method outside its forward (its __init__)
RANDOM = 16  # the op takes a Generator: an RNG op
UNHASHABLE = 32  # a tensor without readable bytes (sparse, meta): only dtype and shape hashed

# Records compared per read: about 230 kB a file.
CHUNK_RECORDS = 4096


@dataclass(frozen=True)
class TraceFiles:
    """A traced run's files: the records, their strings, and the run's summary (JSON)."""

    ops: Path
    strings: Path
    summary: Path


def trace_files(prefix: Path) -> TraceFiles:
    return TraceFiles(
        *(prefix.parent / f"{prefix.name}.{ext}" for ext in ("ops", "strings", "json"))
    )


def read_strings(path: Path) -> dict[str, list[str]]:
    """A run's strings by kind, in id order (id n is ``strings[kind][n - 1]``)."""
    strings: dict[str, list[str]] = {kind: [] for kind in STRING_FIELDS}
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            kind, _, text = line.rstrip("\n").partition("\t")
            strings.setdefault(kind, []).append(text)
    return strings


def read_chunk(stream: BinaryIO, records: int) -> np.ndarray:
    data = stream.read(records * RECORD.size)
    return np.frombuffer(data, RECORD_DTYPE, count=len(data) // RECORD.size)


# Comparing two traces -----------------------------------------------------------------------


@dataclass(frozen=True)
class Difference:
    """Where two traces first differ: ``kind`` is ``outputs`` (same op, other outputs),
    ``path`` (another op at that position) or ``ended`` (one trace stops there).

    ``first`` and ``second`` are the runs' records at ``index`` (None for a trace that ended);
    ``inputs_index`` is the first position, up to ``index``, whose inputs differed.
    """

    index: int
    kind: str
    first: np.void | None
    second: np.void | None
    inputs_index: int | None


def name_translation(names_first: list[str], names_second: list[str]) -> np.ndarray:
    """Maps the second run's name ids to the first run's (-1 for a name it never used)."""
    ids = {name: number for number, name in enumerate(names_first, start=1)}
    return np.array([0, *(ids.get(name, -1) for name in names_second)], dtype=np.int64)


def digests_differ(a: np.ndarray, b: np.ndarray, which: str) -> np.ndarray:
    return (a[f"{which}_lo"] != b[f"{which}_lo"]) | (a[f"{which}_hi"] != b[f"{which}_hi"])


def first_difference(
    first: Path,
    second: Path,
    translation: np.ndarray,
    chunk_records: int = CHUNK_RECORDS,
) -> Difference | None:
    """Read two trace files in lockstep, a chunk at a time, and return where they first differ.

    Memory stays at a few chunks whatever the traces' length. ``translation`` maps the second
    run's name ids to the first's (``name_translation``).
    """
    position, inputs_index = 0, None
    with open(first, "rb") as stream_a, open(second, "rb") as stream_b:
        while True:
            a, b = read_chunk(stream_a, chunk_records), read_chunk(stream_b, chunk_records)
            common = min(len(a), len(b))
            a_common, b_common = a[:common], b[:common]
            same_op = translation[b_common["name"]] == a_common["name"]
            garbage = ((a_common["flags"] | b_common["flags"]) & OUTPUT_UNINITIALISED) != 0
            outputs_differ = digests_differ(a_common, b_common, "outputs") & ~garbage
            found = np.flatnonzero(~same_op | outputs_differ)
            end = found[0] if len(found) else common
            if inputs_index is None:
                inputs_differ = np.flatnonzero(
                    digests_differ(a_common, b_common, "inputs")[: end + 1]
                )
                if len(inputs_differ):
                    inputs_index = position + int(inputs_differ[0])
            if len(found):
                kind = "outputs" if same_op[end] else "path"
                return Difference(position + int(end), kind, a[end], b[end], inputs_index)
            if len(a) != len(b):
                rest_a = a[common] if len(a) > common else None
                rest_b = b[common] if len(b) > common else None
                return Difference(position + common, "ended", rest_a, rest_b, None)
            if not common:
                return None
            position += common
