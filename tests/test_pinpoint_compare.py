"""Pinpoint's comparison of traces (synthetic ones, streamed in windows) and the tracer's
handling of uninitialised memory, in this process: no child processes."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import torch

from detflow import pinpoint_compare
from detflow.pinpoint_compare import first_difference
from detflow.trace_format import (
    OUTPUT_UNINITIALISED,
    READ_UNINITIALISED,
    RECORD_DTYPE,
    read_strings,
    trace_files,
)

# The comparison, on synthetic traces ---------------------------------------------------------


def write_trace(prefix: Path, names: list[str], records: np.ndarray) -> None:
    files = trace_files(prefix)
    records.tofile(files.ops)
    files.strings.write_text("".join(f"name\t{name}\n" for name in names))


def synthetic(count: int, name: int = 1) -> np.ndarray:
    records = np.zeros(count, RECORD_DTYPE)
    records["name"] = name
    records["outputs_lo"] = np.arange(count)
    return records


def compare(first: Path, second: Path):
    return first_difference(first, second)


def test_the_comparison_streams_a_million_ops(tmp_path):
    count = 1_000_000
    records = synthetic(count)
    write_trace(tmp_path / "a", ["aten.add.Tensor"], records)
    records["outputs_hi"][count - 1] = 1  # the very last op differs
    write_trace(tmp_path / "b", ["aten.add.Tensor"], records)
    del records
    tracemalloc.start()
    try:
        difference = compare(tmp_path / "a", tmp_path / "b")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (difference.index, difference.kind) == (count - 1, "outputs")
    assert peak < 20 * 2**20, f"peak {peak / 2**20:.1f} MiB"


def test_different_ops_at_one_position_are_a_path_difference(tmp_path, monkeypatch):
    monkeypatch.setattr(pinpoint_compare, "WINDOW_RECORDS", 3)  # several windows
    # The runs number their names differently; the comparison goes by the names themselves.
    first, second = synthetic(10), synthetic(10, name=2)
    second["name"][7] = 1
    write_trace(tmp_path / "a", ["aten.add.Tensor", "aten.mul.Tensor"], first)
    write_trace(tmp_path / "b", ["aten.mul.Tensor", "aten.add.Tensor"], second)
    difference = compare(tmp_path / "a", tmp_path / "b")
    assert (difference.index, difference.kind) == (7, "path")


def test_a_trace_that_ends_first_is_a_difference(tmp_path, monkeypatch):
    monkeypatch.setattr(pinpoint_compare, "WINDOW_RECORDS", 4)
    write_trace(tmp_path / "a", ["aten.add.Tensor"], synthetic(10))
    write_trace(tmp_path / "b", ["aten.add.Tensor"], synthetic(12))
    difference = compare(tmp_path / "a", tmp_path / "b")
    assert (difference.index, difference.kind) == (10, "ended")
    assert difference.first is None


def test_differing_inputs_before_the_divergence_are_noted(tmp_path):
    first, second = synthetic(10), synthetic(10)
    second["inputs_lo"][3] = 1  # read other data, gave the same outputs
    second["outputs_lo"][5] = 99
    write_trace(tmp_path / "a", ["aten.gt.Scalar"], first)
    write_trace(tmp_path / "b", ["aten.gt.Scalar"], second)
    difference = compare(tmp_path / "a", tmp_path / "b")
    assert (difference.index, difference.inputs_index) == (5, 3)


def test_uninitialised_outputs_are_not_compared(tmp_path):
    first, second = synthetic(4), synthetic(4)
    second["outputs_lo"][1] = 99
    second["flags"][1] = first["flags"][1] = OUTPUT_UNINITIALISED
    write_trace(tmp_path / "a", ["aten.empty.memory_format"], first)
    write_trace(tmp_path / "b", ["aten.empty.memory_format"], second)
    assert compare(tmp_path / "a", tmp_path / "b") is None


# The tracer, in this process -------------------------------------------------------------


def traced(tmp_path: Path, name: str, garbage: float, read_garbage: bool) -> Path:
    """A trace of ops on memory from torch.empty, which here holds ``garbage``."""
    from detflow.trace import OpTracer, TraceWriter

    prefix = tmp_path / name
    with TraceWriter(trace_files(prefix)) as writer, OpTracer(writer, tmp_path / "params.yaml"):
        weight = torch.empty(3)
        weight.numpy()[:] = garbage  # what a fresh process's memory held: no torch op
        weight.uniform_(generator=torch.Generator().manual_seed(0))
        spare = torch.empty(2, 2)
        spare.numpy()[:] = garbage
        view = spare.view(4)
        if read_garbage:
            view.add(1.0)
    return prefix


def flagged_ops(prefix: Path, flag: int) -> list[tuple[str, bool]]:
    """Each op of a trace by name, and whether it carries ``flag``."""
    names = read_strings(trace_files(prefix).strings)["name"]
    records = np.fromfile(trace_files(prefix).ops, RECORD_DTYPE)
    return [(names[r["name"] - 1], bool(r["flags"] & flag)) for r in records]


def test_fills_of_uninitialised_memory_agree(tmp_path):
    first = traced(tmp_path, "a", 1.0, read_garbage=False)
    second = traced(tmp_path, "b", 2.0, read_garbage=False)
    assert compare(first, second) is None
    # .numpy() runs aten.detach: a view of the garbage, so not compared either.
    assert flagged_ops(first, OUTPUT_UNINITIALISED) == [
        ("aten.empty.memory_format", True),
        ("aten.detach.default", True),
        ("aten.uniform_.default", False),  # it overwrites the garbage: compared, and equal
        ("aten.empty.memory_format", True),
        ("aten.detach.default", True),
        ("aten.view.default", True),
    ]


def test_reading_uninitialised_memory_is_flagged(tmp_path):
    first = traced(tmp_path, "a", 1.0, read_garbage=True)
    second = traced(tmp_path, "b", 2.0, read_garbage=True)
    difference = compare(first, second)
    assert flagged_ops(first, READ_UNINITIALISED)[difference.index] == ("aten.add.Tensor", True)
