"""Pinpoint's processes: bounded by the machine, visible while they run, and a failure as one
line with its cause (an exit code, a signal, a full disk)."""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from detflow import pinpoint, pinpoint_runs
from detflow.cli import DetflowError
from detflow.pinpoint import pinpoint_seeds
from detflow.pinpoint_runs import SeedRuns, machine_slots
from pinpoint_fixtures import pinpoint_children

pytestmark = pinpoint_children

TESTS = Path(__file__).parent


# Failures ----------------------------------------------------------------------------------


def test_a_child_that_segfaults_is_named_with_its_signal(params_for):
    with pytest.raises(DetflowError) as caught:
        pinpoint_seeds(params_for(task="tasks_for_pinpoint.segfaults"), [0], latent=False)
    message = str(caught.value)
    assert re.match(
        r"pinpoint's traced run [12] of torch_seed 0 was killed by signal SIGSEGV", message
    )
    assert "\n" not in message


def test_a_child_that_exits_hard_is_named_with_its_code(params_for):
    with pytest.raises(DetflowError) as caught:
        pinpoint_seeds(params_for(task="tasks_for_pinpoint.exits_hard"), [0], latent=False)
    assert re.fullmatch(
        r"pinpoint's traced run [12] of torch_seed 0 exited with code 3, printing nothing "
        r"on stderr",
        str(caught.value),
    )


def test_a_full_disk_is_named(params_for, monkeypatch):
    """Run 1's trace goes to /dev/full, whose every write fails with ENOSPC."""
    if not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full")
    made = pinpoint_runs.trace_prefix

    def full_disk(folder, seed, number):
        prefix = made(folder, seed, number)
        if number == 1:
            os.symlink("/dev/full", f"{prefix}.ops")
        return prefix

    monkeypatch.setattr(pinpoint, "trace_prefix", full_disk)
    with pytest.raises(DetflowError) as caught:
        pinpoint_seeds(params_for(), [0], latent=False)
    assert re.fullmatch(
        r"pinpoint's traced run 1 of torch_seed 0 failed: the trace \S+seed0-run1\.ops could "
        r"not be written: no space left on the device of \S+ \(ENOSPC\): free space there, "
        r"or point TMPDIR at a disk with room",
        str(caught.value),
    ), str(caught.value)


# Bounded -----------------------------------------------------------------------------------


def test_slots_follow_cores_and_memory(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.setattr(pinpoint_runs, "available_memory", lambda: 64 << 30)
    assert machine_slots()[0] == 8  # the cores
    monkeypatch.setattr(pinpoint_runs, "available_memory", lambda: 3 * pinpoint_runs.CHILD_MEMORY)
    assert machine_slots()[0] == 3  # the memory
    monkeypatch.setattr(pinpoint_runs, "available_memory", lambda: 0)
    assert machine_slots() == (2, "8 cores, 0.0 GiB available")  # two, to compare at all


def test_more_runs_than_slots_run_a_few_at_a_time(params_for, monkeypatch):
    most = []
    start_more = SeedRuns.start_more

    def counted(self):
        start_more(self)
        most.append(len(self.running()))

    monkeypatch.setattr(SeedRuns, "start_more", counted)
    report = pinpoint_seeds(params_for(), [0], runs=4, latent=True, jobs=2)
    assert report.diverged is False and len(report.findings[0].ops) == 4
    assert max(most) == 2
    assert report.latent == {}  # the deterministic-mode run ran too, in its turn


def test_too_few_jobs_is_one_line(params_for):
    with pytest.raises(DetflowError, match=r"^jobs 1 is too few: give at least 2"):
        pinpoint_seeds(params_for(), [0], jobs=1)


# Visible -----------------------------------------------------------------------------------


def test_progress_comes_at_once_and_every_few_seconds(params_for):
    params_for(task="tasks_for_pinpoint.slow_ops")
    command = [sys.executable, "-m", "detflow.pinpoint", "--seed", "0", "--out", "p.json"]
    started = time.monotonic()
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    seen = [(time.monotonic() - started, line.strip()) for line in process.stderr]
    assert process.wait() == 0
    assert seen[0][0] < 2.0, seen  # the first line within 2 s, before any child is up
    assert seen[0][1].startswith("pinpoint: torch_seed 0: starting 2 traced runs")
    assert len(seen) >= 3
    gaps = [later - earlier for (earlier, _), (later, _) in itertools.pairwise(seen)]
    assert max(gaps) < pinpoint_runs.PROGRESS_SECONDS + 2.0, seen
    ops = [int(n) for _, line in seen[1:] for n in re.findall(r"run 1 of 2: (\d+) ops", line)]
    assert ops and max(ops) > 0, seen  # ops so far, as the runs go
