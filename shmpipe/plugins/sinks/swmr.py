"""Opening HDF5 files written in SWMR mode, including those whose writer was killed.

A file opened for (SWMR) writing carries a flag in its superblock until it is closed; HDF5
then refuses every ordinary open of a file whose writer died ("file is already open for
write (may use <h5clear file> to clear file consistency flags)"). Readers can still open it
in SWMR-read mode; a writer resuming it first clears the flag as ``h5clear -s`` does.
"""

from __future__ import annotations

import ctypes
import logging
from functools import cache

import h5py

log = logging.getLogger("shmpipe.publisher.hdf5")

_STILL_OPEN = "already open for write"


def open_read(path: str) -> h5py.File:
    """Open a results file for reading, whether or not its writer is alive or closed it."""
    try:
        return h5py.File(path, "r", swmr=True)
    except OSError:
        # A file not written in the SWMR format (an older shmpipe) opens the ordinary way.
        return h5py.File(path, "r")


def open_write(path: str) -> h5py.File:
    """Open an existing results file for appending, clearing a dead writer's open flag."""
    try:
        return h5py.File(path, "a", libver="latest")
    except OSError as exc:
        if _STILL_OPEN not in str(exc):
            raise
    clear_open_flag(path)
    log.warning(
        "%s: its writer did not close it (killed?); resuming after its committed rows", path
    )
    return h5py.File(path, "a", libver="latest")


@cache
def _libhdf5() -> ctypes.CDLL:
    # The library h5py itself loaded: the one whose property list ids we pass.
    with open("/proc/self/maps") as maps:
        paths = {line.split()[-1] for line in maps if "/libhdf5" in line and "_hl" not in line}
    if not paths:
        raise OSError("cannot find the HDF5 library h5py uses (needed to clear the open flag)")
    lib = ctypes.CDLL(sorted(paths)[0])
    lib.H5Pset.argtypes = [ctypes.c_int64, ctypes.c_char_p, ctypes.c_void_p]
    lib.H5Pset.restype = ctypes.c_int
    return lib


def clear_open_flag(path: str) -> None:
    """Clear the superblock's "open for write" flags of ``path`` (what ``h5clear -s`` does).

    Only for a file whose writer is known to be dead: the caller holds the run's output.
    """
    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    fapl.set_libver_bounds(h5py.h5f.LIBVER_LATEST, h5py.h5f.LIBVER_LATEST)
    # The library's own property "clear_status_flags", set by the h5clear tool itself.
    flag = ctypes.c_bool(True)
    if _libhdf5().H5Pset(fapl.id, b"clear_status_flags", ctypes.byref(flag)) < 0:
        raise OSError(f"{path}: cannot clear the open-for-write flag (run h5clear -s {path})")
    h5py.h5f.open(path.encode(), h5py.h5f.ACC_RDWR, fapl=fapl).close()
