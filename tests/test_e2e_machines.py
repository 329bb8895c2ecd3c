"""Other CPUs, stood in for by torch's other CPU code paths: the cross-machine check and
portable mode, through `dvc` in a committed copy of the project."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dvc_project import metrics
from project_copy import environment

pytestmark = pytest.mark.e2e

NATIVE = torch.backends.cpu.get_cpu_capability()


def dvc_on(repo: Path, capability: str | None, *args: str) -> str:
    """`dvc ...` as on a CPU whose best path is ``capability`` (None: this CPU's own)."""
    env = environment()
    env.pop("ATEN_CPU_CAPABILITY", None)
    if capability:
        env["ATEN_CPU_CAPABILITY"] = capability
    done = subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=repo, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, f"dvc {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


def head_metrics(repo: Path) -> dict:
    shown = subprocess.run(
        ["git", "show", "HEAD:metrics.json"], cwd=repo, capture_output=True, text=True, check=True
    )
    return json.loads(shown.stdout)


@pytest.mark.skipif(NATIVE == "DEFAULT", reason="this CPU already runs torch's default path")
def test_another_cpu_is_told_whether_it_reproduced_the_commit(repo):
    committed = head_metrics(repo)  # made on this CPU's own path by the baseline fixture
    log = dvc_on(repo, "default", "repro", "-f")
    ours = metrics(repo)
    assert ours["provenance"]["cpu_capability"] == "DEFAULT"
    assert ours["config_digest"] == committed["config_digest"]
    if ours["digest"] == committed["digest"]:
        assert "cross-machine: this machine reproduced the committed result bit for bit" in log
    else:
        assert "cross-machine: this machine did NOT reproduce the committed result" in log
        assert "largest difference" in log
    assert f"this machine vs the commit: cpu_capability DEFAULT vs {NATIVE}" in log or (
        f"provenance differs in cpu_capability DEFAULT vs {NATIVE}" in log
    )
    # DVC's own view of the same comparison, against the commit, with no DVC remote.
    diff = dvc_on(repo, None, "metrics", "diff")
    assert "digest" in diff or ours["digest"] == committed["digest"]
    # And git's, of the fingerprint that made the difference.
    changed = subprocess.run(
        ["git", "diff", "--", "data/environment.json"], cwd=repo, capture_output=True, text=True
    ).stdout
    assert '+  "env.ATEN_CPU_CAPABILITY": "default"' in changed


def test_portable_mode_gives_one_digest_on_every_cpu_path(repo):
    digests = {}
    for capability in (None, "avx2", "default"):
        log = dvc_on(repo, capability, "exp", "run", "-f", "-S", "portable=true")
        assert "Running stage 'task@a'" in log  # computed anew, not restored from a cache
        found = metrics(repo)
        assert found["provenance"]["cpu_capability"] == "DEFAULT"
        digests[capability or NATIVE] = found["digest"]
        subprocess.run(["git", "checkout", "--", "params.yaml"], cwd=repo, check=True)
    assert len(set(digests.values())) == 1, digests
