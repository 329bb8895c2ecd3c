"""Outputs are created as any new file would be: the user's umask decides their mode."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from detflow.artifact import write_arrays, write_text


@pytest.fixture
def umask():
    previous = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(previous)


@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_outputs_honour_the_umask(tmp_path, umask, mask, mode):
    umask(mask)
    write_text(tmp_path / "metrics.json", "{}\n")
    seeds = np.array([0], dtype=np.int64)
    write_arrays(tmp_path / "a.nc", {"out": (("torch_seed",), seeds)}, {"torch_seed": seeds}, {})
    for name in ("metrics.json", "a.nc"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode
