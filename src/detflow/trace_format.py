"""The trace format: one fixed-size record per aten op, written by ``detflow.trace`` in a
child process and compared by ``detflow.pinpoint_compare`` in lockstep. No torch."""

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


def values_path(prefix: Path | str) -> str:
    """A traced run's per-op output sums (``--values``: one float64 a record), if kept."""
    return f"{prefix}.values"


def ledger_path(prefix: Path | str) -> str:
    """A traced run's ledger of draws and reads outside torch (``detflow.trace_ledger``)."""
    return f"{prefix}.ledger"


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


def digests_differ(a: np.ndarray, b: np.ndarray, which: str) -> np.ndarray:
    return (a[f"{which}_lo"] != b[f"{which}_lo"]) | (a[f"{which}_hi"] != b[f"{which}_hi"])
