"""Parts of DECTRIS master-file frames for the ``files`` source (``layout = "master"``).

A frame is read either as its bitshuffle-LZ4 chunk, copied undecoded into the slot
(:class:`RawChunk`, ``read_direct_chunk``: the workers decompress it), or decoded by HDF5
(:class:`DecodedFrame`). :class:`MasterFrames` maps a frame number to its data file.
"""

from __future__ import annotations

import numpy as np

from native_kernels.master import MasterFile


def chunk_bound(shape: tuple[int, ...], dtype: str) -> int:
    """Most bytes a bitshuffle-LZ4 chunk of one frame can take (LZ4's bound, block headers)."""
    nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    return nbytes + nbytes // 128 + 1024


class RawChunk:
    """One frame's bitshuffle-LZ4 chunk, copied undecoded into the slot (``read_direct_chunk``).

    The part is ``uint8`` bytes in the HDF5 filter's framing (12-byte header, then blocks):
    the workers decode it, the dispatcher only copies.
    """

    __slots__ = ("ds", "index", "nbytes", "dtype", "shape")

    def __init__(self, ds, index: int) -> None:
        self.ds, self.index = ds, index
        info = ds.id.get_chunk_info_by_coord((index, 0, 0))
        self.nbytes = int(info.size)
        self.dtype = "|u1"
        self.shape = (self.nbytes,)

    def read_into(self, dest: np.ndarray) -> None:
        self.ds.id.read_direct_chunk((self.index, 0, 0), out=dest)


class DecodedFrame:
    """One frame of a dataset read straight into the slot: an HDF5 dataset decoded by its
    filters (``read_direct``), or an array (a memory-mapped raw file: copied).

    The ``files`` source reads its ``modules`` and ``frames`` layouts with it too.
    """

    __slots__ = ("ds", "index", "nbytes", "dtype", "shape")

    def __init__(self, ds, index: int) -> None:
        self.ds, self.index = ds, index
        self.shape = tuple(ds.shape[1:])
        self.dtype = np.dtype(ds.dtype).str
        self.nbytes = int(np.prod(self.shape, dtype=np.int64)) * np.dtype(ds.dtype).itemsize

    def read_into(self, dest: np.ndarray) -> None:
        out = dest.view(self.dtype).reshape(self.shape)
        if isinstance(self.ds, np.ndarray):
            out[...] = self.ds[self.index]
        else:
            self.ds.read_direct(out, np.s_[self.index])


class MasterFrames:
    """The frames of one master file, across its data files, as parts for messages.

    Parameters
    ----------
    master : MasterFile
    raw_chunks : bool
        Hand bitshuffle-LZ4 chunks over undecoded (when every data file allows it).
    """

    def __init__(self, master: MasterFile, raw_chunks: bool) -> None:
        import h5py

        self.master = master
        self.raw = raw_chunks and all(link.bslz4_chunks for link in master.links)
        if not self.raw:
            import hdf5plugin  # noqa: F401 - registers the bitshuffle filter with HDF5
        self._files = [h5py.File(link.file, "r") for link in master.links]
        self._dsets = [f[link.dataset] for f, link in zip(self._files, master.links, strict=True)]
        self._starts = np.cumsum([0] + [link.frames for link in master.links])
        self.shape = (master.frames, *master.shape)

    def part(self, i: int) -> RawChunk | DecodedFrame:
        k = int(np.searchsorted(self._starts, i, side="right")) - 1
        ds, local = self._dsets[k], i - int(self._starts[k])
        return RawChunk(ds, local) if self.raw else DecodedFrame(ds, local)

    def close(self) -> None:
        for f in self._files:
            f.close()
        self._files = []
