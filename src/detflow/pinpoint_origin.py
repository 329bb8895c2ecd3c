"""Where data from outside torch came from: two runs' ledgers (``detflow.trace_ledger``)
compared up to the first divergence. The first draw or read that differs names its source
(NumPy's global RNG, Python's ``random``, a file) and the user's line; failing that, runs with
different string hash seeds point at hash randomisation. No torch."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

from detflow.trace_format import ledger_path

FIXES = {
    "numpy": "seed it in the pre-task (np.random.seed, or detflow.seeding.seed_everything), or "
    "draw from a np.random.default_rng(torch_seed)",
    "random": "seed it in the pre-task (random.seed, or detflow.seeding.seed_everything), or "
    "draw from a random.Random(torch_seed)",
}
SOURCES = {"numpy": "NumPy's global RNG", "random": "Python's random module"}


def read_ledger(prefix: Path | str, before: int | None = None) -> list[dict[str, Any]]:
    """A run's entries up to op ``before`` (all where None); none where there is no file."""
    try:
        with open(ledger_path(prefix), encoding="utf-8") as lines:
            entries = [json.loads(line) for line in lines if line.endswith("\n")]
    except (OSError, ValueError):
        return []
    return [e for e in entries if before is None or e["op"] <= before]


def took(entry: dict[str, Any]) -> str:
    verb = "opened" if entry["kind"] == "file" else "called"
    return f"{verb} {entry['what']} at {entry['source']} (before op #{entry['op']})"


def differing_entry(entry: dict[str, Any]) -> str:
    """The words for a draw or read whose state or contents differed between the runs."""
    where = f"{entry['what']} at {entry['source']} (before op #{entry['op']})"
    if entry["kind"] == "file":
        return (
            f"a file: {where} read other contents in each run, so the task reads a file that "
            f"changes between runs (a cache it writes, a download, a log): make it a dependency "
            f"that stays put, or stop reading it back"
        )
    return (
        f"{SOURCES[entry['kind']]}: {where} drew from a generator in another state in each "
        f"run: {FIXES[entry['kind']]}"
    )


def outside_origin(
    prefixes: tuple[Path, Path], runs: tuple[int, int], before: int | None
) -> str | None:
    """What the runs took from outside torch differently, first, up to op ``before``."""
    first, second = (read_ledger(prefix, before) for prefix in prefixes)
    hash_seeds_differ = False
    for ours, theirs in itertools.zip_longest(first, second):
        if ours is None or theirs is None:
            entry, number = (ours, runs[0]) if theirs is None else (theirs, runs[1])
            return (
                f"only run {number} {took(entry)}: the runs took from outside torch in other "
                f"orders, decided earlier outside torch's ops"
            )
        if ours["kind"] == "hash" and theirs["kind"] == "hash":
            hash_seeds_differ = ours["digest"] != theirs["digest"]
            continue
        if (ours["kind"], ours["what"], ours["source"]) != (
            theirs["kind"],
            theirs["what"],
            theirs["source"],
        ):
            return (
                f"run {runs[0]} {took(ours)} where run {runs[1]} {took(theirs)}: the runs took "
                f"from outside torch in other orders"
            )
        if ours["digest"] != theirs["digest"]:
            return differing_entry(ours)
    if hash_seeds_differ:
        return (
            "hash randomisation: each run had another string hash seed (PYTHONHASHSEED unset), "
            "so a set or other hash-ordered collection of strings iterated in another order, "
            "while nothing else pinpoint watches (NumPy's and Python's global RNGs, files read) "
            "differed before this op: iterate sorted(...) instead, or set PYTHONHASHSEED for "
            "the trials"
        )
    return None
