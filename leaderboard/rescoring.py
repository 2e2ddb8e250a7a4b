"""Re-scoring a run's stored test volumes (design §5) for the leaderboard's statistics.

A run's ``scores.npz`` becomes, per test volume, the lesion and healthy voxel counts at each distinct map value
(maps are stored in float16, so there are at most 65 536). Any weighted set of volumes (a bootstrap resample
counts a volume as often as it was drawn) is then one matrix product away from its pooled counts, and
:func:`lesionbench.metrics.curve_metrics_from_counts` gives the exact pooled metrics of §5 from them. Values
are those of the float16 maps: within float16 rounding of the logged metrics (computed on float32 maps).

Threshold metrics (``dice_val``, ``dice_fpr5``) keep, per volume, the true positives and predicted voxels at the
threshold that volume was scored with, so the volumes of several cross-validation folds, each at its own fold's
logged threshold, pool into one set (``RunScores.of`` takes a threshold per volume).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from lesionbench.metrics import ScoredVolume, curve_metrics_from_counts, lesion_wise

#: Table metrics that can be recomputed on any set of test volumes.
RESCORABLE = ("auprc", "auroc", "dice_best", "dice_val", "dice_fpr5", "dice_val_vol_mean", "auprc_vol_mean",
              "slice_auroc", "slice_ap")
#: Means over the lesioned test volumes of a per-volume value (mean column -> the per-volume metric averaged).
VOLUME_MEANS = {"dice_val_vol_mean": "dice_val", "auprc_vol_mean": "auprc"}
#: The per-volume value a table metric is compared on (auprc_vol_mean is the mean of per-volume auprc).
PER_VOLUME_KEY = {m: m for m in RESCORABLE} | VOLUME_MEANS
#: Threshold metrics: Dice at the run's logged threshold (``threshold/<key>``).
THRESHOLDS = ("dice_val", "dice_fpr5")
#: Lesion size bins (voxels of the evaluation space) of the per-lesion-size breakdown: [low, high).
LESION_SIZE_BINS = (1, 10, 100, 1000, math.inf)


@dataclass
class Counts:
    """Class counts per volume at each distinct score, scores descending: ``pos`` / ``neg`` [volumes, scores].

    Runs of scores that hold no positive in any volume are merged into one entry: they add false positives only,
    so AP, AUROC and best Dice are unchanged, and the matrices shrink to about twice the number of distinct
    positive scores."""

    pos: np.ndarray
    neg: np.ndarray

    @classmethod
    def of(cls, scores: list[np.ndarray], labels: list[np.ndarray]) -> "Counts":
        values, inverse = np.unique(np.concatenate(scores).astype(np.float64), return_inverse=True)
        inverse = values.size - 1 - inverse  # descending
        pos = np.zeros((len(scores), values.size))
        neg = np.zeros((len(scores), values.size))
        start = 0
        for v, (s, y) in enumerate(zip(scores, labels)):
            idx = inverse[start : start + s.size]
            start += s.size
            pos[v] = np.bincount(idx[y], minlength=values.size)
            neg[v] = np.bincount(idx[~y], minlength=values.size)
        any_pos = pos.sum(axis=0) > 0
        starts = np.zeros(values.size, bool)
        starts[:1] = True
        starts[1:] = any_pos[1:] | any_pos[:-1]
        merged = lambda a: np.add.reduceat(a, np.flatnonzero(starts), axis=1) if a.size else a  # noqa: E731
        return cls(merged(pos), merged(neg))


@dataclass
class RunScores:
    """One run's test volumes (or the union of a cross-validation's folds), ready for re-scoring."""

    run_id: str
    case_ids: list[str]
    voxels: Counts  # brain voxels
    slices: Counts  # slices labelled 0 or 1 (ambiguous slices left out, as in the metrics)
    thresholds: dict[str, np.ndarray]  # dice_val, dice_fpr5: each volume's threshold (its run's; NaN: not computed)
    at_threshold: dict[str, tuple[np.ndarray, np.ndarray]]  # key -> (lesion voxels predicted, voxels predicted) [volumes]
    lesioned: np.ndarray  # bool [volumes]: the volume has lesion voxels in the brain
    lesions: pd.DataFrame  # case_id, size, detected, dice: each lesion at the dice_val threshold

    @classmethod
    def of(cls, run_id: str, volumes: list[ScoredVolume], thresholds: dict) -> "RunScores":
        """``thresholds``: key -> one threshold for all volumes, or a sequence with each volume's own."""
        n = len(volumes)
        per_volume = {k: np.broadcast_to(np.asarray(thresholds.get(k, math.nan), np.float64), (n,)).copy()
                      for k in THRESHOLDS}
        brains = [np.asarray(v.brain, bool) for v in volumes]
        scores = [np.asarray(v.map)[b].astype(np.float64) for v, b in zip(volumes, brains)]
        truths = [np.asarray(v.lesion, bool)[b] for v, b in zip(volumes, brains)]
        voxels = Counts.of(scores, truths)
        at_threshold = {}
        for key, ts in per_volume.items():
            # float64 threshold against the float16 map's exact value, as metrics.dice_at compares
            predicted = [s >= t if not math.isnan(t) else None for s, t in zip(scores, ts)]
            tp = np.array([np.count_nonzero(p & y) if p is not None else math.nan for p, y in zip(predicted, truths)])
            pred = np.array([np.count_nonzero(p) if p is not None else math.nan for p in predicted])
            at_threshold[key] = (tp, pred)
        known = [np.asarray(v.slice_labels) >= 0 for v in volumes]
        slices = Counts.of([np.asarray(v.slice_scores)[k] for v, k in zip(volumes, known)],
                           [np.asarray(v.slice_labels)[k] == 1 for v, k in zip(volumes, known)])
        rows = []
        for v, t_val in zip(volumes, per_volume["dice_val"]):
            if not math.isnan(t_val):
                found = lesion_wise(v.map, v.brain, v.lesion, t_val)
                rows += [dict(case_id=v.case_id, size=int(s), detected=bool(d), dice=float(x))
                         for s, d, x in zip(found["size"], found["detected"], found["dice"])]
        lesions = pd.DataFrame(rows, columns=["case_id", "size", "detected", "dice"])
        return cls(run_id, [v.case_id for v in volumes], voxels, slices, per_volume, at_threshold,
                   voxels.pos.sum(axis=1) > 0, lesions)

    def metrics(self, weights: np.ndarray, keys=RESCORABLE, chunk: int = 64) -> dict[str, np.ndarray]:
        """Pooled metrics of weighted volume sets: ``weights`` [sets, volumes] (a volume's multiplicity)."""
        weights = np.asarray(weights, np.float64)
        out = {k: np.full(len(weights), math.nan) for k in keys}
        lesion_voxels = self.voxels.pos.sum(axis=1)
        for start in range(0, len(weights), chunk):
            w = weights[start : start + chunk]
            part = slice(start, start + len(w))
            if {"auprc", "auroc", "dice_best"} & set(keys):
                voxel = curve_metrics_from_counts(w @ self.voxels.pos, w @ self.voxels.neg)
                for key in ("auprc", "auroc", "dice_best"):
                    if key in out:
                        out[key][part] = voxel[key]
            positives = w @ lesion_voxels
            for key in THRESHOLDS:
                if key in out:  # Dice = 2 TP / (predicted + lesion); a set without lesions: undefined, as AP
                    tp, pred = self.at_threshold[key]
                    with np.errstate(invalid="ignore", divide="ignore"):
                        out[key][part] = np.where(positives > 0, 2 * (w @ tp) / (w @ pred + positives), math.nan)
            if {"slice_auroc", "slice_ap"} & set(keys):
                sl = curve_metrics_from_counts(w @ self.slices.pos, w @ self.slices.neg)
                for key, src in (("slice_auroc", "auroc"), ("slice_ap", "auprc")):
                    if key in out:
                        out[key][part] = sl[src]
        means = [m for m in VOLUME_MEANS if m in out]
        if means:  # means over the lesioned volumes drawn, with their multiplicity
            values = self.per_volume(means)
            lesioned = weights * self.lesioned
            for m in means:
                per_volume = np.where(self.lesioned, values[VOLUME_MEANS[m]], 0.0)  # a lesioned NaN stays NaN
                with np.errstate(invalid="ignore", divide="ignore"):
                    out[m] = (lesioned @ per_volume) / lesioned.sum(axis=1)
        return out

    def per_volume(self, keys=RESCORABLE) -> dict[str, np.ndarray]:
        """Each volume's own value of the metrics [volumes]; voxel metrics only for volumes with lesions (NaN
        for healthy ones, as ``dice_val_vol_mean`` does), slice metrics where a volume has both slice classes."""
        keys = sorted({PER_VOLUME_KEY[k] for k in keys if k in PER_VOLUME_KEY})
        one_each = np.eye(len(self.case_ids))
        values = self.metrics(one_each, keys) if keys else {}
        for key in keys:
            if not key.startswith("slice_"):
                values[key] = np.where(self.lesioned, values[key], math.nan)
        return values


def lesion_size_table(lesions: pd.DataFrame, seeds: int = 1, bins=LESION_SIZE_BINS) -> pd.DataFrame:
    """Per size bin: lesions, detection rate and mean lesion-wise Dice, from ``lesions`` (size, detected, dice)
    pooled over ``seeds`` runs on the same test volumes (each lesion once per seed: the means are seed means)."""
    rows = []
    for low, high in zip(bins[:-1], bins[1:]):
        inside = lesions[(lesions["size"] >= low) & (lesions["size"] < high)]
        name = f"≥ {low}" if math.isinf(high) else f"{low}–{int(high) - 1}"
        rows.append(dict(size=name, lesions=len(inside) // max(seeds, 1),
                         detected=inside["detected"].mean() if len(inside) else math.nan,
                         dice=inside["dice"].mean() if len(inside) else math.nan))
    return pd.DataFrame(rows)
