"""What decides a CPU's bits, and portable mode: one CPU code path that every x86-64 CPU takes.

The same torch wheel and seed give other bits on another CPU, because torch picks its
vectorised kernels by CPU capability (AVX-512, AVX2, none) and MKL picks its own code path
and splits work over threads. Portable mode pins all three before torch is imported:

- ``ATEN_CPU_CAPABILITY=default``: torch's plain (non-vectorised) kernels;
- ``MKL_CBWR=COMPATIBLE``: MKL's conditional numerical reproducibility, most portable mode;
- one intra-op thread (``OMP_NUM_THREADS``, ``MKL_NUM_THREADS``, ``torch.set_num_threads``).

Measured with ``shared/cpu-bits``: an AMD EPYC (AVX-512, 2 threads) and two Intel Xeons
(AVX-512, 2 and 16 threads) gave the same bits under these settings for the how-to, a matmul,
a conv and 20 steps of MLP training, where their native bits differ.
"""

from __future__ import annotations

import os
import platform
import re
import sys

from detflow.cli import DetflowError

PORTABLE_ENV = {
    "ATEN_CPU_CAPABILITY": "default",
    "MKL_CBWR": "COMPATIBLE",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}
PORTABLE_THREADS = 1


def pin_portable_cpu_path() -> None:
    """Put this process on the portable CPU path; call it before anything imports torch.

    torch reads ``ATEN_CPU_CAPABILITY`` and MKL reads ``MKL_CBWR`` once, when loaded, so a
    process that has already imported torch with other settings cannot switch: that is an
    error rather than a result silently computed on the native path. Child processes (launcher
    jobs) inherit the environment.
    """
    if "torch" in sys.modules and not portable_env_in_force():
        raise DetflowError(
            "portable: true must take effect before torch is imported, and this process "
            "imported torch first: run the trial stage as `python -m detflow.trial` "
            "(as `dvc repro` does), or set portable: false"
        )
    os.environ.update(PORTABLE_ENV)
    import torch

    torch.set_num_threads(PORTABLE_THREADS)


def portable_env_in_force() -> bool:
    return all(os.environ.get(key) == value for key, value in PORTABLE_ENV.items())


def cpu_model() -> str:
    """The CPU's marketing name, e.g. 'AMD EPYC' or 'Intel(R) Xeon(R) Platinum 8480C'."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass  # not Linux: fall back to what the platform module knows
    return platform.processor() or platform.machine()


def torch_build_libraries(config: str) -> tuple[str, str]:
    """The BLAS and the oneDNN that torch was built with, from ``torch.__config__.show()``.

    Examples
    --------
    >>> torch_build_libraries(
    ...     "  - Intel(R) oneAPI Math Kernel Library Version 2024.2-Product Build 20240605 for x\\n"
    ...     "  - Intel(R) MKL-DNN v3.12.0 (Git Hash 80afa71)\\n"
    ...     "  - Build settings: BLAS_INFO=mkl, BUILD_TYPE=Release\\n")
    ('mkl 2024.2-Product Build 20240605', 'v3.12.0')
    """
    blas = re.search(r"BLAS_INFO=([^,\s]+)", config)
    mkl = re.search(r"Math Kernel Library Version (.+?) for ", config)
    onednn = re.search(r"MKL-DNN (v[0-9][^\s]*)", config)
    blas_name = blas.group(1) if blas else "none"
    if blas_name == "mkl" and mkl:
        blas_name = f"mkl {mkl.group(1)}"
    return blas_name, onednn.group(1) if onednn else "none"


def cpu_provenance() -> dict[str, str]:
    """What changes the bits on a CPU: capability, model, threads, libraries, settings."""
    import torch

    blas, onednn = torch_build_libraries(torch.__config__.show())
    return {
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_model": cpu_model(),
        "intra_op_threads": str(torch.get_num_threads()),
        "blas": blas,
        "onednn": onednn,
        # Not observable through torch, unlike the capability and the thread count that
        # ATEN_CPU_CAPABILITY and OMP_NUM_THREADS set.
        "mkl_cbwr": os.environ.get("MKL_CBWR", "unset"),
    }
