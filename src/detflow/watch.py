"""What a trial's task touched while it ran: the files it opened, and the environment variables
its own code read.

DVC knows only what dvc.yaml declares. A task that reads a data file, a helper, an environment
variable or a cache it wrote itself would keep its old numbers after any of them changed. So
while the seeds run, a ``sys.addaudithook`` hook notes every file opened through Python (the
``open`` audit event: ``open``, ``os.open``, imports, ``numpy.load``, ``torch.load`` ...), and a
wrapper of ``os.environ``'s lookup notes each variable that project code reads. The trial stage
then checks them against the stage's deps (``detflow.inputs``).

Not seen: files opened by C code without Python (netCDF, HDF5, a C++ data loader), ``mmap`` of an
already open file, processes started with ``spawn`` or ``forkserver`` (a forked DataLoader
worker is seen: it reports through a file inherited from the stage).
"""

from __future__ import annotations

import contextlib
import os
import site
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC

# System files that configure the machine, not the numbers; and pseudo files.
SYSTEM_ROOTS = ("/proc", "/sys", "/dev", "/run", "/etc", "/usr", "/lib", "/lib64", "/bin", "/sbin")

# Lookups that ask for one variable by name; a copy or an iteration of the whole environment
# (a subprocess's env) is not a read of each variable.
SINGLE_LOOKUPS = {"get", "__getitem__", "__contains__", "getenv"}
# Where those lookups run: os and collections.abc, from source or frozen into the interpreter.
LOOKUP_FILES = {
    os.__file__,
    sys.modules["_collections_abc"].__file__,
    "<frozen os>",
    "<frozen _collections_abc>",
}


@dataclass
class Observed:
    """What the task touched: absolute paths read and written, and variables read (name ->
    ``file:line`` of the first project code that read it)."""

    read: set[str] = field(default_factory=set)
    written: set[str] = field(default_factory=set)
    env: dict[str, str] = field(default_factory=dict)


def installation_roots() -> tuple[str, ...]:
    """Where Python, the standard library and installed packages live: never inputs."""
    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    with contextlib.suppress(AttributeError):
        roots.update(site.getsitepackages())
    with contextlib.suppress(AttributeError):
        roots.add(site.getusersitepackages())
    return tuple(sorted(os.path.realpath(root) + os.sep for root in roots if root))


class Watcher:
    """The audit hook and the environment wrapper, active between ``start`` and ``stop``.

    Audit hooks cannot be removed, so one watcher per process is installed once and switched
    on and off. In a forked child (a DataLoader worker) observations go, one line each, to a
    log file opened by the parent, which ``stop`` reads back.
    """

    def __init__(self) -> None:
        self.active = False
        self.busy = False  # the hook's own file writes must not observe themselves
        self.observed = Observed()
        self.project = ""
        self.skip: tuple[str, ...] = ()
        self.pid = os.getpid()
        self.log_fd: int | None = None
        self.log_path = ""
        # A plain function, not the bound method: the hook runs on every audit event (about 80
        # a seed of the how-to: builtins.id, object.__getattr__, ...), almost all not "open".
        hook = self.hook

        def on_event(event: str, args: tuple) -> None:
            if event == "open":
                hook(event, args)

        sys.addaudithook(on_event)
        self.patch_environ()

    def start(self, project: Path, skip: tuple[Path, ...] = ()) -> None:
        """Watch from now on; ``skip``: folders whose files are never inputs (detflow's own)."""
        self.observed = Observed()
        self.project = os.path.realpath(project) + os.sep
        self.skip = installation_roots() + tuple(os.path.realpath(p) + os.sep for p in skip)
        self.skip += tuple(root + os.sep for root in SYSTEM_ROOTS)
        self.pid = os.getpid()
        handle, self.log_path = tempfile.mkstemp(prefix="detflow-watch-", suffix=".log")
        self.log_fd = handle
        os.set_inheritable(handle, True)
        self.active = True

    def stop(self) -> Observed:
        """Stop watching; what this process and its forked children observed."""
        self.active = False
        if self.log_fd is not None:
            os.close(self.log_fd)
            self.log_fd = None
            with contextlib.suppress(OSError):
                self.merge_log(Path(self.log_path).read_text(encoding="utf-8", errors="replace"))
            with contextlib.suppress(OSError):
                os.unlink(self.log_path)
        return self.observed

    def merge_log(self, text: str) -> None:
        for line in text.splitlines():
            kind, _, rest = line.partition("\t")
            if kind == "r":
                self.observed.read.add(rest)
            elif kind == "w":
                self.observed.written.add(rest)
            elif kind == "e":
                name, _, where = rest.partition("\t")
                self.observed.env.setdefault(name, where)

    def note(self, kind: str, value: str, where: str = "") -> None:
        if os.getpid() == self.pid:
            if kind == "r":
                self.observed.read.add(value)
            elif kind == "w":
                self.observed.written.add(value)
            else:
                self.observed.env.setdefault(value, where)
            return
        if self.log_fd is not None:  # a forked child: tell the parent through the log
            line = f"{kind}\t{value}" + (f"\t{where}" if where else "") + "\n"
            self.busy = True
            try:
                os.write(self.log_fd, line.encode("utf-8", "replace"))
            except OSError:
                pass  # a child that cannot report must not fail the task
            finally:
                self.busy = False

    def hook(self, event: str, args: tuple) -> None:
        if not self.active or self.busy:
            return
        path, _mode, flags = args
        if isinstance(path, int):
            return  # an already open descriptor
        try:
            full = os.path.realpath(os.fsdecode(path))
        except (TypeError, ValueError):
            return
        if full.startswith(self.skip) or "__pycache__" in full:
            return
        writes = bool((flags or 0) & WRITE_FLAGS)
        self.note("w" if writes else "r", full)

    def patch_environ(self) -> None:
        """Note each variable project code looks up by name in ``os.environ`` (``get``,
        ``[]``, ``in``, ``os.getenv``), with the line that did."""
        environ_class = type(os.environ)
        lookup = environ_class.__getitem__
        watcher = self

        def getitem(environ, key):
            if watcher.active and not watcher.busy and environ is os.environ:
                where = watcher.reader(sys._getframe(1))
                if where:
                    watcher.note("e", str(key), where)
            return lookup(environ, key)

        environ_class.__getitem__ = getitem

    def reader(self, frame) -> str:
        """``file:line`` of the project code behind an environment lookup, or "" when the
        lookup is a bulk copy or comes from a library."""
        library = LOOKUP_FILES
        while frame is not None and frame.f_code.co_filename in library:
            if frame.f_code.co_name not in SINGLE_LOOKUPS:
                return ""
            frame = frame.f_back
        if frame is None or not os.path.isabs(frame.f_code.co_filename):
            return ""  # <frozen ...>, <string>: not a file of the project
        filename = os.path.realpath(frame.f_code.co_filename)
        if not filename.startswith(self.project) or filename.startswith(self.skip):
            return ""
        return f"{os.path.relpath(filename, self.project)}:{frame.f_lineno}"


WATCHER: Watcher | None = None


@contextlib.contextmanager
def watching(project: Path, skip: tuple[Path, ...] = ()) -> Iterator[Observed]:
    """Watch what runs inside the block; the yielded ``Observed`` fills in when it ends."""
    global WATCHER
    if WATCHER is None:
        WATCHER = Watcher()
    result = Observed()
    if WATCHER.active:  # an in-process launcher's job, inside the stage's own watch
        yield result
        return
    WATCHER.start(project, skip)
    try:
        yield result
    finally:
        observed = WATCHER.stop()
        result.read, result.written, result.env = observed.read, observed.written, observed.env
