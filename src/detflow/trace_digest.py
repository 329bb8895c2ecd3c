"""Digests of what an op reads and writes, and what the tracer needs from an op's schema.

A digest must say whether two processes saw the same bytes, cheaply: a conv net's activations
are megabytes per op, and blake2b (about 1.4 GB/s here) cost more than the convolutions. So a
tensor's bytes are read as 64-bit words and summed with fixed odd weights, modulo 2**64, in two
lanes (NumPy, about 10 GB/s): any one changed word changes each lane (an odd weight is
invertible modulo 2**64), and unrelated changes collide with odds of about 2**-128. Only the
lanes, dtype and shape go through blake2b. The weights are fixed numbers, so every process and
machine computes the same digest for the same bytes.
"""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

DIGEST_SIZE = 16
NO_DIGEST = bytes(DIGEST_SIZE)

# Words per block of weights; longer tensors are summed block by block, each block's lanes
# then hashed in order, so reordered blocks differ too.
BLOCK_WORDS = 1 << 18
_generator = np.random.Generator(np.random.PCG64(20_260_101))  # never the user's global RNGs
WEIGHTS = _generator.integers(0, 2**63, size=(2, BLOCK_WORDS), dtype=np.uint64) * np.uint64(2)
WEIGHTS |= np.uint64(1)  # odd: invertible modulo 2**64
del _generator

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


def tensor_bytes(tensor: torch.Tensor) -> np.ndarray | None:
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
        if not value.is_contiguous():
            value = value.contiguous()
        if value.device.type != "cpu":
            # This copies to the host and waits for the stream: the sync costs time but
            # hashes exact bytes, which is what a diagnosis needs.
            value = value.cpu()
        return value.view(-1).view(torch.uint8).numpy()
    except Exception:  # quantized, nested, sub-byte dtypes, wrapper subclasses
        return None


def lanes(data: np.ndarray) -> bytes:
    """Two weighted sums of ``data``'s 64-bit words (and its tail bytes, as they are).

    Examples
    --------
    >>> a = np.zeros(24, np.uint8); b = a.copy(); b[9] = 1
    >>> lanes(a) == lanes(a.copy()), lanes(a) == lanes(b)
    (True, False)
    """
    whole = len(data) // 8 * 8
    words = data[:whole].view(np.uint64)
    parts = []
    for start in range(0, len(words), BLOCK_WORDS):
        block = words[start : start + BLOCK_WORDS]
        # Integer matmul wraps modulo 2**64 without a warning, and needs no temporary.
        parts.append((WEIGHTS[:, : len(block)] @ block).astype("<u8").tobytes())
    return b"".join(parts) + data[whole:].tobytes()


def tensor_digest(tensor: torch.Tensor) -> bytes | None:
    """One tensor's digest (dtype, shape, values), or None where its bytes are unreadable."""
    data = tensor_bytes(tensor)
    if data is None:
        return None
    digest = hashlib.blake2b(
        f"{tensor.dtype}{tuple(tensor.shape)}".encode(), digest_size=DIGEST_SIZE
    )
    # Small tensors straight through blake2b: below a few kB NumPy's call costs more.
    digest.update(data if len(data) <= SMALL_BYTES else lanes(data))
    return digest.digest()


# Tensors up to this size are hashed by blake2b alone.
SMALL_BYTES = 4 << 10
# Tensors at least this large keep their digest while unchanged (``DigestCache``).
CACHED_BYTES = 16 << 10


class DigestCache:
    """Digests of tensors, kept while each tensor lives and its version counter stands still.

    An op's input is most often an earlier op's output: its digest is known, and hashing the
    megabytes of a conv net's activations again would double the tracer's cost. Every in-place
    change through torch bumps the version counter (shared by views), so a changed tensor is
    hashed again. The counter moves only after the tracer has seen an in-place op, so that op's
    own result is always hashed afresh. Memory written behind torch's back (through a NumPy
    view) goes unseen by the counter; it is rare, and ops reading it still hash their outputs.
    """

    def __init__(self) -> None:
        self.known: dict[int, tuple[Any, int, bytes | None]] = {}

    def digest(self, tensor: torch.Tensor) -> bytes | None:
        try:
            version = tensor._version
        except RuntimeError:  # inference tensors keep no version counter
            return tensor_digest(tensor)
        key = id(tensor)
        entry = self.known.get(key)
        if entry is not None and entry[0]() is tensor and entry[1] == version:
            return entry[2]
        found = tensor_digest(tensor)
        if tensor.numel() * tensor.element_size() >= CACHED_BYTES:
            forget = self.known.pop
            reference = weakref.ref(tensor, lambda _, key=key: forget(key, None))
            self.known[key] = (reference, version, found)
        return found


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
    # ``set_`` onto a storage: it adopts memory (a deep copy's fresh storage, a worker's batch,
    # a loaded file) and computes nothing, so it is not recorded; what later ops read of that
    # memory is.
    adopts_storage: bool = False


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
        adopts_storage=packet == "set_" and any("Storage" in str(a.type) for a in arguments),
    )
