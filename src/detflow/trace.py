"""Run one seed under a trace of every aten op, forward and backward: pinpoint's fresh process.

``python -m detflow.trace --params params.yaml --seed 0 --out <folder>/run1`` runs the seed as
the trial stage does (``detflow.run.seed_runner``) and streams one fixed-size record per op to
``run1.ops`` (the format is ``detflow.trace_format``'s), the long strings once each to
``run1.strings``, and a summary to ``run1.json``. The files are flushed as the run goes, so
pinpoint compares runs while they run. With ``--alerts`` it runs the seed under torch's
deterministic mode, warn-only, and writes only which ops torch flagged (``trace_alerts``).

This module and the ``trace_*`` modules it uses import torch; ``detflow.pinpoint`` runs them in
child processes and passes portable mode's environment to them before torch loads.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch._dynamo
from torch.utils._python_dispatch import TorchDispatchMode

from detflow.artifact import write_text
from detflow.cli import run_main, stage_parser
from detflow.outputs import Output
from detflow.params import DEFAULT_PARAMS, load_params
from detflow.run import seed_runner
from detflow.trace_alerts import run_with_alerts
from detflow.trace_digest import (
    DIGEST_SIZE,
    NO_DIGEST,
    DigestCache,
    OpInfo,
    items,
    op_info,
    storage_key,
    tensor_digest,
    update_with_value,
)
from detflow.trace_format import (
    OUTPUT_UNINITIALISED,
    RANDOM,
    READ_UNINITIALISED,
    UNHASHABLE,
    trace_files,
    values_path,
)
from detflow.trace_ledger import Ledger, ledger_path
from detflow.trace_origin import Origins
from detflow.trace_writer import TraceWriter, write_failure


class OpTracer(TorchDispatchMode):
    """Records every aten op this process runs: name, module, source line, phase, and digests
    of its inputs and outputs. It only reads tensors, so the numbers stay as they would be.

    Backward ops may run on autograd's own threads (one per GPU), hence the lock.
    """

    def __init__(
        self,
        writer: TraceWriter,
        params_path: Path,
        max_ops: int | None = None,
    ) -> None:
        super().__init__()
        self.writer = writer
        # A reference trace keeps a prefix of the run: machine differences start early.
        self.max_ops = max_ops
        self.skipped = 0
        self.pid = os.getpid()
        self.lock = threading.RLock()
        self.origins = Origins(writer.intern, params_path)
        self.ops: dict[Any, OpInfo] = {}
        # Storage address -> bytes not yet written, for memory from empty-like ops.
        self.uninitialised: dict[int, int] = {}
        self.cache = DigestCache()
        self.unrecorded = 0  # ops that rebuild unpickled tensors or adopt storage
        self.hooks: list[Any] = []

    def __enter__(self) -> OpTracer:
        hooks = torch.nn.modules.module
        self.hooks = [
            hooks.register_module_forward_pre_hook(self.enter_module),
            hooks.register_module_forward_hook(self.leave_module, always_call=True),
        ]
        # A forked DataLoader worker must not inherit unwritten records and write them twice.
        os.register_at_fork(before=self.writer.flush)
        super().__enter__()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        super().__exit__(*exc_info)
        for handle in self.hooks:
            handle.remove()

    def enter_module(self, module: torch.nn.Module, args: Any) -> None:
        with self.lock:
            self.origins.enter_module(module)

    def leave_module(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        self.origins.leave_module()

    # Digests -----------------------------------------------------------------------------

    def info(self, func: Any) -> OpInfo:
        op = self.ops.get(func)
        if op is None:
            op = self.ops[func] = op_info(func, self.writer.intern("name", str(func)))
        return op

    def named_arguments(
        self, op: OpInfo, args: Sequence, kwargs: dict
    ) -> Iterator[tuple[str, Any]]:
        for index, value in enumerate(args):
            yield (op.arg_names[index] if index < len(op.arg_names) else "", value)
        yield from kwargs.items()

    def digest_inputs(self, op: OpInfo, args: Sequence, kwargs: dict) -> tuple[bytes, int, bool]:
        """The digest of what the op reads, its flags, and whether any input requires grad."""
        digest = hashlib.blake2b(digest_size=DIGEST_SIZE)
        flags, needs_grad = 0, False
        for name, value in self.named_arguments(op, args, kwargs):
            if name in op.ignored:
                continue
            for item in items(value):
                if not isinstance(item, torch.Tensor):
                    update_with_value(digest, item)
                    continue
                needs_grad = needs_grad or item.requires_grad
                if self.uninitialised and storage_key(item) in self.uninitialised:
                    flags |= READ_UNINITIALISED  # garbage: left out of the digest
                    digest.update(b"uninitialised\0")
                else:
                    flags |= self.update_with(digest, item)
        return digest.digest(), flags, needs_grad

    def update_with(self, digest: Any, tensor: torch.Tensor, fresh: bool = True) -> int:
        """Feed one tensor's digest into an op's; UNHASHABLE where its bytes are unreadable."""
        found = self.cache.digest(tensor) if fresh else tensor_digest(tensor)
        if found is None:
            digest.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
            return UNHASHABLE
        digest.update(found)
        return 0

    def note_writes(self, op: OpInfo, args: Sequence, kwargs: dict, results: list) -> None:
        """Memory an op writes is no longer uninitialised; a fresh result at an address once
        uninitialised is new memory. Partial writes count down the bytes left, so memory filled
        piece by piece counts as written once every byte is (overlapping pieces end it early)."""
        for name, value in self.named_arguments(op, args, kwargs):
            if name in op.written:
                for item in items(value):
                    if isinstance(item, torch.Tensor):
                        self.note_written(item)
        for kind, item in results:
            if kind == "fresh":
                self.uninitialised.pop(storage_key(item), None)

    def note_written(self, tensor: torch.Tensor) -> None:
        key = storage_key(tensor)
        left = self.uninitialised.get(key)
        if left is not None:
            left -= tensor.numel() * tensor.element_size()
            if left > 0:
                self.uninitialised[key] = left
            else:
                del self.uninitialised[key]

    def results(self, op: OpInfo, out: Any) -> list[tuple[str, Any]]:
        """Each result with its kind (fresh, write or view), from the op's schema."""
        if op.returns_list:
            return [(op.return_kinds[0], item) for item in items(out)]
        values = out if len(op.return_kinds) > 1 else (out,)
        kinds = op.return_kinds or ("fresh",)
        return [(kinds[min(i, len(kinds) - 1)], v) for i, v in enumerate(values)]

    def digest_outputs(
        self, op: OpInfo, args: Sequence, kwargs: dict, out: Any
    ) -> tuple[bytes, int]:
        results = self.results(op, out)
        if op.is_empty:
            for _, item in results:
                if isinstance(item, torch.Tensor) and (key := storage_key(item)) is not None:
                    self.uninitialised[key] = item.untyped_storage().nbytes()
            return NO_DIGEST, OUTPUT_UNINITIALISED
        if self.uninitialised:
            self.note_writes(op, args, kwargs, results)
        digest = hashlib.blake2b(digest_size=DIGEST_SIZE)
        flags = 0
        for kind, item in results:
            if not isinstance(item, torch.Tensor):
                update_with_value(digest, item)
            elif kind == "view" and self.uninitialised and storage_key(item) in self.uninitialised:
                flags |= OUTPUT_UNINITIALISED  # a view of garbage, e.g. torch.empty(4).view(2, 2)
                digest.update(b"uninitialised\0")
            else:
                # An in-place result is the input it overwrote: its version counter moves only
                # once this op returns, so a cached digest would be the old contents'.
                flags |= self.update_with(digest, item, fresh=kind == "fresh")
        return digest.digest(), flags

    # The dispatch -------------------------------------------------------------------------

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if os.getpid() != self.pid:  # a forked worker's ops are not this run's
            return func(*args, **kwargs)
        if self.max_ops is not None and self.writer.count >= self.max_ops:
            self.skipped += 1
            return func(*args, **kwargs)
        node = torch._C._current_autograd_node()
        with self.lock:
            origins = self.origins
            if origins.pending:
                origins.tag_pending()
            op = self.info(func)
            if node is not None:
                where = origins.backward_origin(node)
            elif op.adopts_storage:
                where = None
            else:
                where = origins.forward_origin(sys._getframe(1))
            if where is None:  # bookkeeping, not computation (see trace_origin.REBUILD_CODES)
                self.unrecorded += 1
                return func(*args, **kwargs)
            inputs, input_flags, needs_grad = self.digest_inputs(op, args, kwargs)
        out = func(*args, **kwargs)
        with self.lock:
            outputs, output_flags = self.digest_outputs(op, args, kwargs, out)
            module, module_class, source, via, flags = where
            flags |= input_flags | output_flags | (RANDOM if op.is_random else 0)
            value = output_sum(out) if self.writer.values is not None else math.nan
            self.writer.write(
                op.name_id, module, module_class, source, via, flags, inputs, outputs, value=value
            )
            if node is None and needs_grad and torch.is_grad_enabled():
                origins.pending += [
                    (weakref.ref(item), (module, module_class, source))
                    for _, item in self.results(op, out)
                    if isinstance(item, torch.Tensor)
                ]
        return out


def output_sum(out: Any) -> float:
    """The float64 sum of an op's first floating-point output (NaN where there is none, or
    where its memory is unreadable): a size for a difference whose digests differ."""
    for item in items(out):
        if isinstance(item, torch.Tensor) and item.is_floating_point():
            try:
                return float(item.detach().sum(dtype=torch.float64))
            except Exception:  # meta, sparse, subclasses without a sum
                return math.nan
    return math.nan


def results_digests(outputs: dict[str, Output]) -> dict[str, str]:
    """A digest of each result the task returned, to compare the runs' final numbers too."""
    digests = {}
    for name, output in outputs.items():
        digest = hashlib.blake2b(digest_size=DIGEST_SIZE)
        digest.update(f"{output.array.dtype}{output.array.shape}".encode())
        digest.update(output.array.tobytes())
        digests[name] = digest.hexdigest()
    return digests


def trace_seed(
    run_seed: Callable[[int], dict[str, Output]],
    seed: int,
    prefix: Path,
    params_path: Path,
    ledger: Ledger | None = None,
    max_ops: int | None = None,
    values: bool = False,
) -> dict[str, Any]:
    """Run ``seed`` under the tracer, streaming its trace to ``prefix``'s files; the summary.

    A trace that could not be written (a full disk) fails the run with that cause, even where
    the task caught the error the tracer raised inside it.
    """
    files = trace_files(prefix)
    with TraceWriter(files, values_path(prefix) if values else None) as writer:
        if ledger is not None:
            ledger.count = lambda: writer.count  # its entries say before which op they came
        try:
            with OpTracer(writer, params_path, max_ops) as tracer:
                outputs = run_seed(seed)
        except Exception:
            if writer.error is not None:
                raise writer.error from None
            raise
        if writer.error is not None:
            raise writer.error
        writer.flush()
        count = writer.count
    size = files.ops.stat().st_size + files.strings.stat().st_size
    return {
        "ops": count,
        "unrecorded_ops": tracer.unrecorded,
        "untraced_ops": tracer.skipped,
        "bytes": size,
        "results": results_digests(outputs),
        "environment": bit_settings(),
    }


def bit_settings() -> dict[str, str]:
    """What shaped this run's bits besides code and params: the fingerprint (CPU, variables,
    versions) and what torch itself reports (capability, threads), so that ``--against`` can
    name the setting in which a committed trace and a run here differ."""
    from detflow.cpu import cpu_provenance
    from detflow.environment import fingerprint

    return {**fingerprint(), **cpu_provenance(), "torch_version": torch.__version__}


def main(argv: Sequence[str] | None = None) -> int:
    parser = stage_parser(__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS, help="params file")
    parser.add_argument("--seed", type=int, required=True, help="the torch_seed to run")
    parser.add_argument("--out", type=Path, required=True, help="prefix of the files to write")
    parser.add_argument("--alerts", action="store_true", help="collect deterministic-mode alerts")
    parser.add_argument("--max-ops", type=int, default=None, help="trace only the first N ops")
    parser.add_argument("--values", action="store_true", help="keep each op's output sum too")
    args = parser.parse_args(argv)

    params_path = args.params.absolute()
    params = load_params(params_path)
    if params.portable:
        from detflow.cpu import pin_portable_cpu_path

        # pinpoint has put portable mode's environment in place before torch loaded.
        pin_portable_cpu_path()
    if args.alerts:
        run_seed = seed_runner(params)
        summary: dict[str, Any] = {"alerts": run_with_alerts(run_seed, args.seed)}
    else:
        # Before the task's modules load, so that what they import by name is watched too.
        try:
            ledger = Ledger(ledger_path(args.out), count=lambda: 0)
        except OSError as error:
            raise write_failure(ledger_path(args.out), error) from error
        ledger.install()
        try:
            run_seed = seed_runner(params)  # imports and checks outside the trace, as trials do
            summary = trace_seed(
                run_seed, args.seed, args.out, params_path, ledger, args.max_ops, args.values
            )
        finally:
            ledger.close()
    summary_path = trace_files(args.out).summary
    try:
        write_text(summary_path, json.dumps(summary) + "\n")
    except OSError as error:
        raise write_failure(summary_path, error) from error
    return 0


if __name__ == "__main__":
    run_main(main)
