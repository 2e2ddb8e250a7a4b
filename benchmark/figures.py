"""The qualitative grid stored with each run: input / map / ground truth on deterministic slices."""

from __future__ import annotations

import numpy as np

from lesionbench.metrics import ScoredVolume
from lesionbench.preprocessing import PreparedCase


def grid_slices(cases: list[PreparedCase], n: int = 4) -> list[tuple[int, int]]:
    """(case index, slice index) pairs chosen from the split alone (never from a method's output): the
    slice with most lesion voxels of the first ``n`` cases with lesions, in split order."""
    chosen = []
    for i, case in enumerate(cases):
        counts = case.lesion.sum(axis=(1, 2))
        if counts.max() > 0:
            chosen.append((i, int(counts.argmax())))
        if len(chosen) == n:
            break
    return chosen


def _to_uint8(a: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return (np.clip((a - lo) / (hi - lo if hi > lo else 1.0), 0, 1) * 255).astype(np.uint8)


def qualitative_grid(cases: list[PreparedCase], scored: list[ScoredVolume], channel: int, n: int = 4) -> np.ndarray:
    """uint8 image: one row per chosen slice, columns input / map / ground truth. Maps share one scale
    (their pooled 1st-99th percentile) so rows are comparable."""
    picks = grid_slices(cases, n)
    if not picks:
        return np.zeros((8, 8), np.uint8)
    rows, maps = [], []
    for ci, z in picks:
        sv = scored[ci]
        local = int(np.searchsorted(cases[ci].brain_slices, z))  # scored maps hold brain slices only
        maps.append(sv.map[local])
    lo, hi = np.percentile(np.concatenate([m.ravel() for m in maps]), [1, 99])
    for (ci, z), m in zip(picks, maps):
        case = cases[ci]
        tiles = [_to_uint8(case.image[channel, z], 0, 1), _to_uint8(m, lo, hi), case.lesion[z].astype(np.uint8) * 255]
        rows.append(np.concatenate([np.pad(t, 1, constant_values=128) for t in tiles], axis=1))
    return np.concatenate(rows, axis=0)


def grid_tiles(grid: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """The tiles of a :func:`qualitative_grid` image, per chosen slice: (inputs, maps, ground truths), uint8.

    The layout is the one written above: three columns of tiles, each framed by one pixel of grey 128; the
    ground-truth tiles hold only 0 and 255 inside, so their all-grey rows are the frames."""
    grid = np.asarray(grid)
    if grid.ndim == 2 and not (grid == 128).any():
        return [], [], []  # the placeholder of a split without lesions
    if grid.ndim != 2 or grid.shape[1] % 3:
        raise ValueError(f"not a qualitative grid: shape {grid.shape}")
    width = grid.shape[1] // 3
    frames = np.flatnonzero((grid[:, 2 * width :] == 128).all(axis=1))
    if len(frames) < 2:
        raise ValueError("not a qualitative grid: no tile frames")
    height = int(frames[1]) + 1
    if grid.shape[0] % height:
        raise ValueError(f"not a qualitative grid: {grid.shape[0]} rows do not split into tiles of {height}")
    tiles = [[grid[r : r + height, c * width : (c + 1) * width][1:-1, 1:-1] for c in range(3)]
             for r in range(0, grid.shape[0], height)]
    return [t[0] for t in tiles], [t[1] for t in tiles], [t[2] for t in tiles]
