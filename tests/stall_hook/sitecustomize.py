"""Test hook, active only where DETFLOW_TEST_STALL_DIR is set and this folder is on PYTHONPATH.

It stops a netCDF write half-way: when a stage is about to rename its finished temporary
file (``.<name>.nc.<random>.tmp``) into place, the hook cuts that file to half its size,
leaves the writer's pid in the stall folder, and sleeps, so a test can SIGKILL the stage
with a partial file on disk.
"""

import os

STALL_DIR = os.environ.get("DETFLOW_TEST_STALL_DIR")

if STALL_DIR:
    import time

    rename_into_place = os.replace

    def stalled_replace(source, target, *args, **kwargs):
        name = os.path.basename(os.fspath(source))
        if name.startswith(".") and name.endswith(".tmp") and os.fspath(target).endswith(".nc"):
            with open(source, "r+b") as partial:
                partial.truncate(os.path.getsize(source) // 2)
            marker = os.path.join(STALL_DIR, f"{os.getpid()}.pid")
            with open(marker + ".part", "w") as note:
                note.write(os.fspath(source))
            rename_into_place(marker + ".part", marker)
            time.sleep(600)
        return rename_into_place(source, target, *args, **kwargs)

    os.replace = stalled_replace
