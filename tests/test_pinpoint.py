"""detflow.pinpoint: the op where fresh runs of a seed first diverge, and torch's alerts.

Each pinpoint starts fresh processes (about 2 s each, for torch's import); tests that need no
alerts pass ``latent=False`` to start one process fewer.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from detflow.cli import DetflowError
from detflow.committed import config_digest
from detflow.params import parse_params
from detflow.pinpoint import main, pinpoint_seeds
from detflow.pinpoint_metrics import seeds_to_pinpoint
from pinpoint_fixtures import pinpoint_children

pytestmark = pinpoint_children

TESTS = Path(__file__).parent
TASKS_FILE = TESTS / "tasks_for_pinpoint.py"


def lines_of(tag: str) -> list[int]:
    """The lines of tasks_for_pinpoint.py marked ``# pinpoint: <tag>``."""
    lines = TASKS_FILE.read_text().splitlines()
    return [n for n, line in enumerate(lines, 1) if line.endswith(f"# pinpoint: {tag}")]


def line_of(tag: str) -> int:
    (line,) = lines_of(tag)
    return line


def divergence_of(params_path: Path, seed: int = 0, latent: bool = False):
    report = pinpoint_seeds(params_path, [seed], latent=latent)
    return report, report.findings[0].divergence


def test_how_to_without_pre_task_names_the_rng_fill_in_linear_init(params_for):
    params_path = params_for(pre_task=None)
    command = [sys.executable, "-m", "detflow.pinpoint", "--seed", "0", "--out", "report.json"]
    run = subprocess.run(command, capture_output=True, text=True, check=False)
    assert run.returncode == 1, run.stderr  # a divergence: scripts can gate on it
    lines = run.stdout.splitlines()
    module_line = params_path.read_text().splitlines().index("module:") + 1
    # The runs are stopped at the first divergence, maybe after they ended (12 ops is quick).
    assert re.fullmatch(
        r"pinpoint: torch_seed 0, 2 fresh runs, (12 ops each|stopped at the first "
        r"divergence, after \d+, \d+ ops)",
        lines[0],
    ), lines[0]
    # Ops #0 and #1 are the torch.empty of weight and bias: uninitialised, so never compared.
    assert lines[1] == (
        "first divergence: op #2 aten.uniform_.default (forward) in module Linear "
        f"(torch.nn.Linear, outside its forward), from params.yaml:{module_line}"
    )
    via = re.fullmatch(r"  called at torch/nn/init\.py:(\d+) \(kaiming_uniform_\)", lines[2])
    assert via, lines[2]
    init_file = Path(torch.nn.init.__file__).read_text().splitlines()
    assert "uniform_(" in init_file[int(via[1]) - 1]  # the line really draws the weights
    assert lines[3].startswith("  its inputs were equal: this RNG op drew different numbers")
    # The deterministic-mode run is stopped too, unless it had ended (with cores to spare).
    assert lines[4] in {
        "latent non-deterministic ops: none flagged by torch",
        "latent non-deterministic ops: not checked: pinpoint stopped at the first divergence "
        "(rerun once it is fixed)",
    }
    record = json.loads(Path("report.json").read_text())
    assert record["diverged"] is True
    assert (record["op_index"], record["op"], record["phase"]) == (
        2,
        "aten.uniform_.default",
        "forward",
    )
    assert (record["module"], record["module_class"]) == ("Linear", "torch.nn.Linear")
    assert record["source"] == f"params.yaml:{module_line}"
    assert record["inputs_equal"] is True
    assert (record["seeds"], record["ops_traced"]) == ("0", 12)


def test_numpy_data_is_blamed_on_the_first_op_that_reads_it(params_for):
    _, divergence = divergence_of(params_for(task="tasks_for_pinpoint.numpy_draws"))
    # from_numpy runs aten.lift_fresh in torch 2.13: the first op that reads NumPy's numbers.
    assert (divergence.op_index, divergence.op) == (0, "aten.lift_fresh.default")
    assert divergence.inputs_equal is False
    assert "its inputs already differed" in divergence.cause()
    assert divergence.origin.startswith("NumPy's global RNG: numpy.random.rand at ")
    assert divergence.source == f"tasks_for_pinpoint.py:{line_of('numpy')}"
    assert divergence.module is None


def test_unseeded_generator_is_named_after_the_deterministic_ops(params_for):
    _, divergence = divergence_of(params_for(task="tasks_for_pinpoint.unseeded_generator"))
    # arange, mul, add, sum agree; then the draw.
    assert (divergence.op_index, divergence.op) == (4, "aten.rand.generator")
    assert divergence.inputs_equal is True
    assert divergence.random_op
    assert "generator" in divergence.cause()
    assert divergence.source == f"tasks_for_pinpoint.py:{line_of('generator')}"


def test_a_non_deterministic_custom_op_is_named(params_for):
    _, divergence = divergence_of(params_for(task="tasks_for_pinpoint.custom_noisy_op"))
    assert (divergence.op_index, divergence.op) == (2, "detflow_test.noisy_add.default")
    assert divergence.inputs_equal is True
    assert not divergence.random_op
    assert "the op itself gave different outputs" in divergence.cause()
    assert divergence.source == f"tasks_for_pinpoint.py:{line_of('custom')}"


def test_runs_that_branch_apart_are_a_path_difference(params_for):
    _, divergence = divergence_of(params_for(task="tasks_for_pinpoint.branches_per_run"))
    assert (divergence.kind, divergence.op_index) == ("path", 1)
    assert {divergence.op, divergence.other_op} == {"aten.add.Tensor", "aten.mul.Tensor"}
    assert divergence.inputs_equal is None
    assert divergence.source in {f"tasks_for_pinpoint.py:{n}" for n in lines_of("branch")}
    assert "the runs took different paths" in divergence.cause()


def test_agreeing_runs_exit_zero_and_say_so(params_for, capsys):
    params_path = params_for()  # the how-to, seeded
    assert main(["--params", str(params_path), "--out", "pinpoint.json"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "pinpoint: no metrics.json: tracing the first seed, torch_seed 0",
        "pinpoint: torch_seed 0, 2 fresh runs, 12 ops each",
        "no divergence: every op gave equal outputs in every run, and so did the results",
        "latent non-deterministic ops: none flagged by torch",
    ]
    record = json.loads(Path("pinpoint.json").read_text())
    assert record["diverged"] is False
    assert record["op"] is None
    assert record["latent_nondeterministic_ops"] == {}
    assert not list(Path().glob(".pinpoint.json.*"))  # written through a temporary file


def test_uninitialised_memory_written_before_it_is_read_agrees(params_for):
    report, divergence = divergence_of(params_for(task="tasks_for_pinpoint.uses_empty_memory"))
    assert divergence is None
    assert report.record()["diverged"] is False


def test_latent_risks_list_the_ops_torch_flags(params_for):
    report, divergence = divergence_of(
        params_for(task="tasks_for_pinpoint.flagged_op"), latent=True
    )
    assert divergence is None  # put_ is serial on the CPU: the runs agree
    source = f"tasks_for_pinpoint.py:{line_of('flagged')}"
    assert report.latent == {"put_": {"count": 2, "source": source}}
    assert report.record()["latent_nondeterministic_ops"] == {"put_": 2}
    assert report.lines()[-1] == f"latent non-deterministic ops: put_ x2 (from {source})"


def test_alert_messages_are_parsed():
    from detflow.trace_alerts import alert_op

    # As torch 2.13 words it (captured from put_ on the CPU).
    message = (
        "put_ does not have a deterministic implementation, but you set "
        "'torch.use_deterministic_algorithms(True, warn_only=True)'. You can file an issue at "
        "https://github.com/pytorch/pytorch/issues to help us prioritize adding deterministic "
        "support for this operation."
    )
    assert alert_op(message) == "put_"
    assert alert_op("index_add_cuda_ does not have a deterministic implementation, but ...") == (
        "index_add_cuda_"
    )
    assert alert_op("TypedStorage is deprecated") is None


def test_a_failing_run_is_one_line(params_for):
    params_path = params_for(task="tasks_for_tests.raises_on_seed_one", torch_seed=[0, 1])
    with pytest.raises(DetflowError, match=r"traced run [12] of torch_seed 1 failed: .*boom"):
        pinpoint_seeds(params_path, [1], latent=False)


@pytest.mark.parametrize(
    ("runs", "seeds", "message"),
    [(1, [0], "runs 1 is too few"), (2, [-1], "torch_seed -1 is out of range")],
)
def test_bad_arguments_fail_before_any_run(params_for, runs, seeds, message):
    with pytest.raises(DetflowError, match=message):
        pinpoint_seeds(params_for(), seeds, runs=runs)


def test_the_command_line_reports_errors_in_one_line(params_for):
    params_for()
    command = [sys.executable, "-m", "detflow.pinpoint", "--runs", "1", "--seed", "0"]
    run = subprocess.run(command, capture_output=True, text=True, check=False)
    assert run.returncode == 1
    assert run.stderr.strip().splitlines() == [
        "detflow: error: runs 1 is too few: give at least 2 (pinpoint compares fresh runs)"
    ]


def test_pinpoint_imports_no_torch():
    code = "import sys, detflow.pinpoint; print('torch' in sys.modules)"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "False"


# Which seeds ----------------------------------------------------------------------------


@pytest.fixture
def two_seeds(project_params):
    return parse_params(project_params)


def write_metrics(params, **values) -> Path:
    path = Path("metrics.json")
    path.write_text(json.dumps({"config_digest": config_digest(params), **values}))
    return path


def test_seeds_come_from_matching_metrics(two_seeds):
    path = write_metrics(two_seeds, disagreeing_seeds="1")
    assert seeds_to_pinpoint(two_seeds, path) == (
        [1],
        "pinpoint: metrics.json says torch_seed 1 disagree",
    )


def test_agreeing_metrics_trace_the_first_seed(two_seeds):
    seeds, why = seeds_to_pinpoint(two_seeds, write_metrics(two_seeds, disagreeing_seeds=""))
    assert seeds == [0]
    assert why.endswith("says every trial agrees: tracing torch_seed 0 for latent risks")


def test_metrics_from_other_params_are_not_used(two_seeds):
    path = Path("metrics.json")
    path.write_text(json.dumps({"config_digest": "sha256:other", "disagreeing_seeds": "1"}))
    seeds, why = seeds_to_pinpoint(two_seeds, path)
    assert seeds == [0]
    assert "made from other params" in why


def test_many_disagreeing_seeds_are_capped(two_seeds):
    path = write_metrics(two_seeds, disagreeing_seeds="0,1,2,3,4")
    seeds, why = seeds_to_pinpoint(two_seeds, path)
    assert seeds == [0, 1, 2]
    assert "name others with --seed" in why


# On a GPU --------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_scatter_sum_on_cuda_names_its_atomic_op(params_for):
    params_path = params_for(task="detflow.tasks.scatter_sum", device="cuda")
    _, divergence = divergence_of(params_path)
    assert divergence is not None
    assert re.match(r"aten\.(index_add|scatter_add)", divergence.op), divergence.op
    assert divergence.inputs_equal is True


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_conv_backward_on_cuda_names_a_convolution_backward_op(params_for):
    params_path = params_for(task="tasks_for_pinpoint.conv_backward", device="cuda")
    _, divergence = divergence_of(params_path)
    assert divergence is not None
    assert divergence.phase == "backward"
    assert "convolution_backward" in divergence.op, divergence.op
