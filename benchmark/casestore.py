"""The prepared-case cache on disk (design §4): one file per case, laid out for memory mapping.

File layout (little endian)::

    b"LBCASE01" | uint64 n | n bytes of JSON header | zero padding to a multiple of 64 | arrays, each 64-aligned

The header gives the store dtype, the full shape ``[C, D, S, S]``, the case's brain bounding box
``[z0, z1, y0, y1, x0, x1]`` in the resampled grid, the file's total size and, per array, its offset (from the
start of the arrays), dtype and shape. Arrays, in this order:

- ``image``: ``[z1-z0, C, y1-y0, x1-x0]`` float16 or float32, slice-major (one slice is one contiguous run);
  zero outside the box, as everywhere outside the brain.
- ``brain``: ``[z1-z0, y1-y0, ceil((x1-x0)/8)]`` uint8, each row bit-packed (``np.packbits(axis=-1)``).
  ``image`` and ``brain`` end at ``visible``: the only bytes a streaming view maps.
- ``lesion``: as ``brain``; ``labels`` int8 ``[D]``; ``brain_voxels`` int32 ``[D]`` (per-slice brain counts);
  ``native_brain`` / ``native_lesion``: zlib-compressed ``np.packbits`` of the source-grid masks.

A reader checks the file size against the header before anything is read or mapped: a truncated or
overwritten file raises :class:`CorruptEntry` (the dataset sets it aside and prepares the case again).
"""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path

import numpy as np

from lesionbench.preprocessing import NativeMasks, PreparedCase

MAGIC = b"LBCASE01"
ALIGN = 64
SUFFIX = ".case"
STORE_DTYPES = ("float32", "float16")


class CorruptEntry(ValueError):
    """A cache file that cannot be read as a case (truncated, overwritten, not a case file)."""


def _align(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def brain_box(brain: np.ndarray) -> tuple[int, int, int, int, int, int]:
    """[z0, z1, y0, y1, x0, x1] of the brain voxels of a [D, S, S] mask (all zero when there are none)."""
    if not brain.any():
        return (0, 0, 0, 0, 0, 0)
    out = []
    for axis in range(3):
        idx = np.flatnonzero(brain.any(axis=tuple(a for a in range(3) if a != axis)))
        out += [int(idx[0]), int(idx[-1]) + 1]
    return tuple(out)


def write_case(path: Path, prepared: PreparedCase, dtype: str) -> None:
    """Write ``prepared`` to ``path`` atomically (a temp file per process, then a rename)."""
    if dtype not in STORE_DTYPES:
        raise ValueError(f"cache dtype {dtype!r}: give one of {STORE_DTYPES}")
    image = prepared.image
    c, d, s, s2 = image.shape
    z0, z1, y0, y1, x0, x1 = box = brain_box(prepared.brain)
    native = prepared.native
    arrays = {
        "image": image[:, z0:z1, y0:y1, x0:x1].transpose(1, 0, 2, 3).astype(dtype),
        "brain": np.packbits(prepared.brain[z0:z1, y0:y1, x0:x1], axis=-1),
        "lesion": np.packbits(prepared.lesion[z0:z1, y0:y1, x0:x1], axis=-1),
        "labels": prepared.labels.astype(np.int8),
        "brain_voxels": prepared.brain.sum(axis=(1, 2)).astype(np.int32),
    }
    if native is not None:
        arrays["native_brain"] = np.frombuffer(zlib.compress(np.ascontiguousarray(native.brain_bits).tobytes(), 1), np.uint8)
        arrays["native_lesion"] = np.frombuffer(zlib.compress(np.ascontiguousarray(native.lesion_bits).tobytes(), 1), np.uint8)
    table, offset = {}, 0
    for name, arr in arrays.items():
        table[name] = {"offset": offset, "dtype": arr.dtype.str, "shape": list(arr.shape)}
        offset = _align(offset + arr.nbytes)
        if name == "brain":
            visible = offset
    header = {"format": 1, "dtype": dtype, "shape": [c, d, s, s2], "bbox": list(box), "arrays": table,
              "native_shape": list(native.shape) if native is not None else None}
    # the total size depends on the header's length, which holds it: fix the field's width first
    header["size"] = header["visible"] = 10**20  # a placeholder at least as wide as the final values
    start = _align(16 + len(json.dumps(header)))
    header["size"], header["visible"] = start + offset, start + visible
    text = json.dumps(header).encode()
    text += b" " * (start - 16 - len(text))  # pad the JSON itself (whitespace) up to the arrays
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # workers sharing the cache write their own temp file
    with open(tmp, "wb") as f:
        f.write(MAGIC + len(text).to_bytes(8, "little") + text)
        for name, arr in arrays.items():
            f.write(np.ascontiguousarray(arr).data)
            f.write(b"\0" * (_align(arr.nbytes) - arr.nbytes))
    os.replace(tmp, path)


def read_header(f, path) -> dict:
    """Parse and check the header of an open case file: magic, JSON, total size and array extents."""
    size = os.fstat(f.fileno()).st_size
    head = f.read(16)
    if len(head) < 16 or head[:8] != MAGIC:
        raise CorruptEntry(f"not a case file or truncated ({size} bytes)")
    n = int.from_bytes(head[8:16], "little")
    if 16 + n > size:
        raise CorruptEntry(f"truncated: header of {n} bytes in a file of {size}")
    try:
        header = json.loads(f.read(n))
        start = 16 + n
        if header["size"] != size:
            raise CorruptEntry(f"truncated or overwritten: {size} bytes, the header says {header['size']}")
        for name, a in header["arrays"].items():
            a["offset"] += start
            nbytes = int(np.prod(a["shape"], dtype=np.int64)) * np.dtype(a["dtype"]).itemsize
            if a["offset"] + nbytes > size:
                raise CorruptEntry(f"array {name} runs past the end of the file")
    except CorruptEntry:
        raise
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptEntry(f"unreadable header ({type(exc).__name__}: {exc})") from None
    return header


class StoredCase:
    """A prepared case read on demand from its cache file (harness-internal: gives the lesion mask).

    Same attributes as :class:`PreparedCase`; ``image``, ``brain``, ``lesion`` and ``native`` are read from the
    file at each access (full size, padded from the brain box), so a list of cases holds no voxels.
    """

    def __init__(self, path: Path, case_id: str, modalities: tuple[str, ...]):
        self.path, self.case_id, self.modalities = Path(path), case_id, tuple(modalities)
        with open(self.path, "rb") as f:
            self.header = read_header(f, self.path)
            self.labels = self._read(f, "labels")
            self.brain_voxels = self._read(f, "brain_voxels")

    # -- reading --------------------------------------------------------------------------------
    def _read(self, f, name: str) -> np.ndarray:
        a = self.header["arrays"][name]
        f.seek(a["offset"])
        count = int(np.prod(a["shape"], dtype=np.int64))
        arr = np.fromfile(f, dtype=np.dtype(a["dtype"]), count=count)
        if arr.size != count:
            raise CorruptEntry(f"array {name} is truncated")
        return arr.reshape(a["shape"])

    def _arrays(self, *names: str) -> list[np.ndarray]:
        with open(self.path, "rb") as f:
            if os.fstat(f.fileno()).st_size != self.header["size"]:
                raise CorruptEntry(f"cache file {self.path} changed size since it was opened")
            return [self._read(f, n) for n in names]

    def _mask(self, name: str) -> np.ndarray:
        c, d, s, s2 = self.header["shape"]
        z0, z1, y0, y1, x0, x1 = self.header["bbox"]
        out = np.zeros((d, s, s2), bool)
        (bits,) = self._arrays(name)
        out[z0:z1, y0:y1, x0:x1] = np.unpackbits(bits, axis=-1, count=x1 - x0).astype(bool)
        return out

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return tuple(self.header["shape"])

    @property
    def image(self) -> np.ndarray:
        """float32 [C, D, S, S]."""
        c, d, s, s2 = self.header["shape"]
        z0, z1, y0, y1, x0, x1 = self.header["bbox"]
        out = np.zeros((c, d, s, s2), np.float32)
        (img,) = self._arrays("image")
        out[:, z0:z1, y0:y1, x0:x1] = img.transpose(1, 0, 2, 3)
        return out

    @property
    def brain(self) -> np.ndarray:
        return self._mask("brain")

    @property
    def lesion(self) -> np.ndarray:
        return self._mask("lesion")

    @property
    def brain_slices(self) -> np.ndarray:
        return np.nonzero(self.brain_voxels > 0)[0]

    @property
    def native(self) -> NativeMasks | None:
        shape = self.header.get("native_shape")
        if shape is None:
            return None
        brain, lesion = self._arrays("native_brain", "native_lesion")
        return NativeMasks(tuple(shape), np.frombuffer(zlib.decompress(brain.tobytes()), np.uint8),
                           np.frombuffer(zlib.decompress(lesion.tobytes()), np.uint8))

    def load(self) -> PreparedCase:
        """Everything in memory, as a :class:`PreparedCase`."""
        return PreparedCase(self.case_id, self.image, self.brain, self.lesion, self.labels, self.modalities, self.native)

    def stream_source(self) -> dict:
        """What a streaming view needs to map this case's images and brain masks (and nothing else)."""
        a = self.header["arrays"]
        return {"path": str(self.path), "size": self.header["size"], "visible": self.header["visible"],
                "shape": self.header["shape"], "bbox": self.header["bbox"],
                "image": (a["image"]["offset"], a["image"]["dtype"], a["image"]["shape"]),
                "brain": (a["brain"]["offset"], a["brain"]["shape"])}

    def __repr__(self) -> str:
        return f"StoredCase({self.case_id!r})"
