"""netCDF artifacts: written atomically, read back with the dtypes they were written with."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from detflow.cli import DetflowError, one_line

if TYPE_CHECKING:
    import xarray as xr

# netCDF has no float16; such variables travel as (exactly representable) float32.
STORED_DTYPE_ATTR = "detflow_dtype"
# A nested result's keys (JSON), as ``detflow.outputs`` names them (kept in step there).
KEY_ATTR = "detflow_key"
# An index coordinate (0, 1, 2, ... of each axis a task returns) is compressed in chunks of
# this many values (1 MiB), and netCDF's cache holds a few chunks of each variable, not its
# default 64 MiB: streamed files are read and written in order, once.
COORDINATE_SLAB = 1 << 17
CHUNK_CACHE_BYTES = 4 << 20


def open_netcdf(path: Path, mode: str) -> Any:
    """A netCDF4 file with a small chunk cache, and values exactly as stored."""
    import netCDF4

    netCDF4.set_chunk_cache(CHUNK_CACHE_BYTES)
    nc = netCDF4.Dataset(path, mode, format="NETCDF4")
    # A value equal to netCDF's default fill is still a value, never a masked one.
    nc.set_auto_maskandscale(False)
    return nc


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place only if the block succeeds.

    A crash or kill leaves at most a hidden ``.*.tmp`` file (ignored by .dvcignore), never a
    partial file at ``path``, and never destroys the file already there.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        try:
            yield Path(temporary)
            with open(temporary, "rb") as written:
                os.fsync(written.fileno())
        except Exception as error:
            # netCDF's HDF layer reports a full disk as "NetCDF: HDF error", with no errno.
            if disk_full(path.parent, error):
                raise DetflowError(
                    f"no space left on the device that holds {path} ({one_line(error)}): "
                    f"free some space, then rerun"
                ) from error
            raise
        # mkstemp creates 0600; the output gets the mode any new file would (0644 under 022).
        os.chmod(temporary, 0o666 & ~current_umask())
        os.replace(temporary, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)


# Less free space than this after a failed write: the disk is why it failed.
NEARLY_FULL = 1 << 20


def disk_full(folder: Path, error: BaseException) -> bool:
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return True
    try:
        return shutil.disk_usage(folder).free < NEARLY_FULL
    except OSError:
        return False


def current_umask() -> int:
    """The process's umask (reading it means setting it, so set it straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_text(path: Path, text: str) -> None:
    """Atomically replace ``path`` with ``text``."""
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


def stored_form(array: np.ndarray) -> tuple[np.ndarray, dict[str, str]]:
    """What netCDF4 can hold, and the attrs that let ``read_dataset`` restore the dtype."""
    if array.dtype == np.float16:
        return array.astype(np.float32), {STORED_DTYPE_ATTR: "float16"}
    if array.dtype == np.bool_:
        return array.astype(np.int8), {"dtype": "bool"}  # xarray's own convention for bools
    return array, {}


def write_index_coordinate(nc: Any, dim: str, size: int) -> None:
    """0..size-1 as an int64 coordinate, as xarray gives every axis. Compressed: an arange
    squeezes to almost nothing, where raw it would add 8 bytes to each float32 value's 4."""
    variable = nc.createVariable(
        dim, np.int64, (dim,), zlib=True, shuffle=True, chunksizes=(min(size, COORDINATE_SLAB),)
    )
    for start in range(0, size, COORDINATE_SLAB):
        stop = min(start + COORDINATE_SLAB, size)
        variable[start:stop] = np.arange(start, stop, dtype=np.int64)


def write_dataset(dataset: xr.Dataset, path: Path) -> None:
    """Atomically write ``dataset`` as netCDF4.

    The bytes depend only on the dataset and the library versions, so equal datasets give
    equal files and DVC's md5s can be compared.
    """
    encodable = dataset.copy()
    for name, variable in dataset.data_vars.items():
        if variable.dtype == np.float16:
            stored, stored_attrs = stored_form(variable.values)
            encodable[name] = variable.copy(data=stored)
            encodable[name].attrs.update(stored_attrs)
    # What a read left in `encoding` (a bool's on-disk dtype, chunk sizes, the source path)
    # must not steer the write: the bytes depend on the data alone. xarray stores a bool as
    # int8 with the attr dtype=bool, as the trial file does.
    for variable in encodable.variables.values():
        variable.encoding = {}
    with atomic_path(path) as temporary:
        encodable.to_netcdf(temporary, engine="netcdf4", format="NETCDF4")


def read_dataset(path: Path) -> xr.Dataset:
    """Load a netCDF artifact fully into memory (so the file is closed at once)."""
    import xarray as xr

    if not path.exists():
        raise DetflowError(f"{path} is missing: run `dvc repro` to produce it")
    try:
        dataset = xr.load_dataset(path, engine="netcdf4")
    except Exception as error:  # netCDF4 raises OSError, ValueError, RuntimeError, ...
        raise DetflowError(
            f"{path} is not a readable netCDF file ({one_line(error)}): "
            f"delete it and run `dvc repro` to rebuild it"
        ) from error
    return restore_dtypes(dataset)


def restore_dtypes(dataset: xr.Dataset) -> xr.Dataset:
    """Undo ``stored_form``: float16 variables come back as float16."""
    for name, variable in dataset.data_vars.items():
        stored_as = variable.attrs.get(STORED_DTYPE_ATTR)
        if stored_as is not None:
            dataset[name] = variable.astype(stored_as)
            del dataset[name].attrs[STORED_DTYPE_ATTR]
    return dataset


def nest(values: Mapping[str, Any], keys: Mapping[str, tuple[str, ...]]) -> dict[str, Any]:
    """The mapping a task returned, from its flat names and each name's keys (``()`` or
    missing for a top-level key).

    Examples
    --------
    >>> nest({"loss": 1, "weights.conv1.weight": 2}, {"weights.conv1.weight": ("weights", "conv1.weight")})
    {'loss': 1, 'weights': {'conv1.weight': 2}}
    """
    tree: dict[str, Any] = {}
    for name, value in values.items():
        path = tuple(keys.get(name) or ()) or (name,)
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return tree


def read_nested(source: Path | xr.Dataset, **selection: Any) -> dict[str, Any]:
    """A trial file's or result's variables nested as the task returned them, each an
    ``xarray.DataArray``; ``selection`` (e.g. ``torch_seed=0, trial_id="a"``) picks with
    ``Dataset.sel``. ``as_tensors`` turns a branch into tensors, e.g. for ``load_state_dict``.

    Examples
    --------
    >>> import xarray as xr
    >>> ds = xr.Dataset({"w.fc.weight": ("torch_seed", [1.0, 2.0])}, coords={"torch_seed": [0, 1]})
    >>> ds["w.fc.weight"].attrs["detflow_key"] = '["w", "fc.weight"]'
    >>> float(read_nested(ds, torch_seed=1)["w"]["fc.weight"])
    2.0
    """
    dataset = read_dataset(Path(source)) if isinstance(source, str | os.PathLike) else source
    if selection:
        dataset = dataset.sel(**selection)
    values, keys = {}, {}
    for name, variable in dataset.data_vars.items():
        variable = variable.copy()
        stored = variable.attrs.pop(KEY_ATTR, None)
        keys[name] = tuple(json.loads(stored)) if stored else ()
        values[name] = variable
    return nest(values, keys)


def as_tensors(tree: Any) -> Any:
    """Each array in nested mappings as a torch tensor (bit for bit), nesting kept: what
    ``module.load_state_dict`` takes."""
    import torch

    if isinstance(tree, Mapping):
        return {key: as_tensors(child) for key, child in tree.items()}
    values = getattr(tree, "values", tree)
    return torch.from_numpy(np.array(values, copy=True))
