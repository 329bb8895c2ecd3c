"""Pinpoint's cost: real work plain and under the op tracer, and a run stopped at its first
divergence.

Usage: python -m benchmarks.pinpoint [--repeats 3] [--quick]

Each measurement is one fresh process, as pinpoint starts them: ``plain`` runs the seed through
``detflow.run.seed_runner``, ``traced`` through ``detflow.trace.trace_seed`` (every aten op
hashed and streamed to disk). Rows:

- a ResNet-like conv net (written here: torchvision does not load everywhere), SGD steps of
  forward and backward on a batch of images;
- the README's training task (``detflow.tasks.train`` with ``seed_everything``);
- a seed that diverges at its first op and then runs 200,000 more: pinpoint's whole wall time
  (two runs side by side, stopped at the divergence) against one run traced to the end;
- ``--record`` and ``--against HEAD`` for the how-to, the training task and the conv net:
  agreeing with the commit, and with one setting (the CPU capability) differing.

Prints medians; asserts nothing about timings (make bench's guards live in benchmarks.bench).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

# Runs one seed in a fresh process and prints its summary as JSON. The seed alone is timed
# after the imports and params checks that plain and traced runs share, including two that the
# training task would otherwise pay inside the seed: xarray, and torch._inductor, which
# torch.use_deterministic_algorithms (in seed_everything) imports on first call, about 1 s.
CHILD = """
import json, sys, time
from pathlib import Path
import torch._inductor, xarray
from detflow.params import load_params
from detflow.run import seed_runner
from detflow.trace import trace_seed

params_path, mode, prefix = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
params = load_params(params_path)
run_seed = seed_runner(params)
start = time.perf_counter()
if mode == "traced":
    summary = trace_seed(run_seed, params.torch_seeds[0], prefix, params_path)
else:
    run_seed(params.torch_seeds[0])
    summary = {}
summary["seed_seconds"] = time.perf_counter() - start
print(json.dumps(summary))
"""


# Times SGD steps of the conv net in one process, plain and traced by turns, after a warm-up
# step (oneDNN builds its kernels on the first): alternating cancels the drift of a machine
# whose load changes, which separate processes measured seconds apart do not.
CONV_CHILD = """
import json, statistics, sys, time
from pathlib import Path
import torch
from benchmarks.pinpoint import resnet_like
from detflow.trace import OpTracer
from detflow.trace_format import trace_files
from detflow.trace_writer import TraceWriter

repeats, prefix = int(sys.argv[1]), Path(sys.argv[2])
torch.manual_seed(0)
model = resnet_like()
optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
images, labels = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))

def step():
    loss = torch.nn.functional.cross_entropy(model(images), labels)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()

step()
plain, traced = [], []
with TraceWriter(trace_files(prefix)) as writer:
    tracer = OpTracer(writer, Path("params.yaml"))
    with tracer:
        step()  # the tracer's own first-use costs
    for _ in range(repeats):
        start = time.perf_counter(); step(); plain.append(time.perf_counter() - start)
        count = writer.count
        with tracer:
            start = time.perf_counter(); step(); traced.append(time.perf_counter() - start)
        ops = writer.count - count
print(json.dumps({"plain": statistics.median(plain), "traced": statistics.median(traced),
                  "ops": ops, "threads": torch.get_num_threads()}))
"""


def conv_steps(scratch: Path, repeats: int) -> None:
    command = [sys.executable, "-c", CONV_CHILD, str(repeats), str(scratch / "conv")]
    run = subprocess.run(
        command, capture_output=True, text=True, check=True, env=environment(), cwd=ROOT
    )
    found = json.loads(run.stdout.strip().splitlines()[-1])
    plain, traced, ops = found["plain"], found["traced"], found["ops"]
    print(
        f"ResNet-like conv net ({sum(1 for _ in resnet_like().modules())} modules), one SGD "
        f"step (forward and backward) of 16 32x32 images, {found['threads']} threads, median "
        f"of {repeats} steps plain and traced by turns in one process:"
    )
    print(
        f"plain {plain * 1e3:.1f} ms, traced {traced * 1e3:.1f} ms: traced / plain "
        f"{traced / plain:.2f}x on the compute; {ops} ops a step, "
        f"{(traced - plain) / ops * 1e6:.0f} us an op"
    )
    print()


# The workloads (imported by the child processes as benchmarks.pinpoint.*) ----------------


def resnet_like(width: int = 32, blocks: int = 2, classes: int = 10):
    """A small ResNet: a stem, three stages of basic blocks (conv-BN-ReLU-conv-BN plus the
    shortcut), global pooling and a linear head."""
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, inputs: int, outputs: int, stride: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(inputs, outputs, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(outputs)
            self.conv2 = nn.Conv2d(outputs, outputs, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(outputs)
            self.shortcut = nn.Sequential()
            if stride != 1 or inputs != outputs:
                self.shortcut = nn.Sequential(
                    nn.Conv2d(inputs, outputs, 1, stride, bias=False), nn.BatchNorm2d(outputs)
                )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = torch.relu(self.bn1(self.conv1(x)))
            return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))

    layers: list[nn.Module] = [nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width)]
    layers.append(nn.ReLU())
    channels = width
    for stage in range(3):
        out = width * 2**stage
        for number in range(blocks):
            layers.append(Block(channels, out, 2 if stage and not number else 1))
            channels = out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, classes)]
    return nn.Sequential(*layers)


def resnet_steps(torch_seed: int, steps: int = 3, batch: int = 16, size: int = 32) -> dict:
    """``steps`` SGD steps of the ResNet-like net on random images: forward and backward."""
    import torch

    model = resnet_like()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    images = torch.randn(batch, 3, size, size)
    labels = torch.randint(0, 10, (batch,))
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return {"loss": loss.detach()}


def diverges_early(torch_seed: int, steps: int = 200_000) -> dict:
    """An unseeded draw at op #0, then ``steps`` cheap ops."""
    import torch

    generator = torch.Generator().manual_seed(int.from_bytes(os.urandom(7), "little"))
    value = torch.rand(1, generator=generator)
    for _ in range(steps):
        value = value + 1.0
    return {"out": value}


# Measuring ------------------------------------------------------------------------------


def params_file(folder: Path, name: str, **values) -> Path:
    """The project's params.yaml with ``values``, for one seed."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params.update(torch_seed=[0], **values)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def environment() -> dict[str, str]:
    """Children import benchmarks.pinpoint from the project root."""
    paths = [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


def measure(params_path: Path, mode: str, prefix: Path) -> tuple[float, dict]:
    """Wall seconds of one fresh process, and what it printed."""
    command = [sys.executable, "-c", CHILD, str(params_path), mode, str(prefix)]
    start = time.perf_counter()
    run = subprocess.run(
        command, capture_output=True, text=True, check=True, env=environment(), cwd=ROOT
    )
    seconds = time.perf_counter() - start
    return seconds, json.loads(run.stdout.strip().splitlines()[-1])


def plain_and_traced(params_path: Path, scratch: Path, repeats: int) -> dict:
    """Median process and seed seconds, plain and traced, and the traced run's summary."""
    figures: dict = {}
    for mode in ("plain", "traced"):
        measure(params_path, mode, scratch / "warm")  # warm the file cache
        runs = [measure(params_path, mode, scratch / f"{mode}{n}") for n in range(repeats)]
        figures[mode] = (
            statistics.median(seconds for seconds, _ in runs),
            statistics.median(printed["seed_seconds"] for _, printed in runs),
        )
        figures["summary"] = runs[-1][1]
    return figures


def print_rows(title: str, figures: dict) -> None:
    print(title)
    print("| run | process | seed alone |")
    print("|---|---|---|")
    for mode in ("plain", "traced"):
        process, seed = figures[mode]
        print(f"| {mode} | {process:.2f} s | {seed:.3f} s |")
    plain, traced = figures["plain"], figures["traced"]
    ops = figures["summary"]["ops"]
    print(
        f"traced / plain: {traced[1] / plain[1]:.2f}x on the compute (the seed alone), "
        f"{traced[0] / plain[0]:.2f}x per process; {ops} ops, "
        f"{(traced[1] - plain[1]) / ops * 1e6:.0f} us an op"
    )
    print()


def cpu_seconds() -> float:
    """CPU seconds of every child process waited for so far (theirs included)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(command: list[str]) -> tuple[float, float]:
    """Wall and CPU seconds of one command."""
    cpu, start = cpu_seconds(), time.perf_counter()
    subprocess.run(command, capture_output=True, env=environment(), cwd=ROOT, check=False)
    return time.perf_counter() - start, cpu_seconds() - cpu


def early_divergence(scratch: Path, repeats: int, steps: int) -> None:
    """pinpoint on a seed diverging at op #0, against tracing both runs to the end."""
    params_path = params_file(
        scratch, "early", task="benchmarks.pinpoint.diverges_early", pre_task=None
    )
    whole_command = [sys.executable, "-c", CHILD, str(params_path), "traced", str(scratch / "w")]
    command = [sys.executable, "-m", "detflow.pinpoint", "--params", str(params_path)]
    command += ["--seed", "0", "--out", str(scratch / "pinpoint.json")]
    whole = [timed(whole_command) for _ in range(repeats)]
    stopped = [timed(command) for _ in range(repeats)]
    report = json.loads((scratch / "pinpoint.json").read_text())
    whole_wall, whole_cpu = (statistics.median(t[i] for t in whole) for i in (0, 1))
    wall, cpu = (statistics.median(t[i] for t in stopped) for i in (0, 1))
    print(f"diverges at op #0, then {steps} more ops (median of {repeats}):")
    print(
        f"- tracing it all, as pinpoint did before: two runs side by side, each {whole_wall:.2f} "
        f"s wall and {whole_cpu:.2f} s CPU (a fresh process each, torch's import included)"
    )
    print(
        f"- pinpoint now, stopped at the divergence: {wall:.2f} s wall ({wall / whole_wall:.2f}x), "
        f"{cpu:.2f} s CPU for all its processes ({cpu / (2 * whole_cpu):.2f}x of both runs); "
        f"op #{report['op_index']} {report['op']}, {report['ops_traced']} of {steps + 1} ops "
        f"traced by run 1"
    )


def against_cost(scratch: Path, repeats: int) -> None:
    """``--record`` and ``--against HEAD``: agreeing with the commit, and differing from it in
    one setting (``ATEN_CPU_CAPABILITY=default`` against a native commit), so one more run."""
    workloads = (
        ("how-to", {}),
        (
            "training task",
            {"task": "detflow.tasks.train", "pre_task": "detflow.seeding.seed_everything"},
        ),
        ("conv net, 3 SGD steps", {"task": "benchmarks.pinpoint.resnet_steps"}),
    )
    print(f"--against HEAD, median of {repeats} (a plain run: one fresh process of the seed):")
    print("| workload | reference | --record | plain run | agreeing | one setting differs |")
    print("|---|---|---|---|---|---|")
    for number, (name, values) in enumerate(workloads):
        folder = scratch / f"against{number}"
        folder.mkdir()
        params = params_file(folder, "params", **values)
        plain = statistics.median(measure(params, "plain", folder / "p")[0] for _ in range(repeats))
        native = {k: v for k, v in environment().items() if k not in ("ATEN_CPU_CAPABILITY",)}
        pinpoint = [sys.executable, "-m", "detflow.pinpoint"]
        record = timed_in(folder, [*pinpoint, "--record"], native)
        for command in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "r"]):
            subprocess.run(
                ["git", "-c", "user.name=b", "-c", "user.email=b@b", *command],
                cwd=folder,
                check=True,
                capture_output=True,
            )
        size = sum(p.stat().st_size for p in (folder / "pinpoint-reference").iterdir())
        against = [*pinpoint, "--against", "HEAD"]
        agree = statistics.median(timed_in(folder, against, native) for _ in range(repeats))
        other = {**native, "ATEN_CPU_CAPABILITY": "default"}
        differ = statistics.median(timed_in(folder, against, other) for _ in range(repeats))
        print(
            f"| {name} | {size / 1000:,.1f} kB | {record:.2f} s | {plain:.2f} s | "
            f"{agree:.2f} s | {differ:.2f} s |"
        )
    print()


def timed_in(folder: Path, command: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, capture_output=True, env=env, cwd=folder, check=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="one repeat of each")
    args = parser.parse_args()
    repeats = 1 if args.quick else args.repeats
    with tempfile.TemporaryDirectory() as folder:
        scratch = Path(folder)
        conv_steps(scratch, max(repeats, 5) if not args.quick else 3)
        train = params_file(
            scratch,
            "train",
            task="detflow.tasks.train",
            pre_task="detflow.seeding.seed_everything",
        )
        options = yaml.safe_load(train.read_text())["train"]
        print_rows(
            f"training task, one seed ({options['epochs']} epochs, {options['n_samples']} "
            f"samples, batch {options['batch_size']}), median of {repeats} fresh processes:",
            plain_and_traced(train, scratch, repeats),
        )
        early_divergence(scratch, repeats, 200_000)
        print()
        against_cost(scratch, repeats)


if __name__ == "__main__":
    main()
