"""Which bit-shaping setting differs between a commit's reference run and a run here, and
which of them this machine can set to the commit's value (an environment variable read before
torch loads), or, where none can, what would make the two agree. No torch."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

# torch's CPU capability -> the CPU features its kernels need (trace_* records cpu_flags).
CAPABILITY_FLAGS = {
    "AVX512": ("avx512f", "avx512bw", "avx512vl", "avx512dq"),
    "AVX2": ("avx2", "fma"),
    "DEFAULT": (),
}
# Variables that select a kernel or a code path, tried as the commit had them (None: unset).
# The capability, MKL_CBWR and the thread count are tried through their own fields first.
KERNEL_VARIABLES = (
    "DNNL_MAX_CPU_ISA",
    "ONEDNN_MAX_CPU_ISA",
    "MKL_ENABLE_INSTRUCTIONS",
    "MKL_DEBUG_CPU_TYPE",
    "NVIDIA_TF32_OVERRIDE",
    "TORCH_ALLOW_TF32_CUBLAS_OVERRIDE",
)
PORTABLE_FIX = "`portable: true` on both machines (dvc exp run -S portable=true)"


@dataclass(frozen=True)
class Setting:
    """A setting that differs: ``env`` is what to set here to try the commit's value (a None
    value unsets a variable), or None where this machine cannot (``fix`` says what would)."""

    field: str
    here: str
    commit: str
    env: dict[str, str | None] | None = None
    fix: str = ""

    def words(self) -> str:
        return f"{self.field} {self.here} here vs {self.commit} at the commit"


def env_words(env: Mapping[str, str | None]) -> str:
    """``A=1 B=2``, an unset variable as ``NAME unset``."""
    return " ".join(f"{k}={v}" if v is not None else f"{k} unset" for k, v in env.items())


def env_command(env: Mapping[str, str | None]) -> str:
    """The prefix a shell command takes to run with ``env``: ``A=1 `` or ``env -u B A=1 ``.

    Examples
    --------
    >>> env_command({"MKL_CBWR": None}), env_command({"OMP_NUM_THREADS": "2"})
    ('env -u MKL_CBWR ', 'OMP_NUM_THREADS=2 ')
    """
    unset = [f"-u {k}" for k, v in env.items() if v is None]
    assigned = [f"{k}={v}" for k, v in env.items() if v is not None]
    return " ".join([*(["env", *unset] if unset else []), *assigned]) + " "


def commit_variable(value: str) -> str | None:
    return None if value in ("unset", "absent") else value


def differing_settings(commit: Mapping[str, str], here: Mapping[str, str]) -> list[Setting]:
    """Each bit-shaping setting that differs, those this machine can try first (capability,
    threads, MKL_CBWR, other kernel variables), then versions and the CPU itself.

    Examples
    --------
    >>> commit = {"cpu_capability": "AVX512", "intra_op_threads": "2", "torch_version": "2.13.0"}
    >>> here = {"cpu_capability": "DEFAULT", "intra_op_threads": "2", "torch_version": "2.14.1",
    ...         "cpu_flags": "avx512f avx512bw avx512vl avx512dq avx2 fma"}
    >>> [(s.field, s.env) for s in differing_settings(commit, here)]
    [('cpu_capability', {'ATEN_CPU_CAPABILITY': 'avx512'}), ('torch_version', None)]
    """

    def pair(key: str) -> tuple[str, str] | None:
        ours, theirs = here.get(key, "absent"), commit.get(key, "absent")
        return None if ours == theirs or theirs == "absent" else (ours, theirs)

    settings = []
    if (values := pair("cpu_capability")) is not None:
        needed = CAPABILITY_FLAGS.get(values[1].upper())
        flags = set(here.get("cpu_flags", "").split())
        if needed is None or not set(needed) <= flags:
            missing = " ".join(sorted(set(needed or ()) - flags)) or values[1]
            fix = f"this CPU lacks {missing}: {PORTABLE_FIX} makes them agree"
            settings.append(Setting("cpu_capability", *values, fix=fix))
        else:
            env = {"ATEN_CPU_CAPABILITY": values[1].lower()}
            settings.append(Setting("cpu_capability", *values, env=env))
    if (values := pair("intra_op_threads")) is not None:
        env = {"OMP_NUM_THREADS": values[1], "MKL_NUM_THREADS": values[1]}
        settings.append(Setting("intra_op_threads", *values, env=env))
    if (values := pair("mkl_cbwr")) is not None:
        env = {"MKL_CBWR": commit_variable(values[1])}
        settings.append(Setting("mkl_cbwr", *values, env=env))
    for name in KERNEL_VARIABLES:
        if (values := pair(f"env.{name}")) is not None:
            env = {name: commit_variable(values[1])}
            settings.append(Setting(f"env.{name}", *values, env=env))
    for key, package in (("torch_version", "torch"), ("numpy_version", "numpy")):
        if (values := pair(key)) is not None:
            version = values[1].split("+")[0]
            fix = f"`pip install {package}=={version}` here makes them agree"
            settings.append(Setting(key, *values, fix=fix))
    if (values := pair("python_version")) is not None:
        fix = f"Python {values[1]} here makes them agree"
        settings.append(Setting("python_version", *values, fix=fix))
    if (values := pair("blas")) is not None and pair("torch_version") is None:
        fix = "the commit's torch build (the same wheel) makes them agree"
        settings.append(Setting("blas", *values, fix=fix))
    if (values := pair("cpu_model")) is not None:
        fix = f"another CPU model: {PORTABLE_FIX} makes them agree"
        settings.append(Setting("cpu_model", *values, fix=fix))
    return settings


def tryable(settings: list[Setting]) -> list[Setting]:
    return [setting for setting in settings if setting.env is not None]


def together(settings: list[Setting]) -> Setting | None:
    """Every tryable setting at once, for when no one alone gives the commit's bits."""
    tried = tryable(settings)
    if len(tried) < 2:
        return None
    env: dict[str, str | None] = {}
    for setting in tried:
        env.update(setting.env or {})
    return Setting(
        ", ".join(s.field for s in tried),
        ", ".join(s.here for s in tried),
        ", ".join(s.commit for s in tried),
        env=env,
    )


def cause_record(setting: Setting | None, reproduced: bool) -> dict[str, object] | None:
    """pinpoint.json's ``environment_cause``."""
    if setting is None:
        return None
    return {
        "field": setting.field,
        "here": setting.here,
        "commit": setting.commit,
        "reproduces_with": dict(setting.env or {}) if reproduced else None,
    }
