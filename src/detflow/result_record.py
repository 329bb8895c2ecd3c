"""The result on disk knows itself: data/result.nc carries its own digest, verdict and the
environment that made it, and every report starts from there.

metrics.json lives in git and the result in DVC's cache, so the two part ways after a
`git checkout` without `dvc checkout`, a run-cache restore or a hand edit. A report that read
its verdict from one and its table from the other would describe a run that never happened;
so reports read the result, check that metrics.json describes it (same digest), and check
that the environment here is the one that made it before calling it "reproduced here".
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from detflow.cli import DetflowError, one_line
from detflow.environment import BIT_SHAPING_VARIABLES, differences, fingerprint

# Verdict attrs, written once every value was compared (aggregate's ``result_attrs``).
DIGEST, DETERMINISTIC, DISAGREEING, VERDICT, N_TRIALS = (
    "digest",
    "deterministic",
    "disagreeing_seeds",
    "verdict",
    "n_trials",
)
VERDICT_KEYS = (DIGEST, DETERMINISTIC, DISAGREEING, VERDICT, N_TRIALS)
# Beside metrics.json: the per-seed values, provenance and disagreements behind its summary.
EVIDENCE_NAME = "evidence.json"

# Attrs that trials record as JSON text, kept out of metrics.json's flat provenance.
TRIAL_RECORDS = ("code_files", "params", "environment", "env_read", "bound_params")


def deterministic_text(value: bool | None) -> str:
    """netCDF attrs hold no bool or null: ``true``, ``false``, or ``not compared``."""
    return "not compared" if value is None else str(value).lower()


def read_record(path: Path) -> dict[str, Any]:
    """The result file's global attrs, without reading its values."""
    from detflow.artifact import open_netcdf

    if not path.is_file():
        raise DetflowError(
            f"{path} is missing: run `dvc repro` to make it (or `dvc checkout` to restore it)"
        )
    try:
        with open_netcdf(path, "r") as nc:
            return dict(nc.__dict__)
    except Exception as error:  # netCDF4 raises OSError, RuntimeError, ...
        raise DetflowError(
            f"{path} is not a readable netCDF file ({one_line(error)}): run `dvc repro -f`"
        ) from error


def load_json(path: Path) -> tuple[dict | None, str | None]:
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except OSError:
        return None, f"{path} is missing: run `dvc repro` to write it"
    except ValueError as error:
        return None, f"{path} is not JSON ({error}): run `dvc repro` to rewrite it"
    if not isinstance(loaded, dict):
        return None, f"{path} is not a JSON object: run `dvc repro` to rewrite it"
    return loaded, None


def read_metrics(path: Path, record: Mapping[str, Any]) -> tuple[dict | None, str | None]:
    """metrics.json with the evidence.json beside it, when both describe the result ``record``
    came from; else None and the line that says what is wrong and what fixes it."""
    if DIGEST not in record:
        return None, (
            "the result on disk records no digest (an older detflow made it): run `dvc repro -f`"
        )
    found: list[dict] = []
    for part in (path, path.with_name(EVIDENCE_NAME)):
        loaded, problem = load_json(part)
        if loaded is None:
            return None, problem
        if loaded.get(DIGEST) != record[DIGEST]:
            return None, (
                f"{part} does not describe the result on disk (digest {loaded.get(DIGEST)} vs "
                f"{record[DIGEST]}), as after a `git checkout` without `dvc checkout`: run "
                f"`dvc checkout` to bring back the result it describes, or `dvc repro` for both"
            )
        found.append(loaded)
    metrics, evidence = found
    return {**evidence, **metrics}, None  # the summary's keys win: metrics.json is what DVC shows


def made_elsewhere(record: Mapping[str, Any]) -> str | None:
    """How the environment that made the result differs from this one, or None if it is the
    same (then "reproduced" means this machine, in this environment, made these bits)."""
    try:
        made = json.loads(record["environment"])
    except (KeyError, TypeError, ValueError):
        return "the result on disk records no environment (an older detflow made it)"
    declared = [key.removeprefix("env.") for key in made if key.startswith("env.")]
    here = fingerprint([name for name in declared if name not in BIT_SHAPING_VARIABLES])
    changed = differences(made, here)
    if not changed:
        return None
    return f"the result on disk was made in another environment ({'; '.join(changed[:4])})"


def stand_in_metrics(record: Mapping[str, Any]) -> dict[str, Any]:
    """What the cross-machine check needs, from the result alone (no per-seed values)."""
    try:
        params = set(json.loads(record.get("params", "{}")))
    except ValueError:
        params = set()
    not_provenance = {*TRIAL_RECORDS, *params, *VERDICT_KEYS, "config_digest"}
    provenance = {
        key: value
        for key, value in record.items()
        if isinstance(value, str) and key not in not_provenance
    }
    return {
        DIGEST: record.get(DIGEST),
        "config_digest": record.get("config_digest"),
        "provenance": provenance,
    }


def cross_machine_line(record: Mapping[str, Any], metrics: Mapping | None, path: Path) -> str:
    """The cross-machine line for the result on disk (``metrics``: its metrics, or None)."""
    from detflow.committed import compare_with_head

    elsewhere = made_elsewhere(record)
    if elsewhere:
        return (
            f"cross-machine: not tested here: {elsewhere}; run `dvc repro` to make and "
            f"test the result in this environment"
        )
    try:
        code_files = json.loads(record.get("code_files", "{}"))
    except ValueError:
        code_files = {}
    return compare_with_head(metrics or stand_in_metrics(record), path, code_files)


def verdict_summary(record: Mapping[str, Any]) -> str:
    """``deterministic: True (disagreeing torch_seed: none)``, from the result itself."""
    value = record.get(DETERMINISTIC, "unknown")
    if value == "not compared":
        return f"deterministic: not compared ({record.get(N_TRIALS, '?')} trial per seed)"
    seeds = record.get(DISAGREEING) or "none"
    return f"deterministic: {value.capitalize()} (disagreeing torch_seed: {seeds})"


def report_lines(result: Path, metrics_path: Path, *, brief: bool) -> list[str]:
    """What `dvc repro` (``brief``: the verdict as the aggregate wrote it) and `show` print
    after the table: verdict, digest, whether metrics.json describes the result, and the
    cross-machine line."""
    record = read_record(result)
    metrics, mismatch = read_metrics(metrics_path, record)
    lines = [record.get(VERDICT, verdict_summary(record)) if brief else verdict_summary(record)]
    lines.append(f"digest: {record.get(DIGEST, 'not recorded')}")
    if mismatch:
        lines.append(mismatch)
    lines.append(cross_machine_line(record, metrics, metrics_path))
    return lines
