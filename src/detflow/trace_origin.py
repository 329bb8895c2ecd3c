"""Where an op comes from: the module it ran in, the user's line that led to it, forward or
backward; and which ops are bookkeeping, not computation (rebuilding unpickled tensors)."""

from __future__ import annotations

import os
import re
import sys
import sysconfig
import threading
import weakref
from pathlib import Path
from typing import Any

import torch
import torch._utils
import torch.multiprocessing.reductions

import detflow
from detflow.run import bind
from detflow.trace_format import BACKWARD, OUTSIDE_FORWARD

# Where a backward op's forward origin travels: in the metadata of the autograd node.
ORIGIN_KEY = "detflow_origin"

# Which code a frame belongs to.
USER, TORCH, ENGINE, LIBRARY, STDLIB, TRACER = range(6)
# detflow's example tasks and pre-tasks are the user's code, the rest of detflow is the engine.
EXAMPLE_FILES = frozenset(
    os.path.join(os.path.dirname(detflow.__file__), name) for name in ("tasks.py", "seeding.py")
)
BIND_CODE = bind.__code__
# Unpickling a tensor (a DataLoader worker's batch, torch.load, a deep copy through pickle)
# runs empty + set_ onto the received storage. In the main process of a DataLoader with
# workers those ops run in the order the batches arrive, which the scheduler decides, while
# the task still receives them in order: the rebuild is not part of the computation. Ops under
# these functions are not recorded; the ops that then read the batch are, inputs and all.
REBUILD_CODES = frozenset(
    getattr(module, name).__code__
    for module in (torch._utils, torch.multiprocessing.reductions)
    for name in dir(module)
    if "rebuild" in name and hasattr(getattr(module, name), "__code__")
)
# The pin-memory thread copies batches in arrival order, on its own thread: likewise.
UNRECORDED_FILES = ("utils/data/_utils/pin_memory.py",)

Origin = tuple[int, int, int, int, int]  # module, module class, source, via, flags


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
        # The tracer's own files, the wrappers torch puts around __torch_dispatch__, and
        # torch's op plumbing (OpOverload calls, custom ops' autograd) say nothing about where
        # an op came from.
        torch_root = os.path.dirname(torch.__file__)
        plumbing = ("_dynamo/eval_frame.py", "_compile.py", "utils/_python_dispatch.py", "_ops.py")
        package = os.path.dirname(detflow.__file__)
        tracer = ("trace.py", "trace_origin.py", "trace_ledger.py")
        self.cache: dict[str, int] = {os.path.join(package, name): TRACER for name in tracer}
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


def class_path(cls: type) -> str:
    """``torch.nn.Linear`` for torch's public modules, else the defining module's path."""
    if getattr(torch.nn, cls.__name__, None) is cls:
        return f"torch.nn.{cls.__name__}"
    return f"{cls.__module__}.{cls.__qualname__}"


class Origins:
    """Module paths, source lines and phases of ops, as string ids of ``intern``."""

    def __init__(self, intern: Any, params_path: Path) -> None:
        self.intern = intern
        self.params_path = params_path
        self.local = threading.local()
        self.kinds = FrameKinds()
        self.module_names: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self.frame_ids: dict[tuple[str, Any, int], int] = {}
        self.config_lines: dict[str, int] = {}
        self.unrecorded_files = {
            os.path.join(os.path.dirname(torch.__file__), name) for name in UNRECORDED_FILES
        }
        # Outputs of the last forward op, whose autograd node exists only once the op returns.
        self.pending: list[tuple[weakref.ref, tuple[int, int, int]]] = []

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
        if root:  # name it and everything inside it, as named_modules() does
            for path, child in module.named_modules():
                if child not in self.module_names:
                    self.module_names[child] = (
                        self.intern("module", path or type(child).__name__),
                        self.intern("module_class", class_path(type(child))),
                    )
            return self.module_names[module]
        ids = (
            self.intern("module", type(module).__name__),
            self.intern("module_class", class_path(type(module))),
        )
        self.module_names[module] = ids
        return ids

    def enter_module(self, module: torch.nn.Module) -> None:
        stack = self.module_stack()
        stack.append(self.module_ids(module, root=not stack))

    def leave_module(self) -> None:
        stack = self.module_stack()
        if stack:
            stack.pop()

    # Source lines -------------------------------------------------------------------------

    def frame_id(self, kind: str, frame: Any) -> int:
        code, line = frame.f_code, frame.f_lineno
        key = (kind, code, line)
        number = self.frame_ids.get(key)
        if number is None:
            where = f"{display_path(code.co_filename)}:{line}"
            text = where if kind == "source" else f"{where} ({code.co_name})"
            number = self.frame_ids[key] = self.intern(kind, text)
        return number

    def config_source(self, key: str) -> int:
        """The line of params.yaml whose config was being built (the how-to's ``module``)."""
        line = self.config_lines.get(key)
        if line is None:
            text = self.params_path.read_text(encoding="utf-8", errors="replace")
            match = re.search(rf"^{re.escape(key)}\s*:", text, re.MULTILINE)
            line = self.config_lines[key] = text.count("\n", 0, match.start()) + 1 if match else 0
        where = display_path(str(self.params_path))
        return self.intern("source", f"{where}:{line}" if line else f"{where} ({key})")

    def forward_origin(self, frame: Any) -> Origin | None:
        """(module, module class, source, via, flags) of a forward op called from ``frame``,
        or None for an op that rebuilds an unpickled tensor (not recorded).

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
            if code in REBUILD_CODES or code.co_filename in self.unrecorded_files:
                return None
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

    def backward_origin(self, node: Any) -> Origin:
        """A backward op takes the module and source of the forward op that made its node."""
        via = self.intern("via", node.name())
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
        """Give the autograd nodes of the last forward op's outputs that op's origin."""
        for reference, origin in self.pending:
            tensor = reference()
            node = tensor.grad_fn if tensor is not None else None
            if node is not None and ORIGIN_KEY not in node.metadata:
                node.metadata[ORIGIN_KEY] = origin
        self.pending.clear()
