"""Outputs are created as any new file would be: the user's umask decides their mode."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from detflow.artifact import write_text
from detflow.outputs import Output
from detflow.trial_file import trial_file


@pytest.fixture
def umask():
    previous = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(previous)


@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_outputs_honour_the_umask(tmp_path, umask, mask, mode):
    umask(mask)
    write_text(tmp_path / "metrics.json", "{}\n")
    with trial_file(tmp_path / "a.nc", "t", [0]) as writer:
        writer.add({"out": Output(np.float32(1.0), None)})
        writer.finish({})
    for name in ("metrics.json", "a.nc"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode
