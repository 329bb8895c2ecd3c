"""Real training code through dvc, as a user ports it: a pytorch/examples-style MNIST task in
tasks/ returning its state_dict, and a task file git does not track in a queued experiment."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from detflow.artifact import as_tensors, read_dataset, read_nested
from dvc_project import dvc, metrics, sh, start_queue, wait_for_queue
from project_copy import environment, make_copy

pytestmark = pytest.mark.e2e

TESTS = Path(__file__).resolve().parent


def mnist_project(folder: Path) -> Path:
    repo = make_copy(
        folder,
        task="tasks.mnist_task.mnist",
        pre_task="detflow.seeding.seed_everything",
        torch_seed=[0, 1],
        trial_id=["a", "b"],
    )
    shutil.copy(TESTS / "tasks_mnist.py", repo / "tasks" / "mnist_task.py")
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "an MNIST task")
    return repo


def reference(seed: int) -> dict:
    """The task run by hand, in a fresh process, as its own script would run it."""
    script = (
        "import sys, torch; sys.path.insert(0, sys.argv[1])\n"
        "from detflow.seeding import seed_everything; from tasks_mnist import mnist\n"
        "seed_everything(int(sys.argv[2])); torch.save(mnist(int(sys.argv[2])), sys.argv[3])\n"
    )
    path = TESTS.parent / "build" / f"mnist-reference-{seed}.pt"
    path.parent.mkdir(exist_ok=True)
    try:
        subprocess.run(
            [sys.executable, "-c", script, str(TESTS), str(seed), str(path)],
            env=environment(),
            check=True,
        )
        return torch.load(path, weights_only=False)
    finally:
        path.unlink(missing_ok=True)


def test_an_mnist_task_is_deterministic_and_its_state_dict_reads_back(tmp_path):
    repo = mnist_project(tmp_path / "project")
    log = dvc(repo, "exp", "run")
    assert "deterministic: all 2 trials agree bitwise for torch_seed 0..1" in log
    assert metrics(repo)["deterministic"] is True
    result = read_dataset(repo / "data/result.nc")
    references = {seed: reference(seed) for seed in (0, 1)}
    for seed, expected in references.items():
        for trial_id in ("a", "b"):
            back = read_nested(repo / f"data/trials/{trial_id}.nc", torch_seed=seed)
            assert list(back["weights"]) == list(expected["weights"])
            for key, tensor in expected["weights"].items():
                assert back["weights"][key].values.tobytes() == tensor.numpy().tobytes(), key
                stored = result[f"weights.{key}"].sel(torch_seed=seed, trial_id=trial_id)
                assert stored.values.tobytes() == tensor.numpy().tobytes(), key
            assert back["loss"].values.tobytes() == expected["loss"].values.tobytes()
    # What a user does with it: load the weights into a fresh Net.
    sys.path.insert(0, str(TESTS))
    try:
        from tasks_mnist import Net
    finally:
        sys.path.remove(str(TESTS))
    net = Net()
    net.load_state_dict(as_tensors(read_nested(repo / "data/trials/a.nc", torch_seed=1)["weights"]))
    assert torch.equal(net.fc2.bias, references[1]["weights"]["fc2.bias"])
    # Different seeds train differently.
    assert not torch.equal(references[0]["weights"]["fc2.bias"], net.fc2.bias)
    assert_plots_render_offline(repo)


def assert_plots_render_offline(repo: Path) -> None:
    """`dvc plots show` writes a page that loads nothing from the network, and (where Debian's
    chromium is installed) draws every plot with the network cut off."""
    if "html_template" not in (repo / ".dvc/config").read_text():
        # Until .dvc/config names the page itself (plots.html_template = plots/offline.html).
        dvc(repo, "config", "plots.html_template", "plots/offline.html")
    dvc(repo, "plots", "show")
    page = (repo / "dvc_plots/index.html").read_text()
    assert "<script src=" not in page and "vegaEmbed" in page
    chromium = shutil.which("chromium")
    if chromium is None:
        return
    rendered = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            # No name resolves and no proxy answers: nothing can come from the network.
            "--host-resolver-rules=MAP * ~NOTFOUND",
            "--proxy-server=127.0.0.1:9",
            "--virtual-time-budget=10000",
            "--dump-dom",
            (repo / "dvc_plots/index.html").as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    csvs = list((repo / "data/plots").glob("*.csv"))
    assert len(csvs) == 1 + 8  # loss, and the 8 tensors of the state_dict
    assert rendered.count('class="marks"') >= len(csvs)


UNTRACKED = "def train(torch_seed):\n    return {'out': float(torch_seed)}\n"


def test_a_queued_experiment_names_a_task_file_git_does_not_track(tmp_path):
    repo = make_copy(tmp_path / "project", torch_seed=0, trial_id=["a"])
    (repo / "tasks" / "mine.py").write_text(UNTRACKED)  # written, never `git add`-ed
    dvc(repo, "exp", "run", "--queue", "-n", "untracked", "-S", "task=tasks.mine.train")
    start_queue(repo)
    wait_for_queue(repo, 1)
    logs = dvc(repo, "queue", "logs", "untracked")
    assert (
        "detflow: error: task 'tasks.mine.train' does not import: module 'tasks' has no "
        "'mine': tasks/mine.py is not tracked by git: queued and remote experiments only see "
        "committed files; git add it"
    ) in logs


def test_a_lightning_trainer_is_deterministic_through_dvc_and_pinpoint(tmp_path):
    """A Lightning Trainer(deterministic=True) task, seeded by Lightning's own seed_everything
    (which takes `seed`): deterministic through `dvc repro`, seeds that differ, and pinpoint's
    fresh runs agree with no false divergence (deep copies of torchmetrics states included)."""
    pytest.importorskip("pytorch_lightning")
    repo = make_copy(
        tmp_path / "project",
        task="tasks.lightning_task.train",
        pre_task="pytorch_lightning.seed_everything",
        torch_seed=[0, 1],
        trial_id=["a", "b"],
    )
    shutil.copy(TESTS / "tasks_mnist.py", repo / "tasks" / "mnist_task.py")
    source = (TESTS / "tasks_lightning.py").read_text()
    (repo / "tasks" / "lightning_task.py").write_text(
        source.replace("from tasks_mnist import", "from tasks.mnist_task import")
    )
    dvc(repo, "repro")
    found = metrics(repo)
    assert found["deterministic"] is True and found["identical_seeds"] == ""
    pinpointed = subprocess.run(
        [sys.executable, "-m", "detflow.pinpoint", "--seed", "0"],
        cwd=repo,
        env=environment(),
        capture_output=True,
        text=True,
    )
    assert pinpointed.returncode == 0, pinpointed.stdout + pinpointed.stderr
    assert "no divergence" in pinpointed.stdout
    assert not (repo / "lightning_logs").exists()
