"""Pinpoint's fresh processes for one seed: started side by side, as many at once as the
machine holds, compared in lockstep while they run, all stopped at the first divergence; what
they are doing printed every few seconds; a failure as one line with its cause. No torch."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from detflow.cli import DetflowError
from detflow.pinpoint_compare import Lockstep, NameTable
from detflow.trace_format import RECORD, Difference, TraceFiles, trace_files

# What one traced child may take: the how-to's peak near 380 MiB (13 of them took 4.9 GiB),
# with room for a bigger task.
CHILD_MEMORY = 768 << 20
POLL_SECONDS = 0.05
PROGRESS_SECONDS = 3.0


def available_memory() -> int | None:
    """MemAvailable of /proc/meminfo in bytes (None where there is none, as off Linux)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as lines:
            for line in lines:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def machine_slots() -> tuple[int, str]:
    """How many children may run at once (the cores, and the memory, at CHILD_MEMORY each;
    never fewer than 2, since the runs are compared side by side), and why, in words."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    memory = available_memory()
    by_memory = cores if memory is None else memory // CHILD_MEMORY
    slots = max(2, min(cores, by_memory))
    held = f"{cores} cores" + ("" if memory is None else f", {memory / 2**30:.1f} GiB available")
    return slots, held


def trace_prefix(folder: Path, seed: int, number: int | str) -> Path:
    return folder / f"seed{seed}-{'run' if isinstance(number, int) else ''}{number}"


@dataclass
class Child:
    """One fresh process: a traced run (``number`` from 1) or the deterministic-mode run."""

    label: str
    command: list[str]
    prefix: Path
    number: int | None = None
    process: subprocess.Popen | None = None
    returncode: int | None = None
    killed: bool = False

    @property
    def files(self) -> TraceFiles:
        return trace_files(self.prefix)

    @property
    def finished(self) -> bool:
        return self.returncode == 0

    def start(self, environment: dict[str, str]) -> None:
        try:
            with (
                open(f"{self.prefix}.stdout", "wb") as stdout,
                open(f"{self.prefix}.stderr", "wb") as stderr,
            ):
                # A session of its own: stopping it stops its DataLoader workers too.
                self.process = subprocess.Popen(
                    self.command,
                    stdout=stdout,
                    stderr=stderr,
                    env=environment,
                    start_new_session=True,
                )
        except OSError as error:
            raise DetflowError(
                f"pinpoint could not start its {self.label} in {self.prefix.parent}: "
                f"{error.strerror or error}: free space there, or point TMPDIR elsewhere"
            ) from error

    def poll(self) -> int | None:
        if self.process is not None and self.returncode is None:
            self.returncode = self.process.poll()
        return self.returncode

    def stop(self) -> None:
        if self.process is not None and self.poll() is None:
            self.killed = True
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.returncode = self.process.wait()

    def ops_so_far(self) -> int:
        try:
            return self.files.ops.stat().st_size // RECORD.size
        except OSError:
            return 0

    def summary(self) -> dict[str, Any]:
        try:
            return json.loads(self.files.summary.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise DetflowError(
                f"pinpoint's {self.label} exited without writing its summary "
                f"{self.files.summary} ({error}): is its folder full?"
            ) from error

    def failure(self) -> str:
        """One line: how the child ended, and the last line it printed."""
        lines = Path(f"{self.prefix}.stderr").read_text(errors="replace").strip().splitlines()
        last = lines[-1].strip() if lines else ""
        code = self.returncode or 0
        if code < 0:
            name = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
            how = f"was killed by signal {name} ({signal.strsignal(-code) or 'unknown'})"
            if -code == signal.SIGKILL:  # what the kernel's out-of-memory killer sends
                how += " (out of memory? fewer at once: --jobs 2)"
        elif last.startswith("detflow: error: "):
            return f"pinpoint's {self.label} failed: {last.removeprefix('detflow: error: ')}"
        else:
            how = f"exited with code {code}"
        said = f"; its last line on stderr: {last}" if last else ", printing nothing on stderr"
        return f"pinpoint's {self.label} {how}{said}"


@dataclass
class SeedRuns:
    """The traced runs of one seed (run 1 is the reference each other run is compared with)
    and, optionally, the deterministic-mode run; ``slots`` at a time."""

    seed: int
    traced: list[Child]
    alerts: Child | None
    slots: int
    environment: dict[str, str]
    held: str = ""
    log: TextIO = field(default_factory=lambda: sys.stderr)
    clock: Callable[[], float] = time.monotonic
    names: NameTable = field(default_factory=NameTable)
    pairs: dict[int, Lockstep] = field(default_factory=dict)

    def queue(self) -> list[Child]:
        return [*self.traced, *([self.alerts] if self.alerts else [])]

    def running(self) -> list[Child]:
        return [c for c in self.queue() if c.process is not None and c.poll() is None]

    def start_more(self) -> None:
        waiting = [c for c in self.queue() if c.process is None]
        for child in waiting[: max(self.slots - len(self.running()), 0)]:
            child.start(self.environment)
            if child.number is not None and child.number > 1:
                self.pairs[child.number] = Lockstep.of(
                    self.traced[0].files, child.files, self.names
                )

    def stop_all(self) -> None:
        for child in self.queue():
            child.stop()

    def advance(self, limit: int | None = None) -> None:
        reference = self.traced[0]
        for number, pair in self.pairs.items():
            other = self.traced[number - 1]
            pair.advance(done=(reference.finished, other.finished), limit=limit)

    def earliest(self) -> tuple[Difference, int] | None:
        found = [(p.difference, n) for n, p in self.pairs.items() if p.difference is not None]
        return min(found, key=lambda pair: pair[0].index) if found else None

    def progress(self, started: float) -> str:
        parts = []
        for child in self.traced:
            state = "waiting" if child.process is None else f"{child.ops_so_far()} ops"
            if child.finished:
                state += ", done"
            parts.append(f"run {child.number} of {len(self.traced)}: {state}")
        compared = min((p.position for p in self.pairs.values()), default=0)
        parts.append(f"{compared} ops compared in lockstep")
        if self.alerts is not None:
            state = "waiting" if self.alerts.process is None else "running"
            parts.append(f"deterministic-mode run: {'done' if self.alerts.finished else state}")
        elapsed = self.clock() - started
        return f"pinpoint: torch_seed {self.seed}: {'; '.join(parts)} ({elapsed:.0f} s)"

    def say(self, line: str) -> None:
        print(line, file=self.log, flush=True)

    def run(self) -> tuple[Difference, int] | None:
        """Run until every run ended, or the first divergence; then stop every child.

        Returns the earliest difference and the number of the run that showed it, or None.
        """
        started = self.clock()
        total = len(self.queue())
        at_once = min(self.slots, total)
        self.say(
            f"pinpoint: torch_seed {self.seed}: starting {len(self.traced)} traced runs"
            f"{' and a deterministic-mode run' if self.alerts else ''}, {at_once} at a time "
            f"({self.held})"
        )
        said = started
        try:
            while True:
                self.start_more()
                for child in self.queue():
                    if child.poll() not in (None, 0) and not child.killed:
                        raise DetflowError(child.failure())
                self.advance()
                if self.earliest() is not None:
                    break
                if all(p.settled for p in self.pairs.values()) and all(
                    c.finished for c in self.queue()
                ):
                    break
                if self.clock() - said >= PROGRESS_SECONDS:
                    self.say(self.progress(started))
                    said = self.clock()
                time.sleep(POLL_SECONDS)
        finally:
            self.stop_all()
        found = self.earliest()
        if found is not None:
            # Another pair may hold an earlier difference it had not read yet.
            self.advance(limit=found[0].index)
            found = self.earliest()
        for pair in self.pairs.values():
            pair.close()
        return found
