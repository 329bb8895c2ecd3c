"""netCDF artifacts: written atomically, read back with the dtypes they were written with."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import xarray as xr

from detflow.cli import DetflowError, one_line

# netCDF has no float16; such variables travel as (exactly representable) float32.
STORED_DTYPE_ATTR = "detflow_dtype"


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
        yield Path(temporary)
        with open(temporary, "rb") as written:
            os.fsync(written.fileno())
        os.replace(temporary, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)


def write_text(path: Path, text: str) -> None:
    """Atomically replace ``path`` with ``text``."""
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


def write_dataset(dataset: xr.Dataset, path: Path) -> None:
    """Atomically write ``dataset`` as netCDF4.

    The bytes depend only on the dataset and the library versions, so equal datasets give
    equal files and DVC's md5s can be compared.
    """
    encodable = dataset.copy()
    for name, variable in dataset.data_vars.items():
        if variable.dtype == np.float16:
            encodable[name] = variable.astype(np.float32)
            encodable[name].attrs[STORED_DTYPE_ATTR] = "float16"
    with atomic_path(path) as temporary:
        encodable.to_netcdf(temporary, engine="netcdf4", format="NETCDF4")


def read_dataset(path: Path) -> xr.Dataset:
    """Load a netCDF artifact fully into memory (so the file is closed at once)."""
    if not path.exists():
        raise DetflowError(f"{path} is missing: run `dvc repro` to produce it")
    try:
        dataset = xr.load_dataset(path, engine="netcdf4")
    except Exception as error:  # netCDF4 raises OSError, ValueError, RuntimeError, ...
        raise DetflowError(
            f"{path} is not a readable netCDF file ({one_line(error)}): "
            f"delete it and run `dvc repro` to rebuild it"
        ) from error
    for name, variable in dataset.data_vars.items():
        stored_as = variable.attrs.get(STORED_DTYPE_ATTR)
        if stored_as is not None:
            dataset[name] = variable.astype(stored_as)
            del dataset[name].attrs[STORED_DTYPE_ATTR]
    return dataset
