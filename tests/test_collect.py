"""Merging experiments' results: seeds unioned, repeats compared bitwise, configs never mixed."""

from __future__ import annotations

import copy
import hashlib
import json

import numpy as np
import pytest
import xarray as xr

from detflow.artifact import read_dataset
from detflow.cli import DetflowError
from detflow.collect import check_same_layout, merge, seed_sources, verify
from detflow.experiments import Experiment, check_one_config, group_by_config, group_differences
from detflow.params import parse_params
from detflow.report import format_seeds

TRIALS = ["a", "b", "c"]


def value(seed: int) -> np.float32:
    return np.float32(seed) / np.float32(7)


def result(seeds: list[int], out_features: int = 1, tweak: dict | None = None) -> xr.Dataset:
    """A result as the aggregate writes it; ``tweak`` maps (seed, trial) -> added value."""
    out = np.zeros((len(seeds), len(TRIALS), out_features), dtype=np.float32)
    for i, seed in enumerate(seeds):
        out[i] = value(seed)
        for j, trial in enumerate(TRIALS):
            out[i, j] += np.float32((tweak or {}).get((seed, trial), 0.0))
    return xr.Dataset(
        {"out": (("torch_seed", "trial_id", "out_dim0"), out)},
        coords={
            "torch_seed": np.array(seeds, dtype=np.int64),
            "trial_id": np.array(TRIALS, dtype=str),
            "out_dim0": np.arange(out_features),
        },
        attrs={"task": "detflow.tasks.forward"},
    )


def experiment(name: str, project_params: dict, seeds: list[int], **changes) -> Experiment:
    values = copy.deepcopy(project_params)
    values["torch_seed"] = seeds
    tweak = changes.pop("tweak", None)
    for key, change in changes.items():
        values[key] = change
    out_features = values["module"]["out_features"]
    rev = hashlib.sha1(name.encode()).hexdigest()
    return Experiment(name, rev, parse_params(values), result(seeds, out_features, tweak))


def test_seeds_are_unioned_in_order_with_their_sources(project_params):
    first = experiment("first", project_params, [3, 0, 1])
    second = experiment("second", project_params, [1, 2])
    sources = seed_sources([first, second])
    assert list(sources) == [0, 1, 2, 3]
    merged = merge(sources)
    assert merged["out"].dims == ("torch_seed", "trial_id", "out_dim0")
    assert merged["torch_seed"].values.tolist() == [0, 1, 2, 3]
    for seed in range(4):
        assert (merged["out"].sel(torch_seed=seed).values == value(seed)).all()
    assert merged["experiments"].values.tolist() == ["first", "first,second", "second", "first"]
    assert merged["revs"].values[1] == f"{first.rev},{second.rev}"


def test_shared_seeds_that_agree_are_deterministic(project_params):
    verdict = verify(
        seed_sources(
            [
                experiment("machine1", project_params, [0, 1, 2]),
                experiment("machine2", project_params, [2, 3, 4]),
            ]
        )
    )
    assert verdict.deterministic
    assert verdict.torch_seeds == (0, 1, 2, 3, 4)
    assert verdict.max_abs_diff_by_seed[2] == 0.0


def test_a_shared_seed_that_disagrees_names_experiment_trial_and_difference(project_params):
    machine1 = experiment("machine1", project_params, [0, 1, 2])
    machine2 = experiment("machine2", project_params, [2, 3], tweak={(2, "b"): 0.5})
    verdict = verify(seed_sources([machine1, machine2]))
    assert not verdict.deterministic
    assert verdict.disagreeing_seeds == (2,)
    [found] = verdict.disagreements
    assert (found.torch_seed, found.variable, found.trial_id, found.index) == (
        2,
        "out",
        "machine2/b",
        (0,),
    )
    assert found.max_abs_diff == pytest.approx(0.5)
    assert verdict.max_abs_diff_by_seed[3] == 0.0


def test_trials_within_one_experiment_are_compared_too(project_params):
    verdict = verify(seed_sources([experiment("one", project_params, [5], tweak={(5, "c"): 1})]))
    assert [d.trial_id for d in verdict.disagreements] == ["one/c"]


def test_configs_that_differ_beyond_the_seeds_are_refused_by_name(project_params):
    base = experiment("base", project_params, [0])
    wider = experiment(
        "wider", project_params, [1], module={**project_params["module"], "out_features": 2}
    )
    with pytest.raises(
        DetflowError,
        match=r"experiments wider \(\w{7}\) and base \(\w{7}\) differ in module.out_features=2 "
        r"vs 1: collect experiments of one config \(name them\), or pass --group-by-config",
    ):
        check_one_config([base, wider])
    groups = group_by_config([base, wider])
    assert [[e.name for e in members] for members in groups.values()] == [["base"], ["wider"]]
    assert sorted(group_differences(groups).values()) == [
        "module.out_features=1",
        "module.out_features=2",
    ]


def test_seeds_launcher_and_strict_may_differ(project_params):
    experiments = [
        experiment("a", project_params, [0]),
        experiment("b", project_params, [1, 2], launcher="joblib", strict=True),
    ]
    check_one_config(experiments)  # no error: one config
    assert list(group_by_config(experiments).values()) == [experiments]
    merged = merge(seed_sources(experiments))
    assert merged["torch_seed"].values.tolist() == [0, 1, 2]
    assert merged["experiments"].values.tolist() == ["a", "b", "b"]


def test_results_of_different_layouts_are_refused(project_params):
    first = experiment("first", project_params, [0])
    other = experiment("other", project_params, [1])
    other = Experiment(other.name, other.rev, other.params, other.result.astype("float64"))
    with pytest.raises(DetflowError, match=r"of other \(\w{7}\) holds \{'out': \"float64"):
        check_same_layout([first, other])


@pytest.mark.parametrize(
    ("seeds", "text"),
    [([0], "0"), ([0, 1, 2, 3], "0..3"), ([5, 0, 1, 9, 7, 8], "0..1, 5, 7..9")],
)
def test_format_seeds_shows_runs(seeds, text):
    assert format_seeds(seeds) == text


@pytest.fixture
def collect_from(monkeypatch, tmp_path):
    """Run the collect command on given experiments, as if DVC had read them."""
    import detflow.collect

    def run(experiments: list[Experiment], *args: str) -> int:
        monkeypatch.chdir(tmp_path)
        monkeypatch.setattr(detflow.collect, "find_revs", lambda names: names)
        monkeypatch.setattr(detflow.collect, "read_experiments", lambda revs, path: experiments)
        return detflow.collect.main(list(args))

    return run


def test_collect_writes_result_and_report(project_params, collect_from, tmp_path, capsys):
    assert collect_from([experiment("m1", project_params, [0, 1])]) == 0
    collected = read_dataset(tmp_path / "data/collected.nc")
    assert collected["out"].shape == (2, 3, 1)
    report = json.loads((tmp_path / "data/collected.json").read_text())
    assert report["deterministic"] is True
    assert report["experiments"]["m1"]["torch_seed"] == [0, 1]
    assert "collected 1 experiment into data/collected.nc" in capsys.readouterr().out


def test_strict_fails_after_writing_the_evidence(project_params, collect_from, tmp_path, capsys):
    machines = [
        experiment("m1", project_params, [0, 1]),
        experiment("m2", project_params, [1], tweak={(1, "a"): 0.25}),
    ]
    with pytest.raises(DetflowError, match="strict: copies of a seed disagree"):
        collect_from(machines, "--strict")
    out = capsys.readouterr().out
    assert "NOT deterministic: copies disagree for torch_seed 1" in out
    assert "torch_seed 1: 'out' first differs in trial m2/a at index [0]" in out
    report = json.loads((tmp_path / "data/collected.json").read_text())
    assert report["disagreements"][0]["trial_id"] == "m2/a"
    assert collect_from(machines, "--no-strict") == 0


def test_outside_a_dvc_project_collect_says_where_to_run(tmp_path, monkeypatch):
    import detflow.collect

    monkeypatch.chdir(tmp_path)
    with pytest.raises(DetflowError, match="is not in a DVC project: run collect from the project"):
        detflow.collect.main([])


def test_collect_never_imports_what_experiments_name(project_params, collect_from, tmp_path):
    """Another experiment's params are data to collect: its task, pre-task and targets name
    modules that must never be imported or called here."""
    import sys

    hostile = {"task": "never_imported.run", "pre_task": "never_imported.seed"}
    experiments = [
        experiment(name, project_params, [seed], **hostile) for name, seed in (("m1", 0), ("m2", 1))
    ]
    for e in experiments:
        e.params.values["module"]["_target_"] = "never_imported.Model"
    assert collect_from(experiments) == 0
    assert "never_imported" not in sys.modules
    assert read_dataset(tmp_path / "data/collected.nc")["torch_seed"].values.tolist() == [0, 1]
