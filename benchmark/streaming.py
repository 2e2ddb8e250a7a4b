"""Read-only views that stream a split's slices from the prepared-case cache (design §3).

A :class:`StreamedArray` stands where a :class:`~lesionbench.method.SliceSet` would hold a tensor: ``len``,
``shape``, ``dtype`` and indexing (int, slice, list, numpy array, LongTensor or bool mask, optionally followed
by more indices as a tuple) work; ``view[index]`` gathers those slices from the mapped case files into a new
float32 (images) or bool (brain masks) tensor, padded back from each case's brain box to the full size.

What a view holds: which source and which slice each row is (integer arrays), the shape, and an opaque
handle. The files themselves (path, size, offsets) live in this module's registry, keyed by the handle's
ids, so no path, adapter or lesion mask is reachable from a view; each gather maps only the image and
brain-mask bytes of a file, checks its size first, and unmaps it again (resident memory stays one batch).
Views refuse to be pickled: they stream from this process's cache files.
"""

from __future__ import annotations

import itertools
import mmap
import os
import threading
import weakref

import numpy as np
import torch

_SOURCES: dict[int, dict] = {}  # id -> what StoredCase.stream_source gave
_LOCK = threading.Lock()
_IDS = itertools.count(1)


class StreamError(RuntimeError):
    """A cache file changed under a streaming view (truncated, replaced or removed)."""


class _Handle:
    """Keeps a set of registry entries alive; they are dropped when the last view holding it goes."""

    __slots__ = ("ids", "__weakref__")

    def __init__(self, ids: tuple[int, ...]):
        self.ids = ids
        weakref.finalize(self, _drop, ids)

    def __reduce_ex__(self, protocol):
        raise TypeError(_NO_PICKLE)


def _drop(ids):
    with _LOCK:
        for i in ids:
            _SOURCES.pop(i, None)


_NO_PICKLE = ("a streamed SliceSet cannot be pickled or copied: it reads this process's prepared-case cache; "
              "index it (set.images[index]) to get tensors")


def register(sources: list[dict]) -> _Handle:
    """Register the mappable parts of some case files; returns the handle that keeps them registered."""
    with _LOCK:
        ids = tuple(next(_IDS) for _ in sources)
        for i, s in zip(ids, sources):
            _SOURCES[i] = s
    return _Handle(ids)


def _map(src: dict) -> mmap.mmap:
    """Map the first ``visible`` bytes (images and brain masks) of a source, after checking its size."""
    try:
        fd = os.open(src["path"], os.O_RDONLY)
    except OSError as exc:
        raise StreamError(f"a cache file of this set is gone ({exc.strerror}); prepare the data again") from None
    try:
        size = os.fstat(fd).st_size
        if size != src["size"]:
            raise StreamError(f"a cache file of this set changed size ({size} bytes, {src['size']} expected); "
                              "prepare the data again")
        return mmap.mmap(fd, src["visible"], prot=mmap.PROT_READ) if src["visible"] else None
    finally:
        os.close(fd)


class StreamedArray:
    """Rows of a split (slices) streamed from case files: images ``[N, C, S, S]`` float32 or brain masks
    ``[N, S, S]`` bool."""

    __slots__ = ("_handle", "_source", "_slice", "_kind", "_shape")

    def __init__(self, handle: _Handle, source: np.ndarray, slice_: np.ndarray, kind: str, row_shape: tuple[int, ...]):
        if kind not in ("image", "brain"):
            raise ValueError(kind)
        self._handle, self._kind = handle, kind
        self._source = np.asarray(source, np.int32)  # index into handle.ids, per row
        self._slice = np.asarray(slice_, np.int32)  # axial slice in its case's full grid, per row
        self._shape = torch.Size((len(self._source), *row_shape))

    # -- what a tensor offers --------------------------------------------------------------------
    @property
    def shape(self) -> torch.Size:
        return self._shape

    def size(self, dim: int | None = None):
        return self._shape if dim is None else self._shape[dim]

    @property
    def ndim(self) -> int:
        return len(self._shape)

    def dim(self) -> int:
        return len(self._shape)

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32 if self._kind == "image" else torch.bool

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def __len__(self) -> int:
        return self._shape[0]

    def __repr__(self) -> str:
        return f"StreamedArray({self._kind}, shape={tuple(self._shape)}, dtype={self.dtype})"

    def __reduce_ex__(self, protocol):
        raise TypeError(_NO_PICKLE)

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    # -- views and gathers ---------------------------------------------------------------------
    def _rows(self, index) -> tuple[np.ndarray, bool]:
        """Row positions for ``index``, and whether the row axis is dropped (an int index)."""
        n = len(self)
        if isinstance(index, (int, np.integer)) or (isinstance(index, torch.Tensor) and index.ndim == 0 and not index.is_floating_point()):
            i = int(index)
            if not -n <= i < n:
                raise IndexError(f"index {i} is out of bounds for a set of {n} slices")
            return np.array([i % n]), True
        if isinstance(index, slice):
            return np.arange(n)[index], False
        if isinstance(index, torch.Tensor):
            index = index.detach().cpu().numpy()
        arr = np.asarray(index)
        if arr.dtype == bool:
            if arr.shape != (n,):
                raise IndexError(f"a boolean index of shape {arr.shape} for a set of {n} slices")
            return np.flatnonzero(arr), False
        if arr.size == 0:
            return np.zeros(0, np.int64), False
        if not np.issubdtype(arr.dtype, np.integer) or arr.ndim != 1:
            raise IndexError(f"index a streamed set with an int, a slice, or a 1-d integer or boolean index, not {arr.dtype} {arr.shape}")
        if arr.min() < -n or arr.max() >= n:
            raise IndexError(f"index out of bounds for a set of {n} slices")
        return arr.astype(np.int64) % n, False

    def remap(self, index) -> "StreamedArray":
        """A view of some rows (no data read or copied)."""
        rows, _ = self._rows(index)
        return StreamedArray(self._handle, self._source[rows], self._slice[rows], self._kind, tuple(self._shape[1:]))

    def __getitem__(self, index) -> torch.Tensor:
        rest = ()
        if isinstance(index, tuple):
            index, rest = (index[0] if index else slice(None)), index[1:]
        rows, drop = self._rows(index)
        out = self._gather(rows)
        if drop:
            out = out[0]
        return out[(slice(None),) * (0 if drop else 1) + rest] if rest else out

    def _gather(self, rows: np.ndarray) -> torch.Tensor:
        shape = (len(rows), *self._shape[1:])
        out = np.zeros(shape, np.float32 if self._kind == "image" else bool)
        sources, slices = self._source[rows], self._slice[rows]
        with _LOCK:
            entries = {int(s): _SOURCES.get(self._handle.ids[s]) for s in np.unique(sources)}
        for s, src in entries.items():
            if src is None:
                raise StreamError("this streamed set's cache files were released")
            mine = np.flatnonzero(sources == s)
            z0, z1, y0, y1, x0, x1 = src["bbox"]
            z = slices[mine]
            inside = (z >= z0) & (z < z1)
            mine, z = mine[inside], z[inside] - z0
            if not len(mine):
                continue  # slices without brain: all zero
            mm = _map(src)
            try:
                out[mine, ..., y0:y1, x0:x1] = self._read(mm, src, z, x1 - x0)
            finally:
                mm.close()  # the arrays over it are gone with _read's frame
        return torch.from_numpy(out)

    def _read(self, mm: mmap.mmap, src: dict, z: np.ndarray, width: int) -> np.ndarray:
        """Slices ``z`` (box coordinates) of one mapped case, copied out of the mapping."""
        if self._kind == "image":
            offset, dtype, shape = src["image"]
            return np.frombuffer(mm, np.dtype(dtype), int(np.prod(shape)), offset).reshape(shape)[z]
        offset, shape = src["brain"]
        bits = np.frombuffer(mm, np.uint8, int(np.prod(shape)), offset).reshape(shape)[z]
        return np.unpackbits(bits, axis=-1, count=width).astype(bool)


def in_memory(slice_set):
    """A SliceSet with its streamed images and brain masks copied into tensors: for scripts and tests that index
    a small split whole. Methods never need it (and on a full-size data set it needs the whole split in RAM)."""
    import dataclasses

    return dataclasses.replace(slice_set, images=slice_set.images[:], brain=slice_set.brain[:])
