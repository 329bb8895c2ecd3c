"""Stage `environment`: the fingerprint of everything outside the code and params that shapes
the bits, written to data/environment.json, on which every trial stage depends.

DVC reruns a stage only when a dep changes, and it sees neither the CPU, nor
``ATEN_CPU_CAPABILITY``, nor the thread count, nor a new torch: after any of them changed,
`dvc repro` used to call the old numbers up to date. This stage runs on every `dvc repro`
(``always_changed``) and rewrites the file only with its fingerprint; when nothing changed the
file keeps its bytes and the trials stay cached, when anything did they rerun.

It never imports torch: a fingerprint costs milliseconds, and portable mode must pin torch's
CPU path before torch loads in the trial stage, which records the same fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from collections.abc import Iterable, Mapping, Sequence
from importlib import metadata
from pathlib import Path

from detflow.cli import DetflowError, run_main, stage_parser

DEFAULT_OUT = Path("data/environment.json")

# Variables that change which kernels run or how work is split, read by torch, MKL, oneDNN,
# OpenMP, cuBLAS or Python itself. A task's own variables join them through `env_vars`.
BIT_SHAPING_VARIABLES = (
    "ATEN_CPU_CAPABILITY",
    "MKL_CBWR",
    "MKL_ENABLE_INSTRUCTIONS",
    "MKL_DEBUG_CPU_TYPE",
    "MKL_NUM_THREADS",
    "OMP_NUM_THREADS",
    "DNNL_MAX_CPU_ISA",
    "ONEDNN_MAX_CPU_ISA",
    "CUBLAS_WORKSPACE_CONFIG",
    "CUDA_VISIBLE_DEVICES",
    "NVIDIA_TF32_OVERRIDE",
    "TORCH_ALLOW_TF32_CUBLAS_OVERRIDE",
    "PYTHONHASHSEED",
)

# The CPU features torch and MKL dispatch on (torch's AVX-512 path needs the first four).
CPU_FLAGS = (
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512dq",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "avx2",
    "fma",
    "avx_vnni",
    "f16c",
    "avx",
)

# Installed distributions named one by one, for a readable difference; every other installed
# distribution counts through `packages`, a digest of all their versions.
NAMED_PACKAGES = ("torch", "numpy")


def cpu_info() -> tuple[str, str]:
    """The CPU's model name and the dispatch-relevant flags it has, from /proc/cpuinfo."""
    from detflow.cpu import cpu_model

    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass  # not Linux: the model and the platform still tell machines apart
    return cpu_model(), " ".join(flag for flag in CPU_FLAGS if flag in flags) or "unknown"


def gpu_models() -> str:
    """NVIDIA GPU models and driver, from the driver's /proc files (no CUDA initialisation)."""
    root = Path("/proc/driver/nvidia")
    models = []
    for info in sorted((root / "gpus").glob("*/information")):
        for line in info.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("Model:"):
                models.append(line.split(":", 1)[1].strip())
    if not models:
        return "none"
    version = root / "version"
    driver = version.read_text(encoding="utf-8").splitlines()[0] if version.is_file() else ""
    return "; ".join(models) + (f" ({driver.strip()})" if driver else "")


def package_versions() -> tuple[dict[str, str], str]:
    """The named packages' versions, and a digest of every installed distribution's version."""
    versions: dict[str, str] = {}
    for dist in metadata.distributions():
        name = (dist.metadata["Name"] or "").lower().replace("_", "-")
        if name:
            versions.setdefault(name, dist.version)
    named = {f"{name}_version": versions.get(name, "absent") for name in NAMED_PACKAGES}
    listing = "\n".join(f"{name}=={versions[name]}" for name in sorted(versions))
    return named, f"sha256:{hashlib.sha256(listing.encode()).hexdigest()[:16]}"


def fingerprint(env_vars: Iterable[str] = ()) -> dict[str, str]:
    """What shapes the bits besides code and params, as strings: same machine, same settings
    and same libraries give the same fingerprint, and a change in any of them a different one.

    ``env_vars`` are the variables the task declares it reads (`env_vars` in params.yaml).
    """
    model, flags = cpu_info()
    named, packages = package_versions()
    variables = {
        f"env.{name}": os.environ.get(name, "unset")
        for name in sorted({*BIT_SHAPING_VARIABLES, *env_vars})
    }
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 0
    return {
        "cpu_model": model,
        "cpu_flags": flags,
        "cpus": str(cpus),
        "gpus": gpu_models(),
        "machine": platform.machine(),
        "python_version": platform.python_version(),
        **named,
        "packages": packages,
        **variables,
    }


# The first fingerprint this process took, per declared variable list: the environment it
# started in, before any pre-task (seed_everything sets CUBLAS_WORKSPACE_CONFIG) changed it.
FIRST_FINGERPRINTS: dict[tuple[str, ...], dict[str, str]] = {}


def process_fingerprint(env_vars: Iterable[str] = ()) -> dict[str, str]:
    """``fingerprint`` as this process first saw it, so that every trial a process runs (a
    launcher's jobs, a test's trials) records the same environment."""
    key = tuple(sorted(env_vars))
    if key not in FIRST_FINGERPRINTS:
        FIRST_FINGERPRINTS[key] = fingerprint(key)
    return dict(FIRST_FINGERPRINTS[key])


def differences(made: Mapping[str, str], here: Mapping[str, str]) -> list[str]:
    """``field made vs here`` for each field that differs (a field only one side has, too).

    Examples
    --------
    >>> differences({"cpus": "2", "env.OMP_NUM_THREADS": "unset"},
    ...             {"cpus": "2", "env.OMP_NUM_THREADS": "1"})
    ['env.OMP_NUM_THREADS unset vs 1']
    """
    keys = sorted(key for key in made.keys() | here.keys() if made.get(key) != here.get(key))
    return [f"{key} {made.get(key, 'absent')} vs {here.get(key, 'absent')}" for key in keys]


def declared_env_vars(values: Mapping[str, object]) -> tuple[str, ...]:
    """The `env_vars` param: names of environment variables the task may read."""
    declared = values.get("env_vars") or []
    if not isinstance(declared, list) or not all(
        isinstance(name, str) and name and "=" not in name for name in declared
    ):
        raise DetflowError(
            f"env_vars {declared!r} is not a list of environment variable names: "
            f"use e.g. env_vars: [MYSCALE]"
        )
    return tuple(declared)


def fingerprint_text(print_: Mapping[str, str]) -> str:
    return json.dumps(dict(print_), indent=2, sort_keys=True) + "\n"


def check_recorded(path: Path, here: Mapping[str, str]) -> None:
    """The trial stage's check that ``path`` (this stage's output, a dep of the trials) holds
    this process's fingerprint: otherwise dvc.lock would pair one environment's record with
    another environment's numbers (a trial run alone with `dvc repro -s` after a change)."""
    if not path.is_file():
        return  # a stage run by hand, outside the pipeline
    try:
        recorded = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        recorded = {}
    changed = differences(recorded, here)
    if changed:
        raise DetflowError(
            f"{path} describes another environment than this stage runs in "
            f"({'; '.join(changed[:3])}): run `dvc repro`, which rewrites it first"
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = stage_parser(__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="fingerprint file")
    args = parser.parse_args(argv)

    from detflow.artifact import write_text
    from detflow.params import load_params

    text = fingerprint_text(fingerprint(declared_env_vars(load_params(args.params).values)))
    # Same bytes, same file: DVC sees no change and the trials stay cached.
    if not args.out.is_file() or args.out.read_text(encoding="utf-8") != text:
        write_text(args.out, text)
    return 0


if __name__ == "__main__":
    run_main(main)
