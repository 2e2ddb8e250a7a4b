"""From an adapter to what methods and the evaluation see (design §1, §4).

The crop box is fitted on the training cases only, and test cases are loaded only by
:meth:`PreparedDataset.test_cases`, which the runner calls after ``fit`` for the final evaluation.

Bad cases: before anything is loaded, every case of the split passes the adapter's header-level
``check`` (when it has one: files present, not truncated, one grid), remembered per file fingerprint.
Faults that need the voxels (NaN/Inf, an empty brain mask, unexpected labels) surface when a case is
loaded. Either way the dataset refuses the case with a :class:`DataError` naming its file, or, with
``skip_bad``, leaves it out and records why in :attr:`PreparedDataset.skipped`.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from lesionbench.config import DataConfig, stable_hash
from lesionbench.filenames import safe_name
from lesionbench.method import SliceSet, Supervision
from lesionbench import streaming
from lesionbench.casestore import SUFFIX, CorruptEntry, StoredCase, write_case
from lesionbench.preprocessing import Geometry, PreparedCase, prepare_case
from lesionbench.splits import cases_in
from lesionbench.volume import DataError, DatasetAdapter, Volume

CACHE_FORMAT = 2  # bump when the cached arrays change meaning
STORE_FORMAT = 1  # bump when the layout of a case file changes (lesionbench.casestore)

#: DataConfig fields that change preprocessing (and so the cache key and the cell).
PREPROCESSING_KEYS = ("modalities", "size", "min_lesion_voxels", "clip_low", "clip_high")


class PreparedDataset:
    def __init__(self, adapter: DatasetAdapter, data: DataConfig, split: dict[str, str], cache_dir: Path,
                 skip_bad: bool = False):
        self.adapter = adapter
        self.name = adapter.name
        self.data = data
        self.split = dict(split)
        self.cache_dir = Path(cache_dir)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.cache_hits = 0  # case files read from the cache (not prepared)
        self.skip_bad = skip_bad
        self.skipped: dict[str, str] = {}  # case -> why (with skip_bad)
        self.fold = None  # the cross-validation fold this split is (set by the runner), or None
        for case in self.split:  # every case id names a cache file: refused up front when it cannot
            safe_name(case, f"dataset {self.name}: case id")
        self._screen()
        self.geometry, self.modalities = self._fit_geometry()

    # -- bad cases ----------------------------------------------------------------------------------
    def _screen(self) -> None:
        check = getattr(self.adapter, "check", None)
        if check is None:
            return
        bad = {}
        marks = self.cache_dir / "checked"
        for case in self.split:
            try:
                mark = marks / stable_hash(["check", self.adapter.fingerprint(case)])
                if not mark.exists():
                    check(case)
                    mark.parent.mkdir(exist_ok=True)
                    mark.touch()
            except DataError as exc:
                bad[case] = str(exc)
        self._refuse_or_skip(bad)

    def _refuse_or_skip(self, bad: dict[str, str]) -> None:
        if not bad:
            return
        if not self.skip_bad:
            lines = "\n".join(f"  {case}: {why}" for case, why in bad.items())
            raise DataError(f"dataset {self.name}: {len(bad)} bad case(s) (fix them, or --skip-bad leaves them out):\n{lines}")
        for case, why in bad.items():
            self.skipped[case] = why
            self.split.pop(case, None)

    def _cases(self, part: str) -> list[StoredCase]:
        out = []
        for case in cases_in(self.split, part):
            try:
                out.append(self.case(case))
            except DataError as exc:
                self._refuse_or_skip({case: str(exc)})
        return out

    # -- geometry and caching -------------------------------------------------------------------
    def _load_volume(self, case: str) -> Volume:
        try:
            volume = self.adapter.load(case)
        except DataError:
            raise
        except Exception as exc:  # adapters' own errors get the case named
            raise DataError(f"dataset {self.name}, case {case}: {type(exc).__name__}: {exc}") from exc
        if self.data.modalities:
            volume = volume.select(tuple(self.data.modalities))
        return volume

    def _fit_geometry(self) -> tuple[Geometry, tuple[str, ...]]:
        """The crop box around the training cases' brains, one volume at a time (a box per volume, combined)."""
        train = cases_in(self.split, "train")
        key = stable_hash(["geometry", CACHE_FORMAT, [self.adapter.fingerprint(c) for c in train], self.data.size, list(self.data.modalities)])
        path = self.cache_dir / f"geometry-{key}.json"
        if path.exists():
            try:
                saved = json.loads(path.read_text())
                return Geometry.from_dict(saved["geometry"]), tuple(saved["modalities"])
            except FileNotFoundError:
                pass  # another worker set it aside a moment ago
            except Exception as exc:  # truncated or edited: fitted again
                set_aside(path, exc)
        shapes, boxes, bad, modalities = [], [], {}, None
        for c in train:
            try:
                volume = self._load_volume(c)
            except DataError as exc:
                bad[c] = str(exc)
                continue
            modalities = modalities or volume.modalities
            shapes.append(volume.brain.shape[1:])
            boxes.append(Geometry.brain_box(volume.brain))
            del volume  # one raw volume in memory at a time
        self._refuse_or_skip(bad)
        if not boxes:
            raise DataError(f"dataset {self.name}: no usable training case")
        geometry = Geometry.fit_boxes(shapes, boxes, self.data.size)
        _atomic_write_text(path, json.dumps({"geometry": geometry.to_dict(), "modalities": list(modalities)}))
        return geometry, modalities

    def _prepare(self, volume: Volume, geometry: Geometry, modalities: tuple[str, ...]) -> PreparedCase:
        if volume.modalities != modalities:
            raise DataError(f"dataset {self.name}, case {volume.case_id}: modalities {volume.modalities} differ from the dataset's {modalities}")
        return prepare_case(volume, geometry, self.data)

    @property
    def preprocessing(self) -> dict:
        """Everything that defines the preprocessed data (logged; part of the cell)."""
        data = asdict(self.data)
        return {
            "adapter": self.name,
            "adapter_options": {k: str(v) for k, v in sorted(self.adapter.options.items())},
            **{k: (list(data[k]) if isinstance(data[k], tuple) else data[k]) for k in PREPROCESSING_KEYS},
            "modalities": list(self.modalities),
            "geometry": self.geometry.to_dict(),
            "format": CACHE_FORMAT,
            # float32 is the historic store: left out of the dict so that its cells and trained parts keep their keys
            **({"cache_dtype": self.data.cache_dtype} if self.data.cache_dtype != "float32" else {}),
        }

    def _case_path(self, case: str) -> Path:
        key = stable_hash([self.adapter.fingerprint(case), self.preprocessing, STORE_FORMAT, self.data.cache_dtype])
        return self.cache_dir / f"{safe_name(self.name, 'dataset name')}-{safe_name(case, f'dataset {self.name}: case id')}-{key}{SUFFIX}"

    def case(self, case: str) -> StoredCase:
        """A prepared case, read on demand from its cache file (prepared and written first when absent; an
        unreadable file is set aside and the case prepared again). Nothing is kept in memory here."""
        path = self._case_path(case)
        if path.exists():
            try:
                stored = StoredCase(path, case, self.modalities)
            except FileNotFoundError:
                stored = None  # another worker set it aside a moment ago
            except (CorruptEntry, OSError) as exc:  # truncated or overwritten: prepared again
                set_aside(path, exc)
                stored = None
            if stored is not None:
                self.cache_hits += 1
                return stored
        prepared = self._prepare(self._load_volume(case), self.geometry, self.modalities)
        write_case(path, prepared, self.data.cache_dtype)
        del prepared
        return StoredCase(path, case, self.modalities)

    # -- what the method and the evaluation see --------------------------------------------------
    def slice_set(self, part: str, supervision: Supervision) -> SliceSet:
        """Training or validation slices for a method: no lesion mask, no adapter, no path."""
        if part not in ("train", "val"):
            raise ValueError(f"methods see only the train and val splits, not {part!r}")
        sources, rows, slices, labels = [], [], [], []
        min_brain = self.data.min_brain_fraction * self.data.size**2
        for stored in self._cases(part):
            keep = (stored.labels >= 0) & (stored.brain_voxels >= min_brain)
            if supervision is Supervision.NONE:
                keep &= stored.labels == 0
            z = np.flatnonzero(keep)
            rows.append(np.full(len(z), len(sources), np.int32))
            slices.append(z.astype(np.int32))
            labels.append(stored.labels[z].astype(np.int64))
            sources.append(stored.stream_source())  # images and brain masks only: no lesion, no adapter
        c, s = len(self.modalities), self.data.size
        handle = streaming.register(sources)
        row, z = (np.concatenate(rows), np.concatenate(slices)) if rows else (np.zeros(0, np.int32),) * 2
        return SliceSet(
            streaming.StreamedArray(handle, row, z, "image", (c, s, s)),
            torch.from_numpy(np.concatenate(labels) if labels else np.zeros(0, np.int64)),
            streaming.StreamedArray(handle, row, z, "brain", (s, s)),
            self.modalities,
        )

    def val_cases(self) -> list[StoredCase]:
        return self._cases("val")

    def test_cases(self) -> list[StoredCase]:
        """The test split: for the final evaluation only."""
        return self._cases("test")


def lesion_loads(adapter: DatasetAdapter, cases: list[str], cache_dir: Path) -> dict[str, int | None]:
    """Case summaries for stratified splits: each case's lesion voxel count (the adapter reads the mask, never
    the images), cached under ``cache_dir/summaries`` by the case's fingerprint; None where the adapter cannot
    tell."""
    folder = Path(cache_dir) / "summaries"
    loads = {}
    for case in cases:
        path = folder / f"{stable_hash(['lesion_voxels', adapter.fingerprint(case)], 20)}.json"
        try:
            loads[case] = json.loads(path.read_text())["lesion_voxels"]
            continue
        except (OSError, ValueError, KeyError, TypeError):  # absent, or unreadable: computed again
            pass
        try:
            loads[case] = adapter.lesion_voxels(case)
        except DataError:
            raise
        except Exception as exc:  # adapters' own errors get the case named
            raise DataError(f"dataset {adapter.name}, case {case}: {type(exc).__name__}: {exc}") from exc
        if loads[case] is not None:
            folder.mkdir(parents=True, exist_ok=True)
            _atomic_write_text(path, json.dumps({"case": case, "lesion_voxels": int(loads[case])}))
    return loads


def set_aside(path: Path, error: BaseException) -> None:
    """Rename an unreadable cache file to ``*.corrupt`` (kept for inspection) and warn, naming it; the caller
    makes the entry again."""
    aside = path.with_name(path.name + ".corrupt")
    try:
        path.replace(aside)
    except OSError:
        pass  # another worker set it aside first
    reason = (str(error).strip().splitlines() or [""])[0][:200]
    warnings.warn(f"cache file {path} is unreadable ({type(error).__name__}: {reason}); set aside as {aside.name}, "
                  "made again", stacklevel=3)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_suffix(f"{path.suffix}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
