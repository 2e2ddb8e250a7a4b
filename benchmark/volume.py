"""Volumes and the dataset adapter contract (design §4)."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

#: Canonical modality names; adapters map their sources' names onto these.
MODALITIES: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")


class DataError(ValueError):
    """Bad input data; the message names the file or case."""


@dataclass
class Volume:
    """One subject, as an adapter returns it (before the harness's preprocessing).

    image: float32 [C, D, H, W], D the axial axis; lesion: bool [D, H, W] or None (healthy-only data);
    brain: bool [D, H, W]; spacing: voxel size (mm) along D, H, W; affine: 4x4 voxel-to-world of the
    [D, H, W] grid as stored; modalities: canonical names of the C channels, in order.
    """

    case_id: str
    image: np.ndarray
    lesion: np.ndarray | None
    brain: np.ndarray
    modalities: tuple[str, ...]
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    affine: np.ndarray = field(default_factory=lambda: np.eye(4))

    def __post_init__(self):
        self.modalities = tuple(self.modalities)
        unknown = [m for m in self.modalities if m not in MODALITIES]
        if unknown:
            raise DataError(f"case {self.case_id}: unknown modality names {unknown}; canonical names are {MODALITIES}")
        if self.image.ndim != 4 or self.image.shape[0] != len(self.modalities):
            raise DataError(
                f"case {self.case_id}: image shape {self.image.shape} does not match "
                f"[C={len(self.modalities)}, D, H, W] for modalities {self.modalities}"
            )
        grid = self.image.shape[1:]
        for what, arr in (("brain mask", self.brain), ("lesion mask", self.lesion)):
            if arr is not None and arr.shape != grid:
                raise DataError(f"case {self.case_id}: {what} shape {arr.shape} != image grid {grid}")
        if not np.isfinite(self.image).all():
            bad = [m for m, ch in zip(self.modalities, self.image) if not np.isfinite(ch).all()]
            raise DataError(f"case {self.case_id}: NaN/Inf values in modalities {bad}")
        if not self.brain.any():
            raise DataError(f"case {self.case_id}: empty brain mask")
        flat = [m for m, ch in zip(self.modalities, self.image) if np.ptp(ch[self.brain]) == 0]
        if flat:  # an empty or failed acquisition: normalised to nothing, it would score at chance
            raise DataError(f"case {self.case_id}: modalities {flat} are constant inside the brain (empty or failed images)")

    def select(self, modalities: tuple[str, ...]) -> "Volume":
        """The same volume restricted to (and reordered as) ``modalities``; a missing one is an error."""
        missing = [m for m in modalities if m not in self.modalities]
        if missing:
            raise DataError(
                f"case {self.case_id}: modality {missing} requested but the data has only {self.modalities}"
            )
        idx = [self.modalities.index(m) for m in modalities]
        return Volume(self.case_id, self.image[idx], self.lesion, self.brain, tuple(modalities), self.spacing, self.affine)


class DatasetAdapter(abc.ABC):
    """Lists subjects and loads them as :class:`Volume`; preprocessing is the harness's job.

    ``options`` holds the adapter's ``data.*`` settings (e.g. ``root``, ``subjects``); adapters read
    what they need and ignore the rest.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    #: Adapters that need files say so; ``run`` with no data path uses the synthetic ones.
    needs_root: ClassVar[bool] = False
    #: ``data.*`` defaults of this kind of data (e.g. a larger slice size for real MRI); the user's
    #: ``--config`` / ``--set`` values win over them.
    data_defaults: ClassVar[dict] = {}

    def __init__(self, root: Path | None = None, **options):
        self.root = Path(root) if root is not None else None
        self.options = options

    @abc.abstractmethod
    def cases(self) -> list[str]:
        """Subject ids, sorted."""

    @abc.abstractmethod
    def load(self, case: str) -> Volume:
        """One subject's volume."""

    def lesion_voxels(self, case: str) -> int | None:
        """The case's number of lesion voxels, read from its mask alone (never its images), for stratified
        splits; None when the adapter cannot tell without loading the case (its splits are then not stratified
        by lesion load)."""
        return None

    def fingerprint(self, case: str) -> str:
        """What identifies the case's content for the cache (files and mtimes, or generator settings)."""
        return f"{self.name}:{case}:{sorted(self.options.items())}"
