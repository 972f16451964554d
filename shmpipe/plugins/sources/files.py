"""FileSource: frames from HDF5 datasets and ``.npy`` files, read straight into slot memory.

Three layouts:

- ``modules``: the files are the modules of one detector (the DESY ``*_mNN.nxs`` files), all
  with the same number of frames; frame *i* is a message of one part per file.
- ``frames``: each file is a stream of assembled frames; frame *i* is a message of one part.
- ``master``: each file is a DECTRIS ``*_master.h5`` (a stream); its frames come from the data
  files it links. Bitshuffle-LZ4 chunks are copied undecoded (``raw_chunks``): the workers
  decompress them (the ``lambda_decompress`` kernel with ``master =``).

Frames lie along the first axis of each dataset.
"""

from __future__ import annotations

import glob
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from native_kernels.master import MasterFile, MasterFileError, read_master
from shmpipe.api.kernel import ArraySpec
from shmpipe.api.message import Message, StreamFinished, payload_bytes
from shmpipe.api.params import ParamError
from shmpipe.api.source import EndOfSource, Source, SourceConfigError, SourceLayout
from shmpipe.plugins.sources.dectris_master import DecodedFrame, MasterFrames, chunk_bound


@dataclass
class FilesParams:
    paths: list[str] = field(default_factory=list)
    """Files or glob patterns (HDF5/NeXus or .npy), sorted by name within each pattern."""
    dataset: str = "entry/data/data"
    """Path of the frame dataset inside each HDF5 file."""
    layout: Literal["modules", "frames", "master"] = "modules"
    """modules: one file per detector module; frames: each file a stream of whole frames;
    master: each file a DECTRIS *_master.h5 whose linked data files hold the frames."""
    raw_chunks: bool = True
    """master layout: copy bitshuffle-LZ4 chunks undecoded (workers decompress them)."""
    stream: str = ""
    """Stream name for the modules layout; empty: the first file's stem."""
    frames: int = 0
    """Stop after this many frames per stream; 0: all."""

    def validate(self) -> None:
        if not self.paths:
            raise ParamError("paths", "must name at least one file")


def _expand(patterns: list[str]) -> list[str]:
    files: list[str] = []
    for pat in patterns:
        hits = sorted(glob.glob(os.path.expanduser(pat)))
        if not hits:
            raise SourceConfigError(f"source.paths: no file matches {pat!r}")
        files += hits
    return files


def _open_dataset(path: str, dataset: str):
    if path.endswith(".npy"):
        return np.load(path, mmap_mode="r"), None
    import h5py

    f = h5py.File(path, "r")
    if dataset not in f:
        f.close()
        raise SourceConfigError(f"source.dataset: {path} has no dataset {dataset!r}")
    ds = f[dataset]
    if ds.ndim < 2:
        f.close()
        raise SourceConfigError(f"source.dataset: {path}:{dataset} has {ds.ndim} axis, need frames")
    return ds, f


def _master_layout(frames: list[MasterFrames]) -> SourceLayout:
    """Parts of master-file frames: undeclared (compressed chunks) or one decoded frame."""
    kinds = {(f.master.shape, f.master.dtype, f.raw) for f in frames}
    if len(kinds) != 1:
        raise SourceConfigError(
            f"source.paths: the master files differ in frame shape, type or chunking {kinds}"
        )
    shape, dtype, raw = kinds.pop()
    if raw:
        return SourceLayout(None, chunk_bound(shape, dtype) + 64)
    specs = [ArraySpec("frame", shape, dtype)]
    return SourceLayout(specs, payload_bytes(specs))


class FileSource(Source):
    """Frames from files (``[source] kind = "files"``)."""

    Params = FilesParams
    bounded_wait = True  # files never wait

    def __init__(self, params: FilesParams, run_name: str = "") -> None:
        super().__init__(params, run_name)
        self._files: list = []

    def _open_all(self) -> list:
        if self.params.layout == "master":
            masters = [self._read_master(p) for p in _expand(self.params.paths)]
            frames = [MasterFrames(m, self.params.raw_chunks) for m in masters]
            self._files = frames
            return frames
        handles = [_open_dataset(p, self.params.dataset) for p in _expand(self.params.paths)]
        self._files = [f for _, f in handles if f is not None]
        return [ds for ds, _ in handles]

    @staticmethod
    def _read_master(path: str) -> MasterFile:
        try:
            return read_master(path)
        except MasterFileError as exc:
            raise SourceConfigError(f"source.paths: {exc}") from exc

    def check(self) -> None:
        try:
            self.layout()
        finally:
            self.close()

    def layout(self) -> SourceLayout:
        dsets = self._open_all()
        try:
            if self.params.layout == "master":
                return _master_layout(dsets)
            if self.params.layout == "modules":
                n = {d.shape[0] for d in dsets}
                if len(n) != 1:
                    raise SourceConfigError(
                        f"source.paths: module files hold different frame counts {sorted(n)}"
                    )
                specs = [
                    ArraySpec(f"module_{i:02d}", d.shape[1:], d.dtype) for i, d in enumerate(dsets)
                ]
                return SourceLayout(specs, payload_bytes(specs))
            shapes = {(tuple(d.shape[1:]), np.dtype(d.dtype).str) for d in dsets}
            specs = None
            if len(shapes) == 1:
                shape, dt = shapes.pop()
                specs = [ArraySpec("frame", shape, dt)]
            biggest = max(int(np.prod(d.shape[1:])) * np.dtype(d.dtype).itemsize for d in dsets)
            return SourceLayout(specs, biggest + 64)
        finally:
            self.close()

    def open(self) -> None:
        self._dsets = self._open_all()
        self._paths = _expand(self.params.paths)
        self._stream_i, self._frame = 0, 0

    def _streams(self) -> list[tuple[str, list]]:
        if self.params.layout == "modules":
            return [(self.params.stream or Path(self._paths[0]).stem, self._dsets)]
        if self.params.layout == "master":
            return [
                (Path(p).stem.removesuffix("_master"), [d])
                for p, d in zip(self._paths, self._dsets, strict=True)
            ]
        return [(Path(p).stem, [d]) for p, d in zip(self._paths, self._dsets, strict=True)]

    def resume(self, delivered: int) -> None:
        """Skip the first ``delivered`` items: each stream's frames, then its marker."""
        self._stream_i, self._frame = 0, delivered
        for _, dsets in self._streams():
            total = self._total(dsets)
            if self._frame <= total:
                return
            self._frame -= total + 1
            self._stream_i += 1

    def _total(self, dsets: list) -> int:
        """Frames the stream of ``dsets`` gives (``frames`` caps it)."""
        total = dsets[0].shape[0]
        return min(total, self.params.frames) if self.params.frames else total

    def next(self, timeout: float) -> Message | StreamFinished | None:
        streams = self._streams()
        if self._stream_i >= len(streams):
            raise EndOfSource
        name, dsets = streams[self._stream_i]
        total = self._total(dsets)
        if self._frame >= total:
            self._stream_i += 1
            self._frame = 0
            nxt = streams[self._stream_i][0] if self._stream_i < len(streams) else ""
            return StreamFinished(name, nxt)
        i = self._frame
        self._frame += 1
        return Message(
            stream=name,
            message_id=i + 1,
            name=f"{name}/{i:06d}",
            parts=[d.part(i) if isinstance(d, MasterFrames) else DecodedFrame(d, i) for d in dsets],
            meta={"frame_index": i},
            timestamp=time.time(),
        )

    def close(self) -> None:
        for f in self._files:
            try:
                f.close()
            except Exception:  # noqa: BLE001 - closing a broken file must not mask the real error
                pass
        self._files = []
