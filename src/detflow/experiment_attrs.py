"""What experiments were made with, told apart: the attrs (provenance) that the collected
file can keep because every merged experiment shares them, those that differ (which collect
reports, experiment by experiment), and the code files two experiments' code differs in.

An experiment here is anything with a ``name`` and result ``attrs`` (``experiments.Experiment``).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from detflow.result_record import VERDICT_KEYS

if TYPE_CHECKING:
    from detflow.experiments import Experiment

# What describes one result alone, not how it was made: its verdict and digest, and the
# digest of its params with its seeds, which differs wherever the seeds do. Never kept in the
# collected file (which is another result), nor a difference to report.
OWN_ATTRS = (*VERDICT_KEYS, "config_digest")

ABSENT = "(absent)"
# A value longer than this is cut in the summary's lines (collected.json has it whole).
SHOWN_CHARS = 48


def same_value(first: Any, second: Any) -> bool:
    """Are two attr values equal (arrays elementwise, NaN equal to NaN, as xarray's
    ``equivalent``)?"""
    first, second = np.asarray(first), np.asarray(second)
    if first.shape != second.shape:
        return False
    if first.dtype.kind in "fc" and second.dtype.kind in "fc":
        return bool(np.array_equal(first, second, equal_nan=True))
    return bool(np.array_equal(first, second))


def shared_attrs(experiments: Sequence[Experiment]) -> dict[str, Any]:
    """The attrs every experiment has with the same value: what the collected file can say of
    all its seeds. The others are ``attr_differences``, which collect reports instead; a
    result's own verdict and digest describe that result alone, so they are never kept."""
    differing = {key.split(".", 1)[0] for key in attr_differences(experiments)}
    first = experiments[0].attrs
    return {k: v for k, v in first.items() if k not in differing and k not in OWN_ATTRS}


def plain(value: Any) -> Any:
    """An attr value as JSON holds it (netCDF gives numpy scalars and arrays)."""
    return value.tolist() if isinstance(value, np.ndarray | np.generic) else value


def expanded(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """``attrs``, each JSON-object attr (a trial's ``environment``, ``code_files``) as one
    ``<attr>.<field>`` per field, so that a difference names the field, not a page of JSON;
    less the result's own verdict attrs.

    Examples
    --------
    >>> expanded({"environment": '{"cpus": "2", "env.X": "unset"}', "task": "t", "digest": "d"})
    {'environment.cpus': '2', 'environment.env.X': 'unset', 'task': 't'}
    """
    flat: dict[str, Any] = {}
    for key, value in attrs.items():
        if key in OWN_ATTRS:
            continue
        parsed = None
        if isinstance(value, str) and value.startswith("{"):
            with contextlib.suppress(ValueError):
                parsed = json.loads(value)
        if isinstance(parsed, dict):
            flat.update({f"{key}.{field}": item for field, item in parsed.items()})
        else:
            flat[key] = value
    return flat


def attr_differences(experiments: Sequence[Experiment]) -> dict[str, list[dict[str, Any]]]:
    """Each attr (provenance: CPU path, threads, versions, ...) whose value is not the same
    in every experiment: its values in order of first appearance, each with the experiments
    that have it (value ``None`` where they lack the attr). The collected file cannot carry
    these for all its seeds, so collect reports them instead.

    Examples
    --------
    >>> from types import SimpleNamespace as Made
    >>> e = [Made(name=n, attrs={"cpu": c}) for n, c in ("ab", "bA", "cb")]
    >>> attr_differences(e)["cpu"]
    [{'value': 'b', 'experiments': ['a', 'c']}, {'value': 'A', 'experiments': ['b']}]
    """
    attrs = [expanded(experiment.attrs) for experiment in experiments]
    differences = {}
    for key in sorted({key for found in attrs for key in found}):
        groups: list[tuple[bool, Any, list[str]]] = []  # (present, value, experiments)
        for experiment, found in zip(experiments, attrs, strict=True):
            present, value = key in found, found.get(key)
            for has, other, names in groups:
                if has == present and (not present or same_value(other, value)):
                    names.append(experiment.name)
                    break
            else:
                groups.append((present, value, [experiment.name]))
        if len(groups) > 1:
            differences[key] = [
                {"value": plain(value) if present else None, "experiments": names}
                for present, value, names in groups
            ]
    return differences


def shown(value: Any) -> str:
    text = ABSENT if value is None else str(value)
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 3] + "..."


def difference_lines(differences: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[str]:
    """One line per differing attr, e.g. ``cpu_capability AVX512 in e1 vs DEFAULT in e2``.

    Examples
    --------
    >>> difference_lines({"k": [{"value": 1, "experiments": ["a"]},
    ...                         {"value": None, "experiments": ["b", "c"]}]})
    ['k 1 in a vs (absent) in b, c']
    """
    return [
        f"{key} "
        + " vs ".join(f"{shown(g['value'])} in {', '.join(g['experiments'])}" for g in groups)
        for key, groups in differences.items()
    ]


# ---------------------------------------------------------------------------- code


def code_files(experiment: Experiment) -> dict[str, str] | None:
    """The trials' ``code_files`` (path -> sha256 of each file that ran), or None where the
    result does not record them (an older detflow made it)."""
    text = experiment.attrs.get("code_files")
    try:
        files = json.loads(text) if isinstance(text, str) else None
    except ValueError:
        return None
    return files if isinstance(files, dict) else None


def code_difference(first: Experiment, other: Experiment) -> str:
    """Which files two experiments' code differs in, e.g. ``code: tasks/util.py differs``.

    Examples
    --------
    >>> from types import SimpleNamespace as Made
    >>> a = Made(name="a", attrs={"code_files": '{"t.py": "1", "h.py": "2"}'})
    >>> b = Made(name="b", attrs={"code_files": '{"t.py": "3", "n.py": "4"}'})
    >>> code_difference(a, b)
    'code: h.py (only in a), n.py (only in b), t.py differ'
    """
    ours, theirs = code_files(first), code_files(other)
    if ours is None or theirs is None:
        return "code: code_digest differs"
    paths = sorted(
        path for path in ours.keys() | theirs.keys() if ours.get(path) != theirs.get(path)
    )
    if not paths:
        return "code: code_digest differs"
    named = [
        path
        if path in ours and path in theirs
        else f"{path} (only in {(first if path in ours else other).name})"
        for path in paths
    ]
    return f"code: {', '.join(named)} {'differs' if len(named) == 1 else 'differ'}"
