"""CPU provenance, and portable mode: the same bits whatever CPU path the machine would take."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from detflow.artifact import read_dataset
from detflow.cli import DetflowError
from detflow.cpu import PORTABLE_ENV, cpu_provenance, pin_portable_cpu_path, torch_build_libraries
from detflow.params import parse_params
from detflow.trial import run_trial

HOW_TO = (
    "import sys, torch\n"
    "torch.manual_seed(int(sys.argv[1]))\n"
    "out = torch.nn.Linear(10, 1)(torch.arange(10.0)).detach().numpy()\n"
    "sys.stdout.write(out.tobytes().hex())\n"
)


def how_to_in_fresh_process(seed: int, env: dict[str, str]) -> bytes:
    """The how-to's numbers from a separate interpreter, with ``env`` set before torch loads."""
    done = subprocess.run(
        [sys.executable, "-c", HOW_TO, str(seed)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return bytes.fromhex(done.stdout)


def run_trial_stage(params_path, out, env: dict[str, str]) -> None:
    subprocess.run(
        [sys.executable, "-m", "detflow.trial", "--params", str(params_path), "--out", str(out)],
        env={**os.environ, **env},
        check=True,
        capture_output=True,
    )


def test_provenance_records_what_changes_cpu_bits(project_params):
    attrs = run_trial(parse_params(project_params)).attrs
    assert attrs["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert attrs["intra_op_threads"] == str(torch.get_num_threads())
    assert attrs["portable"] == "False"
    blas, onednn = torch_build_libraries(torch.__config__.show())
    assert (attrs["blas"], attrs["onednn"]) == (blas, onednn)
    assert attrs["cpu_model"] == cpu_provenance()["cpu_model"] != ""


def test_build_libraries_are_read_from_torch_config():
    config = (
        "  - Intel(R) oneAPI Math Kernel Library Version 2024.2-Product Build 20240605 for x\n"
        "  - Intel(R) MKL-DNN v3.12.0 (Git Hash 80afa71)\n"
        "  - Build settings: BLAS_INFO=mkl, BUILD_TYPE=Release\n"
    )
    assert torch_build_libraries(config) == ("mkl 2024.2-Product Build 20240605", "v3.12.0")
    assert torch_build_libraries("  - Build settings: BLAS_INFO=open, X=1\n") == ("open", "none")
    assert torch_build_libraries("") == ("none", "none")


@pytest.mark.skipif(
    all(os.environ.get(k) == v for k, v in PORTABLE_ENV.items()),
    reason="this process already runs on the portable path",
)
def test_portable_refuses_a_process_that_loaded_torch_first():
    with pytest.raises(DetflowError, match="portable: true must take effect before torch"):
        pin_portable_cpu_path()


@pytest.mark.parametrize("machine", ["default", "avx2", "native"])
def test_portable_trial_gives_the_portable_bits_on_any_cpu_path(
    project_params, write_params, tmp_path, machine
):
    """Whatever CPU path the stage's machine would take (``ATEN_CPU_CAPABILITY`` of the parent
    environment stands in for other CPUs), portable mode computes what an independent run on
    the portable settings computes."""
    project_params["portable"] = True
    out = tmp_path / "a.nc"
    parent_env = {} if machine == "native" else {"ATEN_CPU_CAPABILITY": machine}
    run_trial_stage(write_params(project_params), out, parent_env)
    trial = read_dataset(out)
    assert trial.attrs["portable"] == "True"
    assert trial.attrs["cpu_capability"] == "DEFAULT"
    assert trial.attrs["intra_op_threads"] == "1"
    assert trial.attrs["mkl_cbwr"] == "COMPATIBLE"
    for seed in (0, 1):
        expected = how_to_in_fresh_process(seed, PORTABLE_ENV)
        assert trial["out"].sel(torch_seed=seed).values.tobytes() == expected
