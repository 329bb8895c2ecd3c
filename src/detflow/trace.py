"""Run one seed under a trace of every aten op, forward and backward: pinpoint's fresh process.

``python -m detflow.trace --params params.yaml --seed 0 --out <folder>/run1`` runs the seed as
the trial stage does (``detflow.run.seed_runner``) and streams one fixed-size record per op to
``run1.ops`` (the format is ``detflow.pinpoint``'s), the long strings once each to
``run1.strings``, and a summary to ``run1.json``. With ``--alerts`` it runs the seed under
torch's deterministic mode, warn-only, and writes only which ops torch flagged: that mode may pick
other kernels, so it never shares a process with a traced run.

This is the one detflow module that imports torch at import time; ``detflow.pinpoint`` runs it in
child processes and passes portable mode's environment to them before torch loads.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import sysconfig
import threading
import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import detflow
from detflow.artifact import write_text
from detflow.cli import run_main, stage_parser
from detflow.outputs import Output
from detflow.params import DEFAULT_PARAMS, load_params
from detflow.run import bind, seed_runner
from detflow.trace_format import (
    BACKWARD,
    OUTPUT_UNINITIALISED,
    OUTSIDE_FORWARD,
    RANDOM,
    READ_UNINITIALISED,
    RECORD,
    UNHASHABLE,
    TraceFiles,
    trace_files,
)

DIGEST_SIZE = 16
NO_DIGEST = bytes(DIGEST_SIZE)

# Ops whose outputs are uninitialised memory: they differ between processes and mean nothing.
EMPTY_PREFIXES = ("empty", "new_empty", "_empty")
# In-place ops whose result does not depend on what ``self`` held before (fills, RNG fills,
# copies): the old contents are not an input, so garbage there cannot count as a difference.
OVERWRITES_SELF = frozenset(
    {
        "fill_",
        "zero_",
        "copy_",
        "uniform_",
        "normal_",
        "random_",
        "bernoulli_",
        "exponential_",
        "geometric_",
        "log_normal_",
        "cauchy_",
    }
)
# Non-tensor arguments hashed by value; any other object (a Generator, say) only by its type,
# since its repr holds an address that differs in every process.
PLAIN_VALUES = (
    int,
    float,
    bool,
    complex,
    str,
    type(None),
    torch.dtype,
    torch.device,
    torch.layout,
    torch.memory_format,
)
# Where a backward op's forward origin travels: in the metadata of the autograd node.
ORIGIN_KEY = "detflow_origin"

# Which code a frame belongs to.
USER, TORCH, ENGINE, LIBRARY, STDLIB, TRACER = range(6)
# detflow's example tasks and pre-tasks are the user's code, the rest of detflow is the engine.
EXAMPLE_FILES = frozenset(
    os.path.join(os.path.dirname(detflow.__file__), name) for name in ("tasks.py", "seeding.py")
)
BIND_CODE = bind.__code__

# `put_ does not have a deterministic implementation, but you set ...`
ALERT = re.compile(r"^(?P<op>.+?) does not have a deterministic implementation")


def alert_op(message: str) -> str | None:
    """The op a deterministic-mode alert names, or None for any other warning.

    Examples
    --------
    >>> alert_op("put_ does not have a deterministic implementation, but you set 'torch...'")
    'put_'
    >>> alert_op("some other warning") is None
    True
    """
    first_line = message.strip().splitlines()[0] if message.strip() else ""
    match = ALERT.match(first_line)
    if match:
        return match["op"]
    if "uses CuBLAS" in message:  # cuBLAS's alert names no op, only the missing setting
        return "cuBLAS (CUBLAS_WORKSPACE_CONFIG unset)"
    return None


class FrameKinds:
    """Which code a file belongs to (the user's, torch, detflow's engine, another library, the
    standard library, this tracer), cached per file name: every op walks the stack."""

    def __init__(self) -> None:
        paths = sysconfig.get_paths()
        roots = [(os.path.dirname(torch.__file__), TORCH)]
        roots.append((os.path.dirname(detflow.__file__), ENGINE))
        roots += [(paths[key], LIBRARY) for key in ("purelib", "platlib")]
        roots += [(paths[key], STDLIB) for key in ("stdlib", "platstdlib")]
        # Longest first: a virtual environment's site-packages lies inside its platstdlib.
        self.roots = sorted(
            ((os.path.join(os.path.abspath(root), ""), kind) for root, kind in roots),
            key=lambda pair: -len(pair[0]),
        )
        # This file, the wrappers torch puts around __torch_dispatch__, and torch's op plumbing
        # (OpOverload calls, custom ops' autograd) say nothing about where an op came from.
        torch_root = os.path.dirname(torch.__file__)
        plumbing = ("_dynamo/eval_frame.py", "_compile.py", "utils/_python_dispatch.py", "_ops.py")
        self.cache: dict[str, int] = {__file__: TRACER}
        self.cache.update({os.path.join(torch_root, name): TRACER for name in plumbing})
        self.roots.insert(0, (os.path.join(torch_root, "_library", ""), TRACER))

    def __call__(self, filename: str) -> int:
        kind = self.cache.get(filename)
        if kind is None:
            kind = self.cache[filename] = self.classify(filename)
        return kind

    def classify(self, filename: str) -> int:
        if filename.startswith("<frozen"):
            return STDLIB
        path = os.path.abspath(filename)
        if path in EXAMPLE_FILES:
            return USER
        return next((kind for root, kind in self.roots if path.startswith(root)), USER)


def display_path(filename: str) -> str:
    """``filename`` as imported: relative to the longest ``sys.path`` entry that holds it
    (``torch/nn/init.py``, ``tasks_for_pinpoint.py``), else as it is."""
    path = os.path.abspath(filename)
    best = ""
    for entry in sys.path:
        root = os.path.join(os.path.abspath(entry or os.curdir), "")
        if path.startswith(root) and len(root) > len(best):
            best = root
    return path[len(best) :] if best else filename


def tensor_bytes(tensor: torch.Tensor) -> Any | None:
    """The raw bytes of a dense tensor's values (a numpy view), or None where there are none
    to read (sparse, meta, quantized, nested, or a subclass that will not give them)."""
    if tensor.layout != torch.strided or tensor.device.type == "meta":
        return None
    try:
        value = tensor.detach()
        if value.is_conj():
            value = value.resolve_conj()
        if value.is_neg():
            value = value.resolve_neg()
        # On a GPU this copies to the host and waits for the stream: the sync costs time but
        # hashes exact bytes, which is what a diagnosis needs.
        return value.contiguous().cpu().reshape(-1).view(torch.uint8).numpy()
    except Exception:  # quantized, nested, sub-byte dtypes, wrapper subclasses
        return None


def update_with_tensor(digest: Any, tensor: torch.Tensor) -> bool:
    """Feed dtype, shape and bytes into ``digest``; False where the bytes could not be read."""
    digest.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
    data = tensor_bytes(tensor)
    if data is None:
        return False
    digest.update(data)
    return True


def update_with_value(digest: Any, value: Any) -> None:
    text = repr(value) if isinstance(value, PLAIN_VALUES) else type(value).__name__
    digest.update(text.encode() + b"\0")


def items(value: Any) -> Iterable[Any]:
    """An argument or result as a flat sequence (a TensorList is several)."""
    return value if isinstance(value, list | tuple) else (value,)


def storage_key(tensor: torch.Tensor) -> int | None:
    """The address of a tensor's memory: views of one storage share it."""
    try:
        return tensor.untyped_storage().data_ptr() or None
    except Exception:  # sparse and other storage-less tensors
        return None


def class_path(cls: type) -> str:
    """``torch.nn.Linear`` for torch's public modules, else the defining module's path."""
    if getattr(torch.nn, cls.__name__, None) is cls:
        return f"torch.nn.{cls.__name__}"
    return f"{cls.__module__}.{cls.__qualname__}"


@dataclass(frozen=True)
class OpInfo:
    """What the tracer needs from an op's schema, worked out once per op."""

    name_id: int
    arg_names: tuple[str, ...]
    ignored: frozenset[str]  # arguments whose old contents the result never reads
    written: frozenset[str]  # arguments the op writes into
    return_kinds: tuple[str, ...]  # per result: "fresh", "write" or "view"
    returns_list: bool
    is_empty: bool
    is_random: bool


def is_list(schema_type: str) -> bool:
    """``List[Tensor]`` (or ``Tensor[]``, as older torch spells it)."""
    return schema_type.startswith("List[") or schema_type.endswith("[]")


def op_info(func: Any, name_id: int) -> OpInfo:
    schema = getattr(func, "_schema", None)
    if schema is None:  # not an OpOverload: hash every argument and result as they are
        return OpInfo(name_id, (), frozenset(), frozenset(), (), False, False, False)
    packet = func.overloadpacket.__name__
    arguments = schema.arguments
    written = {a.name for a in arguments if a.alias_info is not None and a.alias_info.is_write}
    outs = {a.name for a in arguments if a.kwarg_only and a.name in written}
    ignored = outs | ({arguments[0].name} if packet in OVERWRITES_SELF and arguments else set())
    kinds = []
    for result in schema.returns:
        if result.alias_info is None:
            kinds.append("fresh")
        else:
            kinds.append("write" if result.alias_info.is_write else "view")
    return OpInfo(
        name_id=name_id,
        arg_names=tuple(a.name for a in arguments if not a.kwarg_only),
        ignored=frozenset(ignored),
        written=frozenset(written),
        return_kinds=tuple(kinds),
        returns_list=len(schema.returns) == 1 and is_list(str(schema.returns[0].type)),
        is_empty=packet.startswith(EMPTY_PREFIXES),
        is_random=any("Generator" in str(a.type) for a in arguments),
    )


class TraceWriter:
    """Streams records to ``files.ops`` and each new string, once, to ``files.strings``.

    Strings are numbered per kind in order of first use (0 means none), so two runs that agree
    up to an op also agree on the numbers of the op names seen so far.
    """

    def __init__(self, files: TraceFiles) -> None:
        self.files = files
        self.ops = open(files.ops, "wb", buffering=1 << 20)  # noqa: SIM115 (closed in close())
        self.strings = open(files.strings, "w", encoding="utf-8")  # noqa: SIM115
        self.ids: dict[str, dict[str, int]] = {}
        self.count = 0

    def intern(self, kind: str, text: str) -> int:
        table = self.ids.setdefault(kind, {})
        number = table.get(text)
        if number is None:
            number = table[text] = len(table) + 1
            clean = " ".join(text.split())  # one line per string
            self.strings.write(f"{kind}\t{clean}\n")
        return number

    def write(self, *fields: Any) -> None:
        self.ops.write(RECORD.pack(*fields))
        self.count += 1

    def flush(self) -> None:
        if not self.ops.closed:
            self.ops.flush()
            self.strings.flush()

    def close(self) -> None:
        self.ops.close()
        self.strings.close()

    def __enter__(self) -> TraceWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class OpTracer(TorchDispatchMode):
    """Records every aten op this process runs: name, module, source line, phase, and digests
    of its inputs and outputs. It only reads tensors, so the numbers stay as they would be.

    Backward ops may run on autograd's own threads (one per GPU), hence the lock.
    """

    def __init__(self, writer: TraceWriter, params_path: Path) -> None:
        super().__init__()
        self.writer = writer
        self.params_path = params_path
        self.pid = os.getpid()
        self.lock = threading.RLock()
        self.local = threading.local()
        self.kinds = FrameKinds()
        self.ops: dict[Any, OpInfo] = {}
        self.module_names: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self.frame_ids: dict[tuple[str, Any, int], int] = {}
        self.config_lines: dict[str, int] = {}
        # Storage address -> bytes not yet written, for memory from empty-like ops.
        self.uninitialised: dict[int, int] = {}
        # Outputs of the last forward op, whose autograd node exists only once the op returns.
        self.pending: list[tuple[weakref.ref, tuple[int, int, int]]] = []
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

    # Module paths -------------------------------------------------------------------------

    def module_stack(self) -> list[tuple[int, int]]:
        stack = getattr(self.local, "modules", None)
        if stack is None:
            stack = self.local.modules = []
        return stack

    def module_ids(self, module: torch.nn.Module, root: bool) -> tuple[int, int]:
        ids = self.module_names.get(module)
        if ids is not None:
            return ids
        intern = self.writer.intern
        if root:  # name it and everything inside it, as named_modules() does
            for path, child in module.named_modules():
                if child not in self.module_names:
                    name = path or type(child).__name__
                    self.module_names[child] = (
                        intern("module", name),
                        intern("module_class", class_path(type(child))),
                    )
            return self.module_names[module]
        ids = (
            intern("module", type(module).__name__),
            intern("module_class", class_path(type(module))),
        )
        self.module_names[module] = ids
        return ids

    def enter_module(self, module: torch.nn.Module, args: Any) -> None:
        with self.lock:
            stack = self.module_stack()
            stack.append(self.module_ids(module, root=not stack))

    def leave_module(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        stack = self.module_stack()
        if stack:
            stack.pop()

    # Where an op comes from ---------------------------------------------------------------

    def frame_id(self, kind: str, frame: Any) -> int:
        code, line = frame.f_code, frame.f_lineno
        key = (kind, code, line)
        number = self.frame_ids.get(key)
        if number is None:
            where = f"{display_path(code.co_filename)}:{line}"
            text = where if kind == "source" else f"{where} ({code.co_name})"
            number = self.frame_ids[key] = self.writer.intern(kind, text)
        return number

    def config_source(self, key: str) -> int:
        """The line of params.yaml whose config was being built (the how-to's ``module``)."""
        line = self.config_lines.get(key)
        if line is None:
            text = self.params_path.read_text(encoding="utf-8", errors="replace")
            match = re.search(rf"^{re.escape(key)}\s*:", text, re.MULTILINE)
            line = self.config_lines[key] = text.count("\n", 0, match.start()) + 1 if match else 0
        where = display_path(str(self.params_path))
        return self.writer.intern("source", f"{where}:{line}" if line else f"{where} ({key})")

    def forward_origin(self, frame: Any) -> tuple[int, int, int, int, int]:
        """(module, module class, source, via, flags) of a forward op called from ``frame``.

        The source is the innermost frame of the user's code; an op in no user code at all (a
        config built by detflow, such as the how-to's Linear) is placed on that config's line
        of params.yaml. ``via`` is the innermost frame outside the standard library, when that
        is not the source (e.g. ``torch/nn/init.py:... (kaiming_uniform_)``).
        """
        stack = self.module_stack()
        module, module_class = stack[-1] if stack else (0, 0)
        flags = 0
        via = user = bind_frame = None
        while frame is not None:
            code = frame.f_code
            kind = self.kinds(code.co_filename)
            if via is None and kind not in (STDLIB, TRACER):
                via = frame
            if not module and kind != STDLIB and code.co_argcount and code.co_varnames[0] == "self":
                owner = frame.f_locals.get("self")
                if isinstance(owner, torch.nn.Module):  # building or initialising a module
                    module, module_class = self.module_ids(owner, root=False)
                    flags |= OUTSIDE_FORWARD
            if kind == USER:
                user = frame
                break
            if code is BIND_CODE:
                bind_frame = frame
            frame = frame.f_back
        if user is not None:
            source = self.frame_id("source", user)
        elif bind_frame is not None:
            source = self.config_source(str(bind_frame.f_locals.get("name")))
        else:
            source = self.frame_id("source", via) if via is not None else 0
        via_id = self.frame_id("via", via) if via is not None and via is not user else 0
        return module, module_class, source, via_id, flags

    def backward_origin(self, node: Any) -> tuple[int, int, int, int, int]:
        """A backward op takes the module and source of the forward op that made its node."""
        via = self.writer.intern("via", node.name())
        origin = node.metadata.get(ORIGIN_KEY)
        if origin is not None:
            return (*origin, via, BACKWARD)
        # A node no traced forward op made (AccumulateGrad, say): the line that called backward.
        return 0, 0, self.backward_caller(), via, BACKWARD

    def backward_caller(self) -> int:
        """The innermost user frame of the thread that runs backward: this one on a CPU, else
        the thread blocked in autograd's engine."""
        threads = sys._current_frames()
        mine = threads.pop(threading.get_ident(), None)
        for frame in (mine, *threads.values()):
            walker, user, in_engine = frame, None, frame is mine
            while walker is not None:
                code = walker.f_code
                in_engine = in_engine or code.co_name == "_engine_run_backward"
                if user is None and self.kinds(code.co_filename) == USER:
                    user = walker
                walker = walker.f_back
            if user is not None and in_engine:
                return self.frame_id("source", user)
        return 0

    def tag_pending(self) -> None:
        for reference, origin in self.pending:
            tensor = reference()
            node = tensor.grad_fn if tensor is not None else None
            if node is not None and ORIGIN_KEY not in node.metadata:
                node.metadata[ORIGIN_KEY] = origin
        self.pending.clear()

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
                elif not update_with_tensor(digest, item):
                    flags |= UNHASHABLE
        return digest.digest(), flags, needs_grad

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
            elif not update_with_tensor(digest, item):
                flags |= UNHASHABLE
        return digest.digest(), flags

    # The dispatch -------------------------------------------------------------------------

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if os.getpid() != self.pid:  # a forked worker's ops are not this run's
            return func(*args, **kwargs)
        node = torch._C._current_autograd_node()
        with self.lock:
            if self.pending:
                self.tag_pending()
            op = self.info(func)
            if node is None:
                where = self.forward_origin(sys._getframe(1))
            else:
                where = self.backward_origin(node)
            inputs, input_flags, needs_grad = self.digest_inputs(op, args, kwargs)
        out = func(*args, **kwargs)
        with self.lock:
            outputs, output_flags = self.digest_outputs(op, args, kwargs, out)
            module, module_class, source, via, flags = where
            flags |= input_flags | output_flags | (RANDOM if op.is_random else 0)
            self.writer.write(op.name_id, module, module_class, source, via, flags, inputs, outputs)
            if node is None and needs_grad and torch.is_grad_enabled():
                self.pending += [
                    (weakref.ref(item), (module, module_class, source))
                    for _, item in self.results(op, out)
                    if isinstance(item, torch.Tensor)
                ]
        return out


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
    run_seed: Callable[[int], dict[str, Output]], seed: int, prefix: Path, params_path: Path
) -> dict[str, Any]:
    """Run ``seed`` under the tracer, streaming its trace to ``prefix``'s files; the summary."""
    files = trace_files(prefix)
    with TraceWriter(files) as writer:
        with OpTracer(writer, params_path):
            outputs = run_seed(seed)
        writer.flush()
        count = writer.count
    size = files.ops.stat().st_size + files.strings.stat().st_size
    return {"ops": count, "bytes": size, "results": results_digests(outputs)}


def alerts(caught: Iterable[warnings.WarningMessage]) -> dict[str, dict[str, Any]]:
    """Deterministic-mode alerts by op: how many, and the line of the first."""
    found: dict[str, dict[str, Any]] = {}
    for warning in caught:
        op = alert_op(str(warning.message))
        if op is None:
            continue
        entry = found.setdefault(
            op, {"count": 0, "source": f"{display_path(warning.filename)}:{warning.lineno}"}
        )
        entry["count"] += 1
    return found


def run_with_alerts(run_seed: Callable[[int], Any], seed: int) -> dict[str, dict[str, Any]]:
    """Run ``seed`` with torch's deterministic mode on, warn-only, and collect its alerts.

    A pre-task may set the mode itself: seed_everything turns it on without warn_only (the
    first alert would raise) and a user may turn it off (nothing would alert), so within this
    process such calls are ignored; the mode is reset at the end.
    """
    setting = torch.use_deterministic_algorithms
    setting(True, warn_only=True)
    torch.use_deterministic_algorithms = lambda *args, **kwargs: None
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run_seed(seed)
    finally:
        torch.use_deterministic_algorithms = setting
        setting(False)
    return alerts(caught)


def main(argv: Sequence[str] | None = None) -> int:
    parser = stage_parser(__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS, help="params file")
    parser.add_argument("--seed", type=int, required=True, help="the torch_seed to run")
    parser.add_argument("--out", type=Path, required=True, help="prefix of the files to write")
    parser.add_argument("--alerts", action="store_true", help="collect deterministic-mode alerts")
    args = parser.parse_args(argv)

    params_path = args.params.absolute()
    params = load_params(params_path)
    if params.portable:
        from detflow.cpu import pin_portable_cpu_path

        # pinpoint has put portable mode's environment in place before torch loaded.
        pin_portable_cpu_path()
    run_seed = seed_runner(params)  # imports and checks outside the trace, as a trial does
    if args.alerts:
        summary: dict[str, Any] = {"alerts": run_with_alerts(run_seed, args.seed)}
    else:
        summary = trace_seed(run_seed, args.seed, args.out, params_path)
    write_text(trace_files(args.out).summary, json.dumps(summary) + "\n")
    return 0


if __name__ == "__main__":
    run_main(main)
