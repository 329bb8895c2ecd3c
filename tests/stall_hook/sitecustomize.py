"""Test hook, active only where DETFLOW_TEST_STALL_DIR is set and this folder is on PYTHONPATH.

It makes netCDF writes stop half-way: the file being written is cut to half its size, the
writer's pid is left in the stall folder, and the process sleeps so a test can SIGKILL it
mid-write.
"""

import os

STALL_DIR = os.environ.get("DETFLOW_TEST_STALL_DIR")

if STALL_DIR:
    import time

    import xarray

    write_netcdf = xarray.Dataset.to_netcdf

    def stalled_to_netcdf(self, path=None, *args, **kwargs):
        write_netcdf(self, path, *args, **kwargs)
        size = os.path.getsize(path)
        with open(path, "r+b") as partial:
            partial.truncate(size // 2)
        marker = os.path.join(STALL_DIR, f"{os.getpid()}.pid")
        with open(marker + ".tmp", "w") as note:
            note.write(str(path))
        os.replace(marker + ".tmp", marker)
        time.sleep(600)

    xarray.Dataset.to_netcdf = stalled_to_netcdf
