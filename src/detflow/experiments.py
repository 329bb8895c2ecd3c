"""Find a project's DVC experiments, read their params and results through DVC's public API
(``dvc.api``), and tell their configs apart. Nothing is checked out, and the workspace is left
as it was: each result is copied, in bounded memory, into a scratch folder that collect opens
lazily."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from detflow.artifact import disk_full, open_netcdf
from detflow.cli import DetflowError, one_line
from detflow.experiment_attrs import code_difference
from detflow.params import RUN_ONLY_PARAMS, Params, parse_params, parse_yaml

# Each read while copying a result out of DVC: the copy holds this much, not the file.
COPY_BYTES = 1 << 20


@dataclass(frozen=True)
class Experiment:
    """One experiment's (or git rev's) params and result, read without a checkout.

    The result stays on disk (``result``, a local netCDF file); only what grouping and
    planning need is held: its seeds, in file order, and its global attrs.
    """

    name: str
    rev: str
    params: Params
    result: Path
    seeds: tuple[int, ...]
    attrs: Mapping[str, Any]

    @property
    def label(self) -> str:
        return f"{self.name} ({self.rev[:7]})"


# Params that may differ between experiments that are merged: the seeds themselves, how
# they were run, and whether a disagreement fails the stage.
FREE_PARAMS = ("torch_seed", *RUN_ONLY_PARAMS)


def flatten(values: Any, prefix: str = "") -> dict[str, Any]:
    """Nested params as dotted keys, e.g. ``module.out_features``, the names users type."""
    if isinstance(values, Mapping) and values:
        flat: dict[str, Any] = {}
        for key, value in values.items():
            flat.update(flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix.rstrip("."): values}


def config_of(experiment: Experiment) -> dict[str, Any]:
    """What must be equal for two experiments' numbers to be comparable: the params, and the
    code that ran (the trials' ``code_digest``), never imported or called here."""
    values = experiment.params.values
    fixed = {key: value for key, value in values.items() if key not in FREE_PARAMS}
    return {**flatten(fixed), "code_digest": experiment.attrs.get("code_digest")}


def config_key(experiment: Experiment) -> str:
    """A short, stable name for a config: the start of its sha256."""
    text = json.dumps(config_of(experiment), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def group_by_config(experiments: Sequence[Experiment]) -> dict[str, list[Experiment]]:
    groups: dict[str, list[Experiment]] = {}
    for experiment in experiments:
        groups.setdefault(config_key(experiment), []).append(experiment)
    return groups


def group_differences(groups: Mapping[str, Sequence[Experiment]]) -> dict[str, str]:
    """For each config group, the values of the params that tell the groups apart."""
    configs = {key: config_of(members[0]) for key, members in groups.items()}
    names = sorted({name for config in configs.values() for name in config})

    def rendered(config: dict[str, Any], name: str) -> str:
        return json.dumps(config.get(name, "<unset>"), sort_keys=True, default=str)

    varying = [n for n in names if len({rendered(c, n) for c in configs.values()}) > 1]
    return {
        key: ", ".join(f"{name}={config.get(name)!r}" for name in varying) or "the only config"
        for key, config in configs.items()
    }


def check_one_config(experiments: Sequence[Experiment]) -> None:
    """Refuse to mix experiments whose configs differ in anything but the free params, or
    that ran different code (naming the files that differ)."""
    first = experiments[0]
    ours = config_of(first)
    for other in experiments[1:]:
        theirs = config_of(other)
        differing = sorted(
            key for key in ours.keys() | theirs.keys() if ours.get(key) != theirs.get(key)
        )
        if differing:
            params = [key for key in differing if key != "code_digest"]
            shown = [f"{key}={theirs.get(key)!r} vs {ours.get(key)!r}" for key in params[:3]]
            if "code_digest" in differing:
                shown.append(code_difference(first, other))
            raise DetflowError(
                f"experiments {other.label} and {first.label} differ in {', '.join(shown)}: "
                f"collect experiments of one config and code (name them), or pass "
                f"--group-by-config"
            )


def project_root() -> str:
    from dvc.exceptions import NotDvcRepoError
    from dvc.repo import Repo

    try:
        return Repo.find_root()
    except NotDvcRepoError:
        raise DetflowError(
            "this folder is not in a DVC project: run collect from the project's folder"
        ) from None


def full_rev(root: str, rev: str) -> str | None:
    """The commit ``rev`` (a sha, its prefix, a branch or a tag) names, or None."""
    shown = subprocess.run(
        ["git", "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"],
        cwd=root,
        capture_output=True,
        text=True,
        check=False,
    )
    return shown.stdout.strip() if shown.returncode == 0 else None


def head_experiments(root: str) -> dict[str, str]:
    """Name -> commit of every finished experiment of the current commit (`dvc exp show`),
    oldest first, so that the first experiment run is the reference for the others."""
    import dvc.api

    rows = [
        row
        for row in dvc.api.exp_show(repo=root)
        if row.get("Experiment") and row.get("rev") and row.get("State") in (None, "Success")
    ]
    rows.sort(key=lambda row: (str(row.get("Created") or ""), row["Experiment"]))
    return {row["Experiment"]: full_rev(root, row["rev"]) or row["rev"] for row in rows}


def named_experiments(root: str, name: str) -> list[str]:
    """The commits of every experiment called ``name``, of any commit (as `dvc exp list
    --all-commits` lists them)."""
    from dvc.repo import Repo

    with Repo(root) as repo:
        listed = repo.experiments.ls(all_commits=True)
    return sorted({sha for found in listed.values() for exp, sha in found if exp == name and sha})


def resolve(root: str, name: str, head: Mapping[str, str]) -> str:
    """The commit of ``name``: an experiment of the current commit, a git rev, or else an
    experiment of any other commit."""
    rev = head.get(name) or full_rev(root, name)
    if rev is not None:
        return rev
    found = named_experiments(root, name)
    if len(found) > 1:
        shas = ", ".join(sha[:7] for sha in found)
        raise DetflowError(
            f"'{name}' names experiments {shas} of different commits: pass the one to collect "
            f"by its rev instead (e.g. {found[0][:7]})"
        )
    if not found:
        raise DetflowError(
            f"'{name}' is neither an experiment of any commit nor a git rev: see "
            f"`dvc exp list --all-commits`, or `dvc exp pull <git remote> {name}` first"
        )
    return found[0]


def find_revs(names: Sequence[str]) -> list[tuple[str, str]]:
    """(name, commit) for each experiment name or git rev; all of HEAD's experiments if none."""
    root = project_root()
    experiments = head_experiments(root)
    if not names:
        if not experiments:
            raise DetflowError(
                "the current commit has no experiments: run `dvc exp run` or "
                "`dvc exp pull <git remote> <name>` first, or name the revs to collect"
            )
        return list(experiments.items())
    resolved: dict[str, str] = {}  # commit -> name: naming one commit twice reads it once
    for name in names:
        resolved.setdefault(resolve(root, name, experiments), name)
    return [(name, rev) for rev, name in resolved.items()]


def local_experiment(name: str, rev: str, params: Params, path: Path, source: str) -> Experiment:
    """The experiment whose result is the local netCDF file ``path`` (``source`` names it in
    errors): its seeds and attrs are read, its values left on disk."""
    try:
        nc = open_netcdf(path, "r")
    except Exception as error:  # netCDF4 raises OSError, ValueError, RuntimeError, ...
        raise DetflowError(f"{source} is not a readable netCDF file ({one_line(error)})") from error
    with nc:
        # A result without seeds is refused by name when it is collected (check_result).
        seeds = nc.variables["torch_seed"][:] if "torch_seed" in nc.variables else []
        attrs = dict(nc.__dict__)
    return Experiment(name, rev, params, path, tuple(int(s) for s in np.ravel(seeds)), attrs)


def read_experiment(root: str, name: str, rev: str, result_path: str, folder: Path) -> Experiment:
    """Read params.yaml at ``rev`` through DVC, and copy the result into ``folder``, fetching
    it from the DVC remote if needed."""
    from dvc.api import DVCFileSystem

    label = f"{name} ({rev[:7]})"
    fs = DVCFileSystem(url=root, rev=rev)
    copy = folder / f"{rev}.nc"
    try:
        params_values = parse_yaml(fs.read_text("params.yaml"), f"params.yaml of {label}")
        with fs.open(result_path, "rb") as source, copy.open("wb") as target:
            shutil.copyfileobj(source, target, COPY_BYTES)
    except FileNotFoundError:
        raise DetflowError(
            f"{label} has no {result_path}: run `dvc exp pull <git remote> {name}`, or leave it out"
        ) from None
    except DetflowError:
        raise
    except Exception as error:
        if disk_full(folder, error):
            raise DetflowError(
                f"no space left on the device that holds {folder} to copy {result_path} of "
                f"{label} into ({one_line(error)}): free some space, then rerun"
            ) from error
        raise DetflowError(
            f"cannot read {result_path} of {label} ({one_line(error)}): "
            f"`dvc exp pull <git remote> {name}` fetches it from the DVC remote"
        ) from error
    params = parse_params(params_values, source=f"params.yaml of {label}")
    return local_experiment(name, rev, params, copy, f"{result_path} of {label}")


def read_experiments(
    revs: Sequence[tuple[str, str]], result_path: str, folder: Path
) -> list[Experiment]:
    """Each (name, commit)'s experiment, its result copied into ``folder``, with a progress
    bar on stderr."""
    from tqdm import tqdm

    root = project_root()
    experiments = []
    with tqdm(revs, desc="reading experiments", unit="exp", file=sys.stderr) as progress:
        for name, rev in progress:
            experiments.append(read_experiment(root, name, rev, result_path, folder))
    return experiments
