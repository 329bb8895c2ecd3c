"""The cross-machine check: a result against the one committed to git."""

from __future__ import annotations

import copy
import subprocess

from detflow.committed import compare, compare_with_head, config_digest
from detflow.params import parse_params

COMMITTED = {
    "config_digest": "sha256:c",
    "digest": "sha256:committed",
    "mean": {"out": 0.9027671},
    "seeds": {"0": {"max_abs_diff": 0.0, "out": 1.0383025}, "1": {"out": 0.76723164}},
    "provenance": {"cpu_capability": "AVX512", "cpu_model": "AMD EPYC", "platform": "x"},
}


def test_same_digest_is_reproduced():
    assert compare(COMMITTED, COMMITTED) == (
        "cross-machine: this machine reproduced the committed result bit for bit "
        "(digest sha256:committed)"
    )


def test_reproduced_on_another_cpu_still_names_what_differs():
    ours = copy.deepcopy(COMMITTED)
    ours["provenance"]["cpu_model"] = "Intel Xeon"
    line = compare(ours, COMMITTED)
    assert "reproduced the committed result bit for bit" in line
    assert "provenance differs in cpu_model Intel Xeon vs AMD EPYC" in line


def test_other_bits_name_the_cpu_fields_and_the_largest_difference():
    ours = copy.deepcopy(COMMITTED)
    ours["digest"] = "sha256:ours"
    ours["seeds"]["0"]["out"] = 1.0383024
    ours["seeds"]["1"]["out"] = 0.7672311
    ours["provenance"].update(cpu_capability="AVX2", platform="y")
    line = compare(ours, COMMITTED)
    assert line.startswith("cross-machine: this machine did NOT reproduce the committed result")
    assert "largest difference 5.4" in line and "(seeds.1.out: 0.7672311 vs 0.76723164)" in line
    # The field that changes CPU bits comes before the merely informative one.
    assert "this machine vs the commit: cpu_capability AVX2 vs AVX512; platform y vs x; " in line
    # And it leads to the op and the setting: pinpoint against the commit's reference trace,
    # or, without one, how to record it.
    assert line.endswith(
        "record a reference where the commit was made "
        "(python -m detflow.pinpoint --record) and commit pinpoint-reference/"
    )
    assert compare(ours, COMMITTED, reference=True).endswith(
        "to find the op and the setting: python -m detflow.pinpoint --against HEAD"
    )


def test_results_of_other_params_are_not_compared():
    ours = {**COMMITTED, "config_digest": "sha256:other", "digest": "sha256:ours"}
    assert "not compared: the committed result was made from other params" in compare(
        ours, COMMITTED
    )
    legacy = {key: value for key, value in COMMITTED.items() if key != "config_digest"}
    assert "records no config_digest" in compare(COMMITTED, legacy)


def test_config_digest_follows_the_numbers_not_how_they_ran(project_params):
    base = config_digest(parse_params(project_params))
    assert config_digest(parse_params({**project_params, "strict": True})) == base
    assert config_digest(parse_params({**project_params, "launcher": "joblib"})) == base
    assert config_digest(parse_params({**project_params, "torch_seed": "0..1"})) == base
    assert config_digest(parse_params({**project_params, "torch_seed": [1, 0]})) != base
    assert config_digest(parse_params({**project_params, "portable": True})) != base
    assert config_digest(parse_params({**project_params, "trial_id": ["a"]})) != base


def test_head_is_read_through_git(tmp_path):
    metrics = tmp_path / "metrics.json"
    assert "cross-machine: no committed " in compare_with_head(COMMITTED, metrics)
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    metrics.write_text('{"config_digest": "sha256:c", "digest": "sha256:committed"}')
    subprocess.run(["git", "add", "metrics.json"], cwd=tmp_path, check=True)
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "m"],
        cwd=tmp_path,
        check=True,
    )
    metrics.write_text("changed in the workspace; HEAD's copy is what counts")
    assert "reproduced the committed result" in compare_with_head(COMMITTED, metrics)
