"""Prediction by the harness: every brain slice of a case, batched, on the method's device, stacked back into a
scored volume; and maps moved to the case's source grid (``--eval-native``, ``--save-maps`` as NIfTI)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from lesionbench import metrics as M
from lesionbench.filenames import safe_name
from lesionbench.method import Method
from lesionbench.pipeline import PreparedDataset
from lesionbench.preprocessing import PreparedCase, slice_labels
from lesionbench.volume import DataError

DEFAULT_SCORE_PERCENTILE = 99.0


def native_scored(dataset: PreparedDataset, case: PreparedCase, sv: M.ScoredVolume) -> M.ScoredVolume:
    """A scored volume moved to the case's source grid through the inverse of the dataset's crop and scale.

    Every slice with brain in the source grid is evaluated: slices that had no brain after resampling were
    not predicted and get the case's lowest map value and slice score. Slice labels come from the source
    masks (``min_lesion_voxels`` counted in source voxels).
    """
    native = case.native
    if native is None:
        raise DataError(f"case {case.case_id}: no source-grid masks in the cache; --eval-native needs them")
    full = native_map(dataset, case, sv)
    brain, lesion = native.brain, native.lesion
    idx = np.nonzero(brain.any(axis=(1, 2)))[0]
    scores = np.full(full.shape[0], float(sv.slice_scores.min()), np.float64)
    scores[case.brain_slices] = sv.slice_scores
    labels = slice_labels(lesion, brain, dataset.data.min_lesion_voxels)
    return M.ScoredVolume(case.case_id, full[idx], brain[idx], lesion[idx], scores[idx], labels[idx])


def native_map(dataset: PreparedDataset, case: PreparedCase, sv: M.ScoredVolume) -> np.ndarray:
    """The map of every slice in the source grid [D, H, W]; unpredicted slices and voxels outside the crop
    box hold the map's minimum."""
    fill = float(sv.map.min())
    resampled = np.full(case.brain.shape, fill, np.float32)
    resampled[case.brain_slices] = sv.map
    full = dataset.geometry.to_native(resampled, fill)
    if case.native is not None and full.shape != case.native.shape:
        raise DataError(f"case {case.case_id}: native map {full.shape} does not match the source grid {case.native.shape}")
    return full


def save_maps(dataset: PreparedDataset, cases: list[PreparedCase], scored: list[M.ScoredVolume], folder: Path) -> Path:
    """Write each map as NIfTI in its case's source space (shape and affine of the source file), so it
    overlays in ITK-SNAP or 3D Slicer; adapters without files get an identity affine in the D, H, W order."""
    from lesionbench.nifti import write_array, write_like

    source_file = getattr(dataset.adapter, "source_file", None)
    for case, sv in zip(cases, scored):
        full = native_map(dataset, case, sv)
        out = folder / f"{safe_name(case.case_id, f'dataset {dataset.name}: case id')}_map.nii.gz"
        if source_file is not None:
            write_like(full, source_file(case.case_id), out)
        else:
            write_array(full, out)
    return folder


def predict_cases(method: Method, cases: list[PreparedCase], batch: int) -> tuple[list[M.ScoredVolume], int]:
    """Predict every brain slice of each case, batched, and stack the maps back into volumes."""
    scored, n_slices = [], 0
    for case in cases:
        idx = case.brain_slices
        images = torch.from_numpy(np.ascontiguousarray(case.image[:, idx].transpose(1, 0, 2, 3)))
        maps, scores = [], []
        for start in range(0, len(idx), batch):
            chunk = images[start : start + batch].to(method.device)
            out = method.predict(chunk)
            m = out.maps.detach().float().cpu()
            if m.shape != (chunk.shape[0], *chunk.shape[2:]):
                raise RuntimeError(f"method {method.name!r} returned maps of shape {tuple(m.shape)} for input {tuple(chunk.shape)}; expected [B, H, W]")
            if not torch.isfinite(m).all():
                raise RuntimeError(f"method {method.name!r} returned NaN/Inf in its map for case {case.case_id}")
            maps.append(m.numpy())
            scores.append(None if out.scores is None else out.scores.detach().float().cpu().numpy())
        map_volume = np.concatenate(maps)
        brain = case.brain[idx]
        if any(s is None for s in scores):
            slice_scores = np.array([np.percentile(m[b], DEFAULT_SCORE_PERCENTILE) for m, b in zip(map_volume, brain)])
        else:
            slice_scores = np.concatenate(scores)
        scored.append(M.ScoredVolume(case.case_id, map_volume, brain, case.lesion[idx], slice_scores, case.labels[idx]))
        n_slices += len(idx)
    return scored, n_slices

