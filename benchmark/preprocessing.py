"""Preprocessing done by the harness for every adapter (design §4): per-volume normalisation inside the
brain, one crop box and one scale per dataset, masks downsampled by area fraction, slice labels."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from lesionbench.volume import DataError, Volume

AMBIGUOUS = -1  # slice label: some lesion voxels, fewer than min_lesion_voxels


def normalise(image: np.ndarray, brain: np.ndarray, clip_low: float, clip_high: float) -> np.ndarray:
    """Per channel: clip to the [clip_low, clip_high] percentiles of brain voxels, scale to [0, 1]; 0 outside."""
    out = np.empty(image.shape, dtype=np.float32)
    outside = ~brain
    for c, channel in enumerate(image):
        values = channel[brain]
        lo, hi = np.percentile(values, [clip_low, clip_high]).astype(np.float32)  # float32 all through: 0 and 1 exact
        scale = hi - lo if hi > lo else np.float32(1.0)
        np.clip(channel, lo, hi, out=out[c])  # in place: volumes are large
        out[c] -= lo
        out[c] /= scale
        out[c][outside] = 0.0
    return out


@dataclass(frozen=True)
class Geometry:
    """One in-plane crop box (square, in source voxels; may extend past the image: zero padding) and one
    output size for the whole dataset. The axial axis is not resampled."""

    source_hw: tuple[int, int]
    box: tuple[int, int, int, int]  # y0, y1, x0, x1
    size: int

    @property
    def scale(self) -> float:
        return self.size / (self.box[1] - self.box[0])

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "Geometry":
        return cls(tuple(d["source_hw"]), tuple(d["box"]), int(d["size"]))

    @classmethod
    def fit(cls, brains: list[np.ndarray], size: int, margin: int = 2) -> "Geometry":
        """The square box around the union of the given brain masks (the training cases), never smaller than
        ``size`` (no upsampling)."""
        return cls.fit_boxes([b.shape[1:] for b in brains], [cls.brain_box(b) for b in brains], size, margin)

    @staticmethod
    def brain_box(brain: np.ndarray) -> tuple[int, int, int, int]:
        """In-plane bounding box [y0, y1, x0, x1) of a [D, H, W] brain mask (one volume: fit a dataset from
        these, one volume in memory at a time)."""
        plane = brain.any(axis=0)
        ys, xs = np.flatnonzero(plane.any(axis=1)), np.flatnonzero(plane.any(axis=0))
        if not len(ys):
            raise DataError("empty brain mask")
        return int(ys[0]), int(ys[-1]) + 1, int(xs[0]), int(xs[-1]) + 1

    @classmethod
    def fit_boxes(cls, shapes: list[tuple[int, int]], boxes: list[tuple[int, int, int, int]], size: int, margin: int = 2) -> "Geometry":
        """:meth:`fit` from per-volume in-plane shapes and brain boxes (:meth:`brain_box`)."""
        shapes = {tuple(s) for s in shapes}
        if len(shapes) != 1:
            raise DataError(f"cases have different in-plane shapes {sorted(shapes)}: one crop box needs one grid")
        h, w = shapes.pop()
        ymin, ymax = min(b[0] for b in boxes), max(b[1] for b in boxes) - 1
        xmin, xmax = min(b[2] for b in boxes), max(b[3] for b in boxes) - 1
        side = max(ymax - ymin + 1, xmax - xmin + 1) + 2 * margin
        side = max(side, size)
        cy, cx = (ymin + ymax + 1) // 2, (xmin + xmax + 1) // 2
        y0, x0 = cy - side // 2, cx - side // 2
        return cls((h, w), (int(y0), int(y0 + side), int(x0), int(x0 + side)), int(size))

    def _crop(self, arr: np.ndarray) -> np.ndarray:
        """arr [..., H, W] -> [..., side, side] with zero padding outside the image."""
        if arr.shape[-2:] != self.source_hw:
            raise DataError(f"in-plane shape {arr.shape[-2:]} differs from the dataset's grid {self.source_hw}")
        y0, y1, x0, x1 = self.box
        h, w = self.source_hw
        out = np.zeros((*arr.shape[:-2], y1 - y0, x1 - x0), arr.dtype)  # copy the overlap only: no full-size pad
        ty0, ty1, tx0, tx1 = max(0, y0), min(h, y1), max(0, x0), min(w, x1)
        out[..., ty0 - y0 : ty1 - y0, tx0 - x0 : tx1 - x0] = arr[..., ty0:ty1, tx0:tx1]
        return out

    def resample_image(self, image: np.ndarray) -> np.ndarray:
        """[C, D, H, W] -> [C, D, size, size] (antialiased bilinear)."""
        crop = torch.from_numpy(np.ascontiguousarray(self._crop(image), dtype=np.float32))
        if crop.shape[-1] == self.size:
            return crop.numpy()
        c, d = crop.shape[:2]
        out = F.interpolate(crop.reshape(c * d, 1, *crop.shape[-2:]), size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False)
        return out.reshape(c, d, self.size, self.size).numpy()

    def resample_mask(self, mask: np.ndarray) -> np.ndarray:
        """[D, H, W] bool -> [D, size, size] bool by area fraction >= 0.5."""
        crop = self._crop(mask.astype(np.float32))
        if crop.shape[-1] == self.size:
            return crop > 0.5
        t = torch.from_numpy(np.ascontiguousarray(crop))[:, None]
        return (F.interpolate(t, size=(self.size, self.size), mode="area")[:, 0] >= 0.5).numpy()


    def to_native(self, maps: np.ndarray, fill: float = 0.0) -> np.ndarray:
        """The inverse transform: [D, size, size] -> [D, H, W] in the source grid (bilinear), ``fill`` where
        the crop box does not reach. The same transform serves ``--eval-native`` and ``--save-maps``."""
        y0, y1, x0, x1 = self.box
        side = y1 - y0
        t = torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32))[:, None]
        if side != self.size:
            t = F.interpolate(t, size=(side, side), mode="bilinear", align_corners=False)
        crop = t[:, 0].numpy()
        h, w = self.source_hw
        out = np.full((maps.shape[0], h, w), fill, np.float32)
        ty0, ty1, tx0, tx1 = max(0, y0), min(h, y1), max(0, x0), min(w, x1)
        out[:, ty0:ty1, tx0:tx1] = crop[:, ty0 - y0 : ty1 - y0, tx0 - x0 : tx1 - x0]
        return out

    def mask_to_native(self, mask: np.ndarray) -> np.ndarray:
        """[D, size, size] bool -> [D, H, W] bool (inverse of :meth:`resample_mask`: >= 0.5 after upsampling)."""
        return self.to_native(mask.astype(np.float32), 0.0) >= 0.5


def slice_labels(lesion: np.ndarray, brain: np.ndarray, min_lesion_voxels: int) -> np.ndarray:
    """Per axial slice: 1 lesion (>= min_lesion_voxels lesion voxels in the brain), 0 healthy, -1 ambiguous."""
    counts = (lesion & brain).sum(axis=(1, 2))
    labels = np.where(counts >= min_lesion_voxels, 1, np.where(counts > 0, AMBIGUOUS, 0))
    return labels.astype(np.int8)


@dataclass
class NativeMasks:
    """A case's brain and lesion masks in its source grid [D, H, W], bit-packed (for ``--eval-native``)."""

    shape: tuple[int, int, int]
    brain_bits: np.ndarray
    lesion_bits: np.ndarray

    @classmethod
    def pack(cls, brain: np.ndarray, lesion: np.ndarray) -> "NativeMasks":
        return cls(tuple(int(s) for s in brain.shape), np.packbits(brain.ravel()), np.packbits(lesion.ravel()))

    def _unpack(self, bits: np.ndarray) -> np.ndarray:
        return np.unpackbits(bits, count=int(np.prod(self.shape))).reshape(self.shape).astype(bool)

    @property
    def brain(self) -> np.ndarray:
        return self._unpack(self.brain_bits)

    @property
    def lesion(self) -> np.ndarray:
        return self._unpack(self.lesion_bits) & self.brain


@dataclass
class PreparedCase:
    """One preprocessed subject in the dataset's resampled grid (harness-internal: holds the lesion mask)."""

    case_id: str
    image: np.ndarray  # float32 [C, D, S, S], in [0, 1] in the brain
    brain: np.ndarray  # bool [D, S, S]
    lesion: np.ndarray  # bool [D, S, S]
    labels: np.ndarray  # int8 [D]
    modalities: tuple[str, ...]
    native: NativeMasks | None = None  # the masks in the source grid

    @property
    def brain_slices(self) -> np.ndarray:
        """Indices of slices holding brain: the ones predicted and evaluated."""
        return np.nonzero(self.brain.any(axis=(1, 2)))[0]


def prepare_case(volume: Volume, geometry: Geometry, data) -> PreparedCase:
    """Normalise in the source grid, then crop and scale with the dataset's geometry."""
    try:
        image = normalise(volume.image, volume.brain, data.clip_low, data.clip_high)
        image = geometry.resample_image(image)
        brain = geometry.resample_mask(volume.brain)
        lesion = geometry.resample_mask(volume.lesion) if volume.lesion is not None else np.zeros_like(brain)
    except DataError as exc:
        raise DataError(f"case {volume.case_id}: {exc}") from None
    image[:, ~brain] = 0.0
    lesion &= brain
    native_lesion = volume.lesion if volume.lesion is not None else np.zeros_like(volume.brain)
    return PreparedCase(volume.case_id, image, brain, lesion, slice_labels(lesion, brain, data.min_lesion_voxels),
                        volume.modalities, NativeMasks.pack(volume.brain, native_lesion))
