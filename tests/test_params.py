from __future__ import annotations

import pytest

from detflow.cli import DetflowError
from detflow.params import TORCH_SEED_MAX, load_params, parse_params


def test_the_how_to_params_parse(project_params):
    params = parse_params(project_params)
    assert params.torch_seeds == (0, 1)
    assert params.trial_ids == ("a", "b", "c")
    assert params.pre_task == "detflow.seeding.seed_torch"
    assert params.task == "detflow.tasks.forward"


def test_scalar_seed_becomes_a_one_seed_tuple(project_params):
    project_params["torch_seed"] = 7
    assert parse_params(project_params).torch_seeds == (7,)


@pytest.mark.parametrize(
    ("value", "seeds"), [("0..49", tuple(range(50))), ("7..7", (7,)), (" 3..5 ", (3, 4, 5))]
)
def test_seed_range_includes_both_ends(project_params, value, seeds):
    project_params["torch_seed"] = value
    assert parse_params(project_params).torch_seeds == seeds


def test_int_trial_labels_become_strings(project_params):
    project_params["trial_id"] = [1, 2]
    assert parse_params(project_params).trial_ids == ("1", "2")


def test_null_pre_task_is_allowed(project_params):
    project_params["pre_task"] = None
    assert parse_params(project_params).pre_task is None


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("torch_seed", 1.5, "torch_seed 1.5 is not an int"),
        ("torch_seed", True, "torch_seed True is not an int"),
        ("torch_seed", [0, "x"], "torch_seed 'x' is not an int"),
        ("torch_seed", -1, "torch_seed -1 is out of range"),
        ("torch_seed", TORCH_SEED_MAX + 1, f"torch_seed {TORCH_SEED_MAX + 1} is out of range"),
        ("torch_seed", 2**64, "out of range"),
        ("torch_seed", [0, 1, 0], "torch_seed lists 0 more than once"),
        ("torch_seed", [], "torch_seed is an empty list"),
        ("torch_seed", "0", "torch_seed '0' is not a seed range: write first..last, e.g. 0..49"),
        ("torch_seed", "0-49", "torch_seed '0-49' is not a seed range"),
        ("torch_seed", "-2..5", "torch_seed '-2..5' is not a seed range"),
        ("torch_seed", "5..2", "torch_seed '5..2' is an empty range: write the smaller seed first"),
        (
            "torch_seed",
            f"0..{TORCH_SEED_MAX + 1}",
            f"torch_seed {TORCH_SEED_MAX + 1} is out of range",
        ),
        ("trial_id", [], "trial_id must be a non-empty list"),
        ("trial_id", "abc", "trial_id must be a non-empty list"),
        ("trial_id", ["a", "a"], "trial_id lists 'a' more than once"),
        ("trial_id", ["a/b"], "trial_id 'a/b' is not a valid label"),
        ("trial_id", [None], "trial_id None is not a valid label"),
        ("task", None, "task None is not a dotted import path"),
        ("task", "forward", "task 'forward' is not a dotted import path"),
        ("pre_task", 3, "pre_task 3 is not a dotted import path"),
        ("device", 0, "device 0 is not a device"),
        ("strict", 1, "strict 1 is not a boolean"),
    ],
)
def test_bad_values_name_the_key(project_params, key, value, message):
    project_params[key] = value
    with pytest.raises(DetflowError, match=message.replace("(", r"\(").replace("[", r"\[")):
        parse_params(project_params)


@pytest.mark.parametrize("key", ["torch_seed", "trial_id", "pre_task", "task"])
def test_missing_key_is_named(project_params, key):
    del project_params[key]
    with pytest.raises(DetflowError, match=f"has no '{key}' key"):
        parse_params(project_params)


def test_invalid_yaml_names_the_file_and_line(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("torch_seed: [0, 1\ntrial_id: [a]\n")
    with pytest.raises(DetflowError, match=r"params.yaml is not valid YAML at line \d"):
        load_params(path)


def test_non_mapping_params_are_refused(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(DetflowError, match="must be a mapping"):
        load_params(path)
