"""A ledger of what a traced run took from outside torch: draws from NumPy's global RNG and
Python's ``random`` (with a digest of the generator's state before each draw), files the
user's code opened for reading (with a digest of their contents), and the process's string
hash seed. When an op's inputs already differed, comparing two runs' ledgers names the source
and the user's line that drew or read it, which torch's ops alone cannot tell.

Each entry is one JSON line, flushed as it is written: ``op`` is the number of ops traced
before it, ``kind`` one of ``numpy``, ``random``, ``file``, ``hash``, ``what`` the function or
file, ``source`` the user's line, ``digest`` the state or contents.
"""

from __future__ import annotations

import builtins
import functools
import hashlib
import io
import json
import os
import random
import stat
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

from detflow.trace_format import ledger_path  # noqa: F401 (trace's name for it)
from detflow.trace_origin import USER, FrameKinds, display_path

# Python's module-level random functions: bound methods of one hidden Random instance.
RANDOM_FUNCTIONS = (
    "random",
    "uniform",
    "triangular",
    "randint",
    "choice",
    "randrange",
    "sample",
    "shuffle",
    "choices",
    "normalvariate",
    "lognormvariate",
    "expovariate",
    "vonmisesvariate",
    "gammavariate",
    "gauss",
    "betavariate",
    "binomialvariate",
    "paretovariate",
    "weibullvariate",
    "getrandbits",
    "randbytes",
)
# Files larger than this are known by size and modification time, not read twice.
FILE_DIGEST_BYTES = 64 << 20


def state_digest(*parts: Any) -> str:
    digest = hashlib.blake2b(digest_size=8)
    for part in parts:
        digest.update(part.tobytes() if isinstance(part, np.ndarray) else repr(part).encode())
    return digest.hexdigest()


def numpy_state() -> str:
    name, keys, position, has_gauss, gauss = np.random.get_state(legacy=True)
    return state_digest(name, keys, position, has_gauss, gauss)


def random_state() -> str:
    return state_digest(random.getstate())


def file_digest(path: str) -> str | None:
    """The contents' digest of a regular file, or None for anything else."""
    try:
        info = os.stat(path)
    except (OSError, ValueError):
        return None
    if not stat.S_ISREG(info.st_mode):
        return None
    if info.st_size > FILE_DIGEST_BYTES:
        return state_digest(info.st_size, info.st_mtime_ns)
    try:
        with builtins_open(path, "rb") as stream:
            return hashlib.blake2b(stream.read(), digest_size=8).hexdigest()
    except OSError:
        return None


builtins_open = builtins.open


class Ledger:
    """Wraps the draws and reads it watches; ``count`` gives the ops traced so far."""

    def __init__(self, path: str, count: Callable[[], int]) -> None:
        self.stream = builtins_open(path, "w", encoding="utf-8")
        self.count = count
        self.pid = os.getpid()
        self.kinds = FrameKinds()
        self.busy = False
        self.restore: list[tuple[Any, str, Any]] = []

    def user_line(self, frame: Any) -> str | None:
        while frame is not None:
            code = frame.f_code
            if self.kinds(code.co_filename) == USER:
                return f"{display_path(code.co_filename)}:{frame.f_lineno}"
            frame = frame.f_back
        return None

    def note(self, kind: str, what: str, digest: str, source: str | None) -> None:
        entry = {"op": self.count(), "kind": kind, "what": what, "source": source}
        self.stream.write(json.dumps({**entry, "digest": digest}) + "\n")
        self.stream.flush()

    def watching(self) -> bool:
        """Not in a forked worker, and not inside another watched call (shuffle calls
        _randbelow, np.load calls open)."""
        return not self.busy and os.getpid() == self.pid

    def wrap_draw(self, kind: str, name: str, function: Any, state: Callable[[], str]) -> Any:
        @functools.wraps(function)
        def draw(*args: Any, **kwargs: Any) -> Any:
            if not self.watching():
                return function(*args, **kwargs)
            self.busy = True
            try:
                source = self.user_line(sys._getframe(1))
                if source is not None:
                    self.note(kind, name, state(), source)
                return function(*args, **kwargs)
            finally:
                self.busy = False

        return draw

    def wrap_open(self, function: Any) -> Any:
        @functools.wraps(function)
        def opened(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
            reading = isinstance(mode, str) and not set(mode) & set("wax+")
            if reading and self.watching() and isinstance(file, str | os.PathLike):
                path = os.fspath(file)
                if not str(path).endswith((".py", ".pyc")):
                    self.busy = True
                    try:
                        source = self.user_line(sys._getframe(1))
                        digest = file_digest(path) if source is not None else None
                        if digest is not None:
                            self.note("file", display_path(str(path)), digest, source)
                    finally:
                        self.busy = False
            return function(file, mode, *args, **kwargs)

        return opened

    def install(self) -> None:
        """Wrap the module attributes users call (``np.random.rand``, ``random.shuffle``,
        ``open``): code that imports them by name afterwards gets the wrappers too."""
        self.note("hash", "str hash seed", state_digest(hash("detflow")), None)
        for name in RANDOM_FUNCTIONS:
            if hasattr(random, name):
                wrapped = self.wrap_draw(
                    "random", f"random.{name}", getattr(random, name), random_state
                )
                self.replace(random, name, wrapped)
        legacy = np.random.mtrand._rand
        for name in dir(np.random):
            value = getattr(np.random, name)
            if getattr(value, "__self__", None) is legacy and not name.startswith(
                ("seed", "get_", "set_")
            ):
                wrapped = self.wrap_draw("numpy", f"numpy.random.{name}", value, numpy_state)
                self.replace(np.random, name, wrapped)
        # pathlib and io call io.open, the same function as builtins.open.
        opened = self.wrap_open(builtins.open)
        self.replace(builtins, "open", opened)
        self.replace(io, "open", opened)

    def replace(self, owner: Any, name: str, value: Any) -> None:
        self.restore.append((owner, name, getattr(owner, name)))
        setattr(owner, name, value)

    def close(self) -> None:
        for owner, name, value in reversed(self.restore):
            setattr(owner, name, value)
        self.stream.close()
