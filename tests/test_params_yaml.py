"""params.yaml is read as DVC reads it, and stays readable after `dvc exp run -S` rewrites it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from dvc.utils.hydra import apply_overrides
from dvc.utils.serialize import parse_yaml as dvc_parse_yaml

from detflow.params import load_params, parse_yaml

PROJECT_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"

MINIMAL = "pre_task: null\ntask: detflow.tasks.forward\n"


@pytest.mark.parametrize(
    ("text", "key", "expected"),
    [
        ("torch_seed: 010\ntrial_id: [a]\n", "torch_seed", 10),  # YAML 1.1 read octal 8
        ("torch_seed: 0\ntrial_id: [a, yes]\n", "trial_id", ["a", "yes"]),  # 1.1: True
        ("torch_seed: 0\ntrial_id: [a]\nlr: 1e-3\n", "lr", 0.001),  # 1.1: the string '1e-3'
        ("torch_seed: 0\ntrial_id: [a, off, no]\n", "trial_id", ["a", "off", "no"]),
    ],
)
def test_values_are_read_as_dvc_records_them(tmp_path, text, key, expected):
    assert dvc_parse_yaml(text, "params.yaml")[key] == expected  # DVC's own reading
    assert parse_yaml(text, "params.yaml")[key] == expected
    path = tmp_path / "params.yaml"
    path.write_text(text + MINIMAL)
    params = load_params(path)
    assert params.values[key] == expected
    if key == "torch_seed":
        assert params.torch_seeds == (10,)
    if key == "trial_id":
        assert params.trial_ids == tuple(expected)


# Each as `dvc exp run -S` takes them; the README's commands use all of these.
OVERRIDES = [
    ["torch_seed=1"],
    ["torch_seed=[0,1,2]"],
    ["torch_seed=0..4"],
    ["pre_task=null"],
    ["strict=true", "pre_task=null"],
    ["portable=true"],
    ["launcher={name: joblib, n_jobs: 2}"],
    ["task=detflow.tasks.train", "pre_task=detflow.seeding.seed_everything"],
    ["train.num_workers=2"],
    ["module.out_features=3"],
]


def changed_keys(before: list[str], after: list[str]) -> set[str]:
    """Top-level keys whose block (the key's line and its indented or '- ' lines) changed."""

    def blocks(lines: list[str]) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        key = None
        for line in lines:
            if line and not line.startswith(("#", " ", "-")):
                key = line.split(":")[0]
                found[key] = []
            if key is not None and not line.startswith("#"):
                found[key].append(line)
        return found

    old, new = blocks(before), blocks(after)
    return {key for key in old.keys() | new.keys() if old.get(key) != new.get(key)}


def comments_with_next_key(lines: list[str]) -> list[tuple[str, str]]:
    """Each comment line with the first key line after it."""
    pairs = []
    for position, line in enumerate(lines):
        if line.startswith("#"):
            following = next(
                (n for n in lines[position:] if n and not n.startswith(("#", " ", "-"))), ""
            )
            pairs.append((line, following.split(":")[0]))
    return pairs


@pytest.mark.parametrize("overrides", OVERRIDES, ids=lambda o: " ".join(o))
def test_exp_run_overrides_keep_the_layout(tmp_path, overrides):
    path = Path(shutil.copy(PROJECT_PARAMS, tmp_path / "params.yaml"))
    shipped = parse_yaml(path.read_text(), "params.yaml")
    missing = [o for o in overrides if o.split("=")[0].split(".")[0] not in shipped]
    if missing:
        pytest.skip(f"the shipped params.yaml has no key for {missing}")
    original = path.read_text().splitlines()
    apply_overrides(path, overrides)  # what `dvc exp run -S` does to params.yaml
    rewritten = path.read_text().splitlines()
    overridden = {override.split("=")[0].split(".")[0] for override in overrides}
    assert changed_keys(original, rewritten) == overridden
    # Every comment is still there, above the same key.
    assert comments_with_next_key(rewritten) == comments_with_next_key(original)
    # Only what a user set to null reads as empty; the shipped file has no null to lose.
    empties = {line.split(":")[0] for line in rewritten if line.endswith(":") and " " not in line}
    nested = {key for key in ("torch_seed", "trial_id", "launcher", "module", "data", "train")}
    assert empties - nested <= {key for key in overridden if f"{key}=null" in overrides}


def test_undoing_an_override_restores_the_file_byte_for_byte(tmp_path):
    path = Path(shutil.copy(PROJECT_PARAMS, tmp_path / "params.yaml"))
    original = path.read_bytes()
    values = parse_yaml(original.decode(), "params.yaml")
    apply_overrides(path, ["torch_seed=[5,6,7]", f"strict={str(not values['strict']).lower()}"])
    seeds = values["torch_seed"]
    undo = json.dumps(seeds).replace(" ", "") if isinstance(seeds, list) else seeds
    apply_overrides(path, [f"torch_seed={undo}", f"strict={str(values['strict']).lower()}"])
    assert path.read_bytes() == original
