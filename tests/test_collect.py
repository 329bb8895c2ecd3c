"""Merging experiments' results: seeds unioned, repeats compared bitwise, configs never mixed;
streamed, and equal to merging the results in memory with xarray."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import detflow.collect
import detflow.collect_merge
import detflow.slabs
from detflow.artifact import read_dataset, write_dataset
from detflow.cli import DetflowError
from detflow.collect_merge import collect_into, seed_sources
from detflow.determinism import Verdict, compare_trials, content_digest
from detflow.experiments import (
    Experiment,
    check_one_config,
    group_by_config,
    group_differences,
    local_experiment,
)
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


def stored(name: str, dataset: xr.Dataset, params: dict, folder: Path) -> Experiment:
    """An experiment whose result file holds ``dataset``, as collect finds it once copied."""
    path = folder / f"{name}.nc"
    write_dataset(dataset, path)
    rev = hashlib.sha1(name.encode()).hexdigest()
    return local_experiment(name, rev, parse_params(params), path, f"result of {name}")


@pytest.fixture
def experiment(tmp_path):
    """An experiment of ``project_params`` with ``seeds``, its result written under tmp_path."""
    folder = tmp_path / "results"
    folder.mkdir()

    def make(name: str, project_params: dict, seeds: list[int], **changes) -> Experiment:
        values = copy.deepcopy(project_params)
        values["torch_seed"] = seeds
        tweak = changes.pop("tweak", None)
        dtype = changes.pop("dtype", np.float32)
        for key, change in changes.items():
            values[key] = change
        out_features = values["module"]["out_features"]
        dataset = result(seeds, out_features, tweak).astype(dtype)
        return stored(name, dataset, values, folder)

    return make


@pytest.fixture
def collect(tmp_path):
    """Stream experiments into a file; returns the file as read back, and the verdict."""
    counter = iter(range(1000))

    def run(experiments: list[Experiment]) -> tuple[xr.Dataset, Verdict]:
        out = tmp_path / f"collected-{next(counter)}.nc"
        collected = collect_into(experiments, out)
        return read_dataset(out), collected.verdict

    return run


def test_seeds_are_unioned_in_order_with_their_sources(project_params, experiment, collect):
    first = experiment("first", project_params, [3, 0, 1])
    second = experiment("second", project_params, [1, 2])
    sources = seed_sources([first, second])
    assert list(sources) == [0, 1, 2, 3]
    merged, _ = collect([first, second])
    assert merged["out"].dims == ("torch_seed", "trial_id", "out_dim0")
    assert merged["torch_seed"].values.tolist() == [0, 1, 2, 3]
    for seed in range(4):
        assert (merged["out"].sel(torch_seed=seed).values == value(seed)).all()
    assert merged["experiments"].values.tolist() == ["first", "first,second", "second", "first"]
    assert merged["revs"].values[1] == f"{first.rev},{second.rev}"


def test_shared_seeds_that_agree_are_deterministic(project_params, experiment, collect):
    _, verdict = collect(
        [
            experiment("machine1", project_params, [0, 1, 2]),
            experiment("machine2", project_params, [2, 3, 4]),
        ]
    )
    assert verdict.deterministic
    assert verdict.torch_seeds == (0, 1, 2, 3, 4)
    assert verdict.max_abs_diff_by_seed[2] == 0.0


def test_a_shared_seed_that_disagrees_names_experiment_trial_and_difference(
    project_params, experiment, collect
):
    machine1 = experiment("machine1", project_params, [0, 1, 2])
    machine2 = experiment("machine2", project_params, [2, 3], tweak={(2, "b"): 0.5})
    _, verdict = collect([machine1, machine2])
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


def test_trials_within_one_experiment_are_compared_too(project_params, experiment, collect):
    _, verdict = collect([experiment("one", project_params, [5], tweak={(5, "c"): 1})])
    assert [d.trial_id for d in verdict.disagreements] == ["one/c"]


def test_configs_that_differ_beyond_the_seeds_are_refused_by_name(project_params, experiment):
    base = experiment("base", project_params, [0])
    wider = experiment(
        "wider", project_params, [1], module={**project_params["module"], "out_features": 2}
    )
    with pytest.raises(
        DetflowError,
        match=r"experiments wider \(\w{7}\) and base \(\w{7}\) differ in module.out_features=2 "
        r"vs 1: collect experiments of one config and code \(name them\), or pass --group-by-config",
    ):
        check_one_config([base, wider])
    groups = group_by_config([base, wider])
    assert [[e.name for e in members] for members in groups.values()] == [["base"], ["wider"]]
    assert sorted(group_differences(groups).values()) == [
        "module.out_features=1",
        "module.out_features=2",
    ]


def test_seeds_launcher_and_strict_may_differ(project_params, experiment, collect):
    experiments = [
        experiment("a", project_params, [0]),
        experiment("b", project_params, [1, 2], launcher="joblib", strict=True),
    ]
    check_one_config(experiments)  # no error: one config
    assert list(group_by_config(experiments).values()) == [experiments]
    merged, _ = collect(experiments)
    assert merged["torch_seed"].values.tolist() == [0, 1, 2]
    assert merged["experiments"].values.tolist() == ["a", "b", "b"]


def test_results_of_different_layouts_are_refused(project_params, experiment, collect):
    first = experiment("first", project_params, [0])
    other = experiment("other", project_params, [1], dtype="float64")
    with pytest.raises(DetflowError, match=r"of other \(\w{7}\) holds \{'out': \"float64"):
        collect([first, other])


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
        monkeypatch.setattr(
            detflow.collect, "read_experiments", lambda revs, path, folder: experiments
        )
        return detflow.collect.main(list(args))

    return run


def test_collect_writes_result_and_report(
    project_params, experiment, collect_from, tmp_path, capsys
):
    assert collect_from([experiment("m1", project_params, [0, 1])]) == 0
    collected = read_dataset(tmp_path / "data/collected.nc")
    assert collected["out"].shape == (2, 3, 1)
    report = json.loads((tmp_path / "data/collected.json").read_text())
    assert report["deterministic"] is True
    assert report["experiments"]["m1"]["torch_seed"] == [0, 1]
    assert report["digest"] == content_digest(collected.drop_vars(["experiments", "revs"]))
    out = capsys.readouterr().out
    assert "collected 1 experiment into data/collected.nc (torch_seed: 2, trial_id: 3, " in out
    # The scratch folder of the results' copies is gone; only the outputs remain.
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [
        "collected.json",
        "collected.nc",
    ]


def test_strict_fails_after_writing_the_evidence(
    project_params, experiment, collect_from, tmp_path, capsys
):
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


def test_collect_never_imports_what_experiments_name(
    project_params, experiment, collect_from, tmp_path
):
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


# ---------------------------------------------------------------------------- streaming


def merged_in_memory(results: dict[str, xr.Dataset]) -> tuple[xr.Dataset, Verdict]:
    """What collect must write and find, computed with xarray alone: each seed taken from the
    first result that holds it; every copy of it (each trial of each result, labelled
    ``<experiment>/<trial_id>``) compared with its first copy."""
    sources: dict[int, list[str]] = {}
    for name, dataset in results.items():
        for seed in dataset["torch_seed"].values.tolist():
            sources.setdefault(seed, []).append(name)
    sources = dict(sorted(sources.items()))
    merged = xr.concat(
        [results[names[0]].sel(torch_seed=[seed]) for seed, names in sources.items()],
        dim="torch_seed",
        data_vars="all",
        coords="different",
        compat="identical",
        join="exact",
        combine_attrs="drop_conflicts",
    )
    revs = {name: hashlib.sha1(name.encode()).hexdigest() for name in results}
    merged = merged.assign_coords(
        experiments=("torch_seed", np.array([",".join(n) for n in sources.values()])),
        revs=("torch_seed", np.array([",".join(revs[n] for n in ns) for ns in sources.values()])),
    )
    max_abs, disagreements = {}, []
    for seed, names in sources.items():
        copies = []
        for name in names:
            part = results[name].sel(torch_seed=[seed])
            labels = [f"{name}/{trial}" for trial in part["trial_id"].values]
            copies.append(part.assign_coords(trial_id=np.array(labels)))
        verdict = compare_trials(
            xr.concat(copies, dim="trial_id", join="exact", combine_attrs="drop")
        )
        max_abs.update(verdict.max_abs_diff_by_seed)
        disagreements.extend(verdict.disagreements)
    return merged, Verdict(tuple(sources), max_abs, tuple(disagreements))


def flip(values: np.ndarray, seed_row: int, trial: int, index: tuple, bit: int = 0) -> None:
    """Flip one bit of one value in place: the smallest change any dtype can show."""
    as_uint = values.view(f"u{values.dtype.itemsize}")
    as_uint[(seed_row, trial, *index)] ^= as_uint.dtype.type(1 << bit)


def random_result(dtype, seeds: list[int], trials: list[str]) -> xr.Dataset:
    """Two variables of ``dtype`` (one value, and a (2, 3) array per copy), every trial
    equal; floats with NaN, -0.0 and 0.0, integers with their extremes."""
    shape = (len(seeds), len(trials))
    per_seed = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        if np.dtype(dtype) == np.bool_:
            values = rng.random(7) > 0.5
        elif np.dtype(dtype).kind in "iu":
            info = np.iinfo(dtype)
            values = rng.integers(info.min, info.max, 7, dtype=dtype, endpoint=True)
            values[:2] = info.min, info.max
        else:
            values = rng.standard_normal(7).astype(dtype)
            values[:3] = np.nan, -0.0, 0.0
        per_seed.append(values)
    values = np.broadcast_to(np.stack(per_seed)[:, np.newaxis], (*shape, 7)).copy()
    return xr.Dataset(
        {
            "out": (
                ("torch_seed", "trial_id", "out_dim0", "out_dim1"),
                values[..., :6].reshape(*shape, 2, 3),
            ),
            "loss": (("torch_seed", "trial_id"), values[..., 6]),
        },
        coords={
            "torch_seed": np.array(seeds, dtype=np.int64),
            "trial_id": np.array(trials),
            "out_dim0": np.arange(2),
            "out_dim1": np.arange(3),
        },
        attrs={"task": "m.f", "code_digest": "sha256:0"},
    )


@pytest.mark.parametrize("slab_bytes", [None, 8], ids=["whole-seeds", "rows-of-a-seed"])
@pytest.mark.parametrize("dtype", ["bool", "int8", "uint64", "float16", "float32", "float64"])
def test_the_streamed_file_is_the_in_memory_merge(
    dtype, slab_bytes, project_params, tmp_path, monkeypatch
):
    if slab_bytes:  # every seed then streams copy by copy, a row or so at a time
        monkeypatch.setattr(detflow.slabs, "SLAB_BYTES", slab_bytes)
    trials = ["a", "b"]
    results = {
        "x": random_result(dtype, [2, 0, 1], trials),
        "y": random_result(dtype, [1, 3], trials),
        "z": random_result(dtype, [4, 3, 1], trials),
    }
    # Seed 1: y/a differs at a later index than y/b, but y/a is the earlier copy.
    flip(results["y"]["out"].values, 0, 0, (1, 2))
    flip(results["y"]["out"].values, 0, 1, (0, 0))
    flip(results["z"]["loss"].values, 2, 0, ())
    # Seed 3: z's copy has -0.0 where y's has 0.0 (floats), or one bit more (others).
    bit = 8 * np.dtype(dtype).itemsize - 1 if np.dtype(dtype).kind == "f" else 0
    flip(results["z"]["out"].values, 1, 1, (0, 2), bit)
    # Seed 4 (z alone): its trials disagree in both variables.
    flip(results["z"]["loss"].values, 0, 1, ())
    flip(results["z"]["out"].values, 0, 1, (1, 1))
    params = {**project_params, "trial_id": trials}
    experiments = [stored(name, data, params, tmp_path) for name, data in results.items()]

    collected = collect_into(experiments, tmp_path / "collected.nc")

    expected, verdict = merged_in_memory(results)
    assert collected.verdict == verdict
    assert [(d.torch_seed, d.variable, d.trial_id) for d in verdict.disagreements] == [
        (1, "out", "y/a"),
        (1, "loss", "z/a"),
        (3, "out", "z/b"),
        (4, "out", "z/b"),
        (4, "loss", "z/b"),
    ]
    assert verdict.disagreements[0].index == (1, 2)
    assert collected.digest == content_digest(expected.drop_vars(["experiments", "revs"]))
    xr.testing.assert_identical(read_dataset(tmp_path / "collected.nc"), expected)
    # As xarray reads the file itself: the same as the in-memory merge written by xarray.
    write_dataset(expected, tmp_path / "by-xarray.nc")
    ours = xr.load_dataset(tmp_path / "collected.nc")
    theirs = xr.load_dataset(tmp_path / "by-xarray.nc")
    xr.testing.assert_identical(ours, theirs)
    assert {k: v.dtype for k, v in ours.variables.items()} == {
        k: v.dtype for k, v in theirs.variables.items()
    }
    assert ours["out"].values.tobytes() == theirs["out"].values.tobytes()
    assert dict(ours.sizes) == collected.sizes


def test_no_read_holds_more_than_a_slab(project_params, tmp_path, monkeypatch):
    """Memory scales with a slab of one seed of one variable, never with the results."""
    monkeypatch.setattr(detflow.slabs, "SLAB_BYTES", 4096)
    reads: list[int] = []
    read_slab = detflow.slabs.read_slab

    def counted(variable, slab):
        values = read_slab(variable, slab)
        reads.append(values.nbytes)
        return values

    # Every read: the kernel's (whole seeds) and collect's own (parts of a large seed).
    monkeypatch.setattr(detflow.slabs, "read_slab", counted)
    monkeypatch.setattr(detflow.collect_merge, "read_slab", counted)
    trials = ["a", "b", "c"]

    def big(seeds: list[int]) -> xr.Dataset:
        out = np.arange(len(seeds) * 3000, dtype=np.float32).reshape(len(seeds), 1, 3000)
        return xr.Dataset(
            {
                "out": (("torch_seed", "trial_id", "out_dim0"), np.repeat(out, 3, axis=1)),
                "loss": (("torch_seed", "trial_id"), np.ones((len(seeds), 3))),
            },
            coords={"torch_seed": seeds, "trial_id": trials, "out_dim0": np.arange(3000)},
        )

    params = {**project_params, "trial_id": trials}
    experiments = [
        stored("first", big(list(range(20))), params, tmp_path),
        stored("second", big(list(range(10, 30))), params, tmp_path),
    ]
    collected = collect_into(experiments, tmp_path / "collected.nc")
    assert not collected.verdict.deterministic  # seeds 10..19 hold other values in "second"
    assert max(reads) <= 4096
    assert sum(reads) >= 40 * 3 * 3000 * 4


def test_provenance_that_differs_between_experiments_is_dropped(project_params, tmp_path, collect):
    """The collected file keeps only what holds for all its seeds: an attr that differs, or
    that one experiment lacks, is left out (and reported, see below)."""
    first = result([0, 1]).assign_attrs(platform="linux-a", code_digest="c", only_first=1)
    second = result([2]).assign_attrs(platform="linux-b", code_digest="c", only_second="s")
    experiments = [
        stored("first", first, project_params, tmp_path),
        stored("second", second, project_params, tmp_path),
    ]
    collected, _ = collect(experiments)
    assert collected.attrs == {"task": "detflow.tasks.forward", "code_digest": "c"}


def test_experiments_that_give_seeds_must_share_their_trial_labels(
    project_params, tmp_path, collect
):
    other = result([1]).assign_coords(trial_id=np.array(["x", "y", "z"]))
    experiments = [
        stored("first", result([0]), project_params, tmp_path),
        stored("other", other, project_params, tmp_path),
    ]
    with pytest.raises(
        DetflowError,
        match=r"other \(\w{7}\) has trial_id \['x', 'y', 'z'\] but that of first \(\w{7}\) "
        r"has \['a', 'b', 'c'\]",
    ):
        collect(experiments)


def test_a_result_without_the_aggregates_layout_is_refused(project_params, tmp_path, collect):
    unlabelled = result([0]).drop_vars("trial_id")
    with pytest.raises(DetflowError, match=r"has no trial_id coordinate: it was not made by"):
        collect([stored("plain", unlabelled, project_params, tmp_path)])


def test_empty_arrays_are_collected(project_params, tmp_path):
    """A task that returns ``torch.zeros(0)``: its empty variable merges like any other."""

    def with_empty(seeds: list[int]) -> xr.Dataset:
        empty = np.zeros((len(seeds), len(TRIALS), 0), dtype=np.float32)
        return (
            result(seeds)
            .assign(empty=(("torch_seed", "trial_id", "empty_dim0"), empty))
            .assign_coords(empty_dim0=np.arange(0))
        )

    results = {"first": with_empty([0, 1]), "second": with_empty([1, 2])}
    experiments = [stored(name, data, project_params, tmp_path) for name, data in results.items()]
    collected = collect_into(experiments, tmp_path / "collected.nc")
    expected, verdict = merged_in_memory(results)
    assert collected.verdict == verdict and verdict.deterministic
    assert collected.digest == content_digest(expected.drop_vars(["experiments", "revs"]))
    xr.testing.assert_identical(read_dataset(tmp_path / "collected.nc"), expected)
    assert collected.sizes["empty_dim0"] == 0


def test_collect_says_what_differed_among_what_it_merged(
    project_params, tmp_path, collect_from, capsys
):
    """An AVX512 experiment and an ATEN_CPU_CAPABILITY=default one: the merged file drops
    cpu_capability, so the summary and the report name it, per experiment."""
    made = {
        "e1": {"cpu_capability": "AVX512", "intra_op_threads": 2},
        "e2": {"cpu_capability": "DEFAULT", "intra_op_threads": 2},
        "e3": {"cpu_capability": "AVX512"},
    }
    experiments = [
        stored(name, result([seed]).assign_attrs(attrs), project_params, tmp_path)
        for seed, (name, attrs) in enumerate(made.items())
    ]
    assert collect_from(experiments) == 0
    out = capsys.readouterr().out
    assert "experiments differ in (so left out of the collected file's attrs):" in out
    assert "  cpu_capability AVX512 in e1, e3 vs DEFAULT in e2\n" in out
    assert "  intra_op_threads 2 in e1, e2 vs (absent) in e3\n" in out
    report = json.loads((tmp_path / "data/collected.json").read_text())
    assert report["differences"] == {
        "cpu_capability": [
            {"value": "AVX512", "experiments": ["e1", "e3"]},
            {"value": "DEFAULT", "experiments": ["e2"]},
        ],
        "intra_op_threads": [
            {"value": 2, "experiments": ["e1", "e2"]},
            {"value": None, "experiments": ["e3"]},
        ],
    }
    attrs = read_dataset(tmp_path / "data/collected.nc").attrs
    assert attrs == {"task": "detflow.tasks.forward"}


def test_experiments_made_alike_report_no_differences(
    project_params, experiment, collect_from, tmp_path, capsys
):
    """A result's own digest, and the digest of its params with its seeds, are not how it
    was made: never a difference, never merged (the collected file is another result)."""
    own = {"digest": "sha256:{}", "config_digest": "sha256:{}", "deterministic": "true"}
    experiments = [
        stored(
            name,
            result([seed]).assign_attrs({k: v.format(seed) for k, v in own.items()}),
            project_params,
            tmp_path,
        )
        for seed, name in enumerate(["m1", "m2"])
    ]
    assert collect_from(experiments) == 0
    assert "differ in" not in capsys.readouterr().out
    assert json.loads((tmp_path / "data/collected.json").read_text())["differences"] == {}
    assert read_dataset(tmp_path / "data/collected.nc").attrs == {"task": "detflow.tasks.forward"}
