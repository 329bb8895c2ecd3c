"""A throwaway one-node Slurm cluster (Debian's slurm-wlm and munge), for the submitit_slurm test.

It needs root (slurmd runs jobs as their user) and the daemons on PATH; `make slurm`
installs them with apt. Everything else lives in a temporary folder: its own munge key and
socket, state, spool, logs and ports, so nothing on the machine is reconfigured.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "sinfo", "squeue", "scancel", "scontrol")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def slurm_conf(folder: Path, host: str) -> str:
    memory_mib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20 // 2
    return f"""\
ClusterName=detflow
SlurmctldHost={host}
SlurmUser=root
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
AuthType=auth/munge
AuthInfo=socket={folder}/munge.sock
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
# No cgroups or accounting daemon in a container: track processes by /proc, keep no records.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
NodeName={host} CPUs={os.cpu_count()} RealMemory={memory_mib} State=UNKNOWN
PartitionName=detflow Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


def start(folder: Path) -> dict[str, str]:
    """Start munged, slurmctld and slurmd; return the environment that reaches them."""
    for name in ("state", "spool"):
        (folder / name).mkdir(parents=True)
    key = folder / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    host = socket.gethostname().split(".")[0]
    conf = folder / "slurm.conf"
    conf.write_text(slurm_conf(folder, host))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    munge = [f"--key-file={key}", f"--socket={folder}/munge.sock"]
    munge += [f"--pid-file={folder}/munged.pid", f"--seed-file={folder}/munged.seed"]
    subprocess.run(["munged", "--force", *munge, f"--log-file={folder}/munged.log"], check=True)
    subprocess.run(["slurmctld", "-c", "-f", str(conf)], env=env, check=True)
    subprocess.run(["slurmd", "-f", str(conf)], env=env, check=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        state = subprocess.run(
            ["sinfo", "-h", "-o", "%t"], env=env, capture_output=True, text=True
        ).stdout.strip()
        if state == "idle":
            return env
        time.sleep(1)
    raise RuntimeError(f"the one-node Slurm did not come up (node state {state!r}); see {folder}")


def stop(folder: Path, env: dict[str, str]) -> None:
    """Cancel what is left, let job steps finish, then shut the daemons down."""
    subprocess.run(["scancel", "--full", "--user", "root"], env=env, check=False)
    deadline = time.monotonic() + 30
    while (
        time.monotonic() < deadline
        and subprocess.run(["squeue", "-h"], env=env, capture_output=True, text=True).stdout.strip()
    ):
        time.sleep(1)
    subprocess.run(["scontrol", "shutdown"], env=env, check=False)
    subprocess.run(["munged", "--stop", f"--socket={folder}/munge.sock"], check=False)


@pytest.fixture(scope="session")
def slurm(tmp_path_factory) -> Iterator[dict[str, str]]:
    """The environment of a running one-node Slurm, or a skip that says what is missing."""
    missing = [name for name in DAEMONS if shutil.which(name) is None]
    if missing:
        pytest.skip(f"no Slurm here ({', '.join(missing)} not found): run `make slurm` as root")
    if os.geteuid() != 0:
        pytest.skip("starting a one-node Slurm needs root (slurmd runs jobs as their user)")
    folder = tmp_path_factory.mktemp("slurm")
    env = {**os.environ, "SLURM_CONF": str(folder / "slurm.conf")}
    try:
        yield start(folder)
    finally:
        stop(folder, env)
