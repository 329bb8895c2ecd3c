"""Read params.yaml and check the keys every stage relies on, naming the key when one is wrong."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from detflow.cli import DetflowError

DEFAULT_PARAMS = Path("params.yaml")

# torch.manual_seed accepts up to 2**64 - 1, but the seed becomes an int64 netCDF coordinate.
TORCH_SEED_MAX = 2**63 - 1

# torch_seed: 0..49 is the seeds 0 to 49, both included.
SEED_RANGE = re.compile(r"(?P<first>[0-9]+)\.\.(?P<last>[0-9]+)")

# A trial label names a file (data/trials/<label>.nc, written through a longer temporary name)
# and a DVC stage (task@<label>).
TRIAL_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
TRIAL_LABEL_MAX = 100

# A sweep longer than this is refused before it starts (each seed is a task run, and the
# list lives in memory); `max_seeds` in params.yaml raises it.
DEFAULT_MAX_SEEDS = 1_000_000

DEVICE = re.compile(r"cpu|cuda(:[0-9]+)?")

# A config name in Hydra's hydra/launcher group, e.g. joblib or submitit_slurm.
LAUNCHER_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")

# `launcher: loop` (or null) runs the seeds one after another in the stage's own process. The
# shipped params.yaml says `loop` rather than null because `dvc exp run -S` rewrites every null
# in the file as an empty value.
IN_PROCESS_LAUNCHER = "loop"

REQUIRED_KEYS = ("torch_seed", "trial_id", "pre_task", "task")

# Params that say how seeds run and whether a disagreement fails the stage: they never change
# the numbers, so results that differ only in these are comparable.
RUN_ONLY_PARAMS = ("launcher", "strict", "pinpoint", "plot_variables")


@dataclass(frozen=True)
class Launcher:
    """A Hydra launcher plugin (e.g. ``joblib``) and its options (``hydra.launcher.<option>``)."""

    name: str
    options: Mapping[str, Any]


@dataclass(frozen=True)
class Params:
    """The validated contents of params.yaml.

    ``torch_seeds`` is always a tuple, even when params.yaml gives one int, so every
    result has a ``torch_seed`` dimension. ``values`` holds every key as written, for
    binding task arguments by name.
    """

    torch_seeds: tuple[int, ...]
    trial_ids: tuple[str, ...]
    pre_task: str | None
    task: str
    device: str
    strict: bool
    values: Mapping[str, Any] = field(repr=False)
    launcher: Launcher | None = None
    portable: bool = False
    pinpoint: bool = False


def load_params(path: Path = DEFAULT_PARAMS) -> Params:
    """Read and validate a params file.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "params.yaml"
    >>> _ = p.write_text("torch_seed: 3\\ntrial_id: [a, b]\\npre_task: null\\ntask: m.f\\n")
    >>> load_params(p).torch_seeds
    (3,)
    """
    return params_from_bytes(read_params_bytes(path), path)


def params_from_bytes(data: bytes, path: Path) -> Params:
    """Validate the params file ``path`` as already read, e.g. by a stage that checks later
    that the file still holds these bytes."""
    text = data.decode("utf-8", errors="replace")
    return parse_params(parse_yaml(text, str(path)), source=str(path))


def read_params_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise DetflowError(
            f"{path} not found: run from the project root, next to dvc.yaml"
        ) from None


def parse_yaml(text: str, source: str) -> Any:
    """Parse YAML as DVC does (ruamel.yaml, YAML 1.2), so the values detflow runs are the
    values `dvc.lock` and `dvc params diff` record: ``010`` is ten, ``yes`` is a string and
    ``1e-3`` is a number. PyYAML reads YAML 1.1, where all three mean something else.
    """
    from ruamel.yaml import YAML
    from ruamel.yaml.error import MarkedYAMLError, YAMLError

    try:
        # The same call as DVC's own reader (dvc.utils.serialize.parse_yaml).
        return YAML(typ="safe").load(text)
    except YAMLError as error:
        where = error.problem_mark if isinstance(error, MarkedYAMLError) else None
        line = f" at line {where.line + 1}" if where is not None else ""
        raise DetflowError(f"{source} is not valid YAML{line}: fix its syntax") from None


def parse_params(values: Any, source: str = "params.yaml") -> Params:
    """Validate an already-loaded params mapping (see ``load_params``)."""
    if not isinstance(values, dict):
        raise DetflowError(f"{source} must be a mapping of keys to values, not {values!r}")
    missing = [key for key in REQUIRED_KEYS if key not in values]
    if missing:
        raise DetflowError(f"{source} has no '{missing[0]}' key: add it (see README.md)")
    params = Params(
        torch_seeds=check_torch_seeds(values["torch_seed"], check_max_seeds(values)),
        trial_ids=check_trial_ids(values["trial_id"]),
        pre_task=check_dotted_path("pre_task", values["pre_task"], optional=True),
        task=check_dotted_path("task", values["task"], optional=False),
        device=check_device(values.get("device", "cpu")),
        strict=check_flag("strict", values.get("strict", False)),
        values=values,
        launcher=check_launcher(values.get("launcher")),
        portable=check_flag("portable", values.get("portable", False)),
        pinpoint=check_flag("pinpoint", values.get("pinpoint", False)),
    )
    # Hydra configs and a task's own options are checked where they are used, by the trial
    # stage (detflow.run): this schema knows no task.
    return params


def check_max_seeds(values: Mapping[str, Any]) -> int:
    limit = values.get("max_seeds", DEFAULT_MAX_SEEDS)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise DetflowError(f"max_seeds {limit!r} is not a positive int: e.g. {DEFAULT_MAX_SEEDS}")
    return limit


def check_count(value: Any, count: int, limit: int) -> None:
    if count > limit:
        raise DetflowError(
            f"torch_seed {value if isinstance(value, str) else '[...]'} is {count} seeds, over "
            f"the limit of {limit}: split the sweep into experiments (see README, Scaling out), "
            f"or raise max_seeds in params.yaml"
        )


def check_torch_seeds(value: Any, limit: int = DEFAULT_MAX_SEEDS) -> tuple[int, ...]:
    """An int, a list of distinct ints in [0, 2**63 - 1], or a range "0..49", as a tuple."""
    if isinstance(value, str):
        return check_seed_range(value, limit)
    seeds = value if isinstance(value, list) else [value]
    check_count(value, len(seeds), limit)
    if not seeds:
        raise DetflowError(
            "torch_seed is an empty list: give an int or a list of ints, e.g. [0, 1]"
        )
    for seed in seeds:
        # bool is an int subclass, but `torch_seed: true` is certainly a typo.
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise DetflowError(
                f"torch_seed {seed!r} is not an int: give an int or a list of ints, e.g. [0, 1]"
            )
        if not 0 <= seed <= TORCH_SEED_MAX:
            raise DetflowError(
                f"torch_seed {seed} is out of range: use ints from 0 to {TORCH_SEED_MAX} (2**63-1)"
            )
    duplicate = first_duplicate(seeds)
    if duplicate is not None:
        raise DetflowError(f"torch_seed lists {duplicate} more than once: make the seeds distinct")
    return tuple(seeds)


def first_duplicate(items: list) -> Any:
    """The first item that occurs twice, in one pass (a sweep may list many seeds)."""
    seen: set = set()
    for item in items:
        if item in seen:
            return item
        seen.add(item)
    return None


def check_seed_range(value: str, limit: int = DEFAULT_MAX_SEEDS) -> tuple[int, ...]:
    """``"0..49"``: every seed from the first to the last, both included.

    A big sweep written as a list costs a line per seed in params.yaml and in every stage
    of dvc.lock, which DVC re-parses after each stage; a range costs one. It is a string, so
    that `dvc exp run -S torch_seed=0..49` can replace a list (Hydra will not merge a
    mapping into a list).
    """
    match = SEED_RANGE.fullmatch(value.strip())
    if not match:
        raise DetflowError(
            f"torch_seed {value!r} is not a seed range: write first..last, e.g. 0..49, "
            f"or give an int or a list of ints"
        )
    first, last = int(match["first"]), int(match["last"])
    if first > last:
        raise DetflowError(f"torch_seed {value!r} is an empty range: write the smaller seed first")
    if last > TORCH_SEED_MAX:
        raise DetflowError(
            f"torch_seed {last} is out of range: use ints from 0 to {TORCH_SEED_MAX} (2**63-1)"
        )
    check_count(value, last - first + 1, limit)
    return tuple(range(first, last + 1))


def check_trial_ids(value: Any) -> tuple[str, ...]:
    """A non-empty list of distinct labels; ints are accepted and become strings."""
    if not isinstance(value, list) or not value:
        raise DetflowError(
            f"trial_id must be a non-empty list of labels, e.g. [a, b, c], not {value!r}"
        )
    labels = []
    for item in value:
        label = str(item) if isinstance(item, int) and not isinstance(item, bool) else item
        if not isinstance(label, str) or not TRIAL_LABEL.fullmatch(label):
            raise DetflowError(
                f"trial_id {item!r} is not a valid label: use letters, digits, '_', '.' or '-'"
            )
        if len(label) > TRIAL_LABEL_MAX:
            raise DetflowError(
                f"trial_id {label[:20]}... is {len(label)} characters long: use at most "
                f"{TRIAL_LABEL_MAX} (it names a file and a DVC stage)"
            )
        labels.append(label)
    duplicate = first_duplicate(labels)
    if duplicate is not None:
        raise DetflowError(f"trial_id lists {duplicate!r} more than once: make the labels distinct")
    return tuple(labels)


def check_dotted_path(key: str, value: Any, *, optional: bool) -> str | None:
    """A string such as ``package.module.function``; None is allowed where ``optional``."""
    if value is None and optional:
        return None
    if not isinstance(value, str) or "." not in value.strip("."):
        hint = " or null" if optional else ""
        raise DetflowError(
            f"{key} {value!r} is not a dotted import path: give e.g. 'detflow.tasks.forward'{hint}"
        )
    return value


def check_device(value: Any) -> str:
    """'cpu', 'cuda' or 'cuda:<n>'; whether it exists is checked where torch is loaded."""
    if not isinstance(value, str) or not DEVICE.fullmatch(value):
        raise DetflowError(f"device {value!r} is not a device: use cpu, cuda or cuda:<n>")
    return value


def check_flag(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise DetflowError(f"{key} {value!r} is not a boolean: use true or false")
    return value


def check_launcher(value: Any) -> Launcher | None:
    """``loop`` (or null), a launcher's name, or a mapping with ``name`` and that launcher's options.

    Whether the plugin is installed, and accepts the options, is checked when it is used.
    """
    if value is None or value == IN_PROCESS_LAUNCHER:
        return None
    if isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, dict):
        raise DetflowError(
            f"launcher {value!r} is not a launcher: use loop, a Hydra launcher's name "
            f"(e.g. joblib), or {{name: joblib, n_jobs: 2}}"
        )
    options = dict(value)
    name = options.pop("name", None)
    if not isinstance(name, str) or not LAUNCHER_NAME.fullmatch(name):
        raise DetflowError(
            f"launcher.name {name!r} is not a Hydra launcher's name: use e.g. joblib, "
            f"submitit_local or submitit_slurm"
        )
    return Launcher(name, options)


def config_digest(params: Params) -> str:
    """sha256 of every param that shapes the numbers, seeds expanded (``0..1`` is ``[0, 1]``).

    Stored in metrics.json, so that a result is compared only with one made from the same
    params, whatever params.yaml says by the time the comparison runs.
    """
    values = {key: value for key, value in params.values.items() if key not in RUN_ONLY_PARAMS}
    values["torch_seed"] = list(params.torch_seeds)
    values["trial_id"] = list(params.trial_ids)
    text = json.dumps(values, sort_keys=True, default=str)
    return f"sha256:{hashlib.sha256(text.encode()).hexdigest()}"
