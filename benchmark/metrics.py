"""Metrics (design §5): voxel metrics over brain-mask voxels of maps stacked back into volumes.

Metric keys:

- ``auprc`` (primary): average precision, all test brain voxels pooled.
- ``auroc``: voxel AUROC, pooled (secondary: it saturates).
- ``dice_best``: ⌈Dice⌉, the best pooled Dice over all thresholds, chosen **on the test set**. An upper
  bound, always labelled so (``dice_best_threshold`` is the threshold that reaches it).
- ``dice_val``: pooled test Dice at the threshold that maximises pooled Dice on the validation split
  (uses validation voxel masks, so it is not weakly supervised).
- ``dice_val_vol_mean`` / ``dice_val_vol_std``: the same threshold, Dice per test volume that has lesions
  (healthy volumes excluded; ``dice_val_n_volumes`` counts the included ones; std with ddof=0).
- ``auprc_vol_mean`` / ``auprc_vol_std``: AP per test volume that has lesions, averaged (healthy volumes have no
  AP and are excluded; ``auprc_n_volumes`` counts the included ones; std with ddof=0). Beside
  ``dice_val_vol_mean``, the per-volume figure Behrendt et al.'s pDDPM/cDDPM tables report; there is no per-volume
  best Dice (its threshold would be tuned on the test volume).
- ``dice_fpr5``: pooled test Dice at the threshold that flags 5 % of the brain voxels of validation
  slices labelled healthy (image labels only: fully weakly supervised).
- ``slice_auroc`` / ``slice_ap``: slice-level detection from the method's slice score, over slices
  labelled 0 or 1 (ambiguous slices, label -1, are left out).

Separately, and never pooled with the above: :func:`wolleb_protocol`, the per-slice protocol of Wolleb et
al. (2022) — an Otsu threshold per slice, Dice and AUROC averaged over diseased slices — so that a user can
set our numbers beside that paper's table.

Definitions, identical to scikit-learn's (checked to 1e-6 in ``tests/test_metrics.py``). A threshold
``t`` predicts ``score >= t``; every distinct score value is a threshold:

- AP = Σₙ (Rₙ − Rₙ₋₁) Pₙ over the distinct thresholds in descending order (``average_precision_score``).
- AUROC = trapezoidal area under the ROC curve through all distinct thresholds
  = P(s₊ > s₋) + ½ P(s₊ = s₋) (``roc_auc_score``).
- Dice = 2TP / (2TP + FP + FN).

Thresholds are exact: all of them at once from one sort of each class's scores, never a fixed grid.
Where a metric is undefined (no lesion or no healthy voxel, ...) it is NaN and an
:class:`UndefinedMetricWarning` says which metric and why.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:
    import pandas

__all__ = [
    "UndefinedMetricWarning",
    "average_precision",
    "roc_auc",
    "dice_curve",
    "best_dice",
    "dice_at",
    "threshold_at_rate",
    "pooled_curve_metrics",
    "curve_metrics_from_counts",
    "lesion_wise",
    "ScoredVolume",
    "Evaluation",
    "evaluate_split",
    "evaluate",
    "otsu_threshold",
    "wolleb_protocol",
]

NAN = float("nan")


class UndefinedMetricWarning(UserWarning):
    """A metric is undefined for the given data and was returned as NaN."""


def _undefined(metric: str, reason: str) -> float:
    warnings.warn(f"{metric} is undefined: {reason}; returning NaN", UndefinedMetricWarning, stacklevel=3)
    return NAN


# ---------------------------------------------------------------------------------------------------
# Low level: flat scores and binary labels
# ---------------------------------------------------------------------------------------------------


def _as_flat(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores).ravel()
    y = np.asarray(labels).ravel()
    if s.shape != y.shape:
        raise ValueError(f"scores ({s.size}) and labels ({y.size}) differ in size")
    if s.dtype not in (np.float32, np.float64):
        s = s.astype(np.float64)  # exact for float16 and small ints; keeps float32 as is (faster sort)
    if y.dtype != bool:
        if not ((y == 0) | (y == 1)).all():
            raise ValueError("labels must be binary (bool or 0/1)")
        y = y.astype(bool)
    return s, y


def _sorted_classes(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    """Lesion and healthy scores, each sorted ascending: the one sort all curve metrics share."""
    s, y = _as_flat(scores, labels)
    # Sorting values (not argsort) of each class is ~10x faster than an argsort of everything.
    pos, neg = np.sort(s[y]), np.sort(s[~y])
    # NaN sorts last, so checking the ends is enough.
    if (pos.size and np.isnan(pos[-1])) or (neg.size and np.isnan(neg[-1])):
        raise ValueError("scores contain NaN")
    return pos, neg


def _distinct_desc(sorted_asc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values of an ascending array, descending, with their counts."""
    if sorted_asc.size == 0:
        return sorted_asc, np.zeros(0, np.int64)
    starts = np.flatnonzero(np.r_[True, sorted_asc[1:] != sorted_asc[:-1]])
    counts = np.diff(np.r_[starts, sorted_asc.size])
    return sorted_asc[starts][::-1], counts[::-1]


def _curve_metrics(pos: np.ndarray, neg: np.ndarray) -> dict[str, float]:
    """AP, AUROC and best Dice from the sorted class scores (NaN where undefined, no warning).

    Only thresholds at distinct lesion scores matter: AP and the ROC area only change where TP changes,
    and lowering t between two lesion scores adds FP only, so Dice peaks at a lesion score.
    """
    npos, nneg = pos.size, neg.size
    out = dict(auprc=NAN, auroc=NAN, dice_best=NAN, dice_best_threshold=NAN)
    if npos == 0:
        return out
    values, counts = _distinct_desc(pos)
    tp = np.cumsum(counts)
    neg_below = np.searchsorted(neg, values, side="left")  # healthy scores < t
    ties = np.searchsorted(neg, values, side="right") - neg_below  # healthy scores == t
    auprc, wins, dice = _curve_formulas(counts, tp, nneg - neg_below, ties, npos, nneg)
    out["auprc"] = float(auprc)
    if nneg:
        out["auroc"] = float(wins / (2 * npos * nneg))
    best = int(np.argmax(dice))  # first maximum = highest threshold reaching it
    out["dice_best"], out["dice_best_threshold"] = float(dice[best]), float(values[best])
    return out


def _curve_formulas(counts, tp, fp, ties, npos, nneg):
    """The definitions of the module docstring at thresholds descending along the last axis: ``counts`` lesion
    voxels at each threshold, ``tp`` / ``fp`` lesion / healthy voxels scoring >= it, ``ties`` healthy voxels
    equal to it. Returns (AP, AUROC numerator = Mann-Whitney wins x 2 with ties counted 1/2, Dice per threshold)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        auprc = np.sum(counts * (tp / np.where(tp + fp > 0, tp + fp, 1)), axis=-1) / npos
        wins = np.sum(counts * (2 * (np.expand_dims(nneg, -1) - fp) + ties), axis=-1)  # equals sklearn's trapezoidal ROC area
        dice = 2 * tp / (tp + fp + np.expand_dims(npos, -1))
    return auprc, wins, dice


def curve_metrics_from_counts(pos, neg, thresholds: Sequence[int] = ()) -> dict[str, np.ndarray]:
    """``auprc``, ``auroc`` and ``dice_best`` of weighted data: ``pos`` / ``neg`` are lesion / healthy voxel
    counts (or weights, e.g. a volume's multiplicity in a bootstrap resample) at each distinct score, scores
    descending along the last axis; leading axes are a batch (volumes, resamples). Same definitions as
    :func:`pooled_curve_metrics`; NaN where undefined, without a warning.

    ``thresholds``: for each, the number of distinct scores at or above the threshold; adds ``dice_at`` (the
    Dice of predicting those scores, one column per threshold, last axis)."""
    pos, neg = np.asarray(pos, np.float64), np.asarray(neg, np.float64)
    tp, fp = np.cumsum(pos, axis=-1), np.cumsum(neg, axis=-1)
    npos, nneg = tp[..., -1], fp[..., -1]
    auprc, wins, dice = _curve_formulas(pos, tp, fp, neg, npos, nneg)
    with np.errstate(invalid="ignore", divide="ignore"):
        auroc = wins / (2 * npos * nneg)
        out = {
            "auprc": np.where(npos > 0, auprc, NAN),
            "auroc": np.where((npos > 0) & (nneg > 0), auroc, NAN),
            "dice_best": np.where(npos > 0, np.where(pos > 0, dice, -np.inf).max(axis=-1, initial=-np.inf), NAN),
        }
        if len(thresholds):
            k = np.asarray(thresholds, np.int64)
            zeros = np.zeros(pos.shape[:-1] + (1,))
            tp_k = np.concatenate([zeros, tp], axis=-1)[..., k]  # lesion / all voxels predicted at each threshold
            pred_k = tp_k + np.concatenate([zeros, fp], axis=-1)[..., k]
            denom = pred_k + npos[..., None]
            out["dice_at"] = np.where(denom > 0, 2 * tp_k / np.where(denom > 0, denom, 1), NAN)
    return out


def _warn_undefined(npos: int, nneg: int, metrics: Sequence[str]) -> None:
    if npos == 0:
        for m in metrics:
            _undefined(m, "no positive (lesion) labels")
    elif nneg == 0 and "auroc" in metrics:
        _undefined("auroc", "no negative (healthy) labels")


def pooled_curve_metrics(scores, labels) -> dict[str, float]:
    """auprc, auroc, dice_best and dice_best_threshold, exact, from one sort."""
    pos, neg = _sorted_classes(scores, labels)
    _warn_undefined(pos.size, neg.size, ("auprc", "auroc", "dice_best"))
    return _curve_metrics(pos, neg)


def average_precision(scores, labels) -> float:
    """Average precision, as ``sklearn.metrics.average_precision_score``."""
    pos, neg = _sorted_classes(scores, labels)
    _warn_undefined(pos.size, neg.size, ("auprc",))
    return _curve_metrics(pos, neg)["auprc"]


def roc_auc(scores, labels) -> float:
    """Area under the ROC curve, as ``sklearn.metrics.roc_auc_score`` (ties: trapezoid)."""
    pos, neg = _sorted_classes(scores, labels)
    _warn_undefined(pos.size, neg.size, ("auroc",))
    return _curve_metrics(pos, neg)["auroc"]


def best_dice(scores, labels) -> tuple[float, float]:
    """(best Dice over all thresholds, the highest threshold reaching it); NaN without lesions."""
    pos, neg = _sorted_classes(scores, labels)
    _warn_undefined(pos.size, neg.size, ("dice_best",))
    m = _curve_metrics(pos, neg)
    return m["dice_best"], m["dice_best_threshold"]


def dice_curve(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    """Dice of ``scores >= t`` for every distinct score value t, descending (float64 arrays)."""
    pos, neg = _sorted_classes(scores, labels)
    thresholds = np.unique(np.concatenate([pos, neg]))[::-1]
    tp = pos.size - np.searchsorted(pos, thresholds, side="left")
    fp = neg.size - np.searchsorted(neg, thresholds, side="left")
    # Each threshold predicts at least one voxel, so the denominator is never 0.
    dice = 2 * tp / (tp + fp + pos.size)
    return thresholds.astype(np.float64), dice


def _dice(pred: np.ndarray, truth: np.ndarray) -> float:
    tp = np.count_nonzero(pred & truth)
    denom = np.count_nonzero(pred) + np.count_nonzero(truth)
    return 2 * tp / denom if denom else NAN


def dice_at(scores, labels, threshold: float) -> float:
    """Dice of ``scores >= threshold``; NaN (with a warning) when both sets are empty."""
    s, y = _as_flat(scores, labels)
    d = _dice(s >= np.float64(threshold), y)  # float64 scalar: compare exactly, not rounded to float32
    if math.isnan(d):
        _undefined("dice_at", f"no positive labels and no prediction at threshold {threshold}")
    return d


def threshold_at_rate(scores, rate: float = 0.05) -> float:
    """Lowest threshold t that flags (``scores >= t``) at most ``rate`` of the scores.

    Exact quantile on the given values; with ties straddling the quantile the flagged fraction is
    below ``rate``; ``inf`` if even the maximum would flag too many.
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must be in [0, 1], got {rate}")
    s = np.sort(np.asarray(scores).ravel())
    n = s.size
    if n == 0:
        return _undefined("threshold_at_rate", "no scores")
    if np.isnan(s[-1]):
        raise ValueError("scores contain NaN")
    k = int(math.floor(rate * n + 1e-9))  # allowed number of flagged values (tolerates 0.29*100 = 28.99..)
    if k >= n:
        return float(s[0])
    # s[n-k-1] must stay unflagged; the next larger distinct value is the answer.
    i = np.searchsorted(s, s[n - k - 1], side="right")
    return float(s[i]) if i < n else math.inf


# ---------------------------------------------------------------------------------------------------
# Evaluation of volumes
# ---------------------------------------------------------------------------------------------------


@dataclass
class ScoredVolume:
    """One volume's anomaly map and references, as the harness hands it to :func:`evaluate`.

    ``slice_labels``: 1 lesion, 0 healthy, -1 ambiguous (few lesion voxels; left out of slice metrics and
    of the healthy pool of ``dice_fpr5``).
    """

    case_id: str
    map: np.ndarray  # float [D, H, W]
    brain: np.ndarray  # bool [D, H, W]
    lesion: np.ndarray  # bool [D, H, W]
    slice_scores: np.ndarray  # float [D]
    slice_labels: np.ndarray  # int8 [D]


@dataclass
class Evaluation:
    test: dict[str, float]
    val: dict[str, float]
    thresholds: dict[str, float]  # dice_val, dice_fpr5
    per_volume: "pandas.DataFrame"  # case_id, n_brain, n_lesion, auprc, dice_best, dice_val, dice_fpr5
    warnings: list[str] = field(default_factory=list)


@dataclass
class _Checked:
    """A validated volume: brain-voxel scores and labels, slice scores and labels."""

    case_id: str
    scores: np.ndarray
    labels: np.ndarray
    slice_scores: np.ndarray
    slice_labels: np.ndarray
    map: np.ndarray
    brain: np.ndarray


def _check(v: ScoredVolume) -> _Checked:
    m, brain, lesion = np.asarray(v.map), np.asarray(v.brain, dtype=bool), np.asarray(v.lesion, dtype=bool)
    if m.shape != brain.shape or lesion.shape != brain.shape or m.ndim != 3:
        raise ValueError(
            f"case {v.case_id}: map {m.shape}, brain {brain.shape} and lesion {lesion.shape} must be the same [D, H, W]"
        )
    if not brain.any():
        raise ValueError(f"case {v.case_id}: no brain voxels")
    if np.isnan(m).any():
        raise ValueError(f"case {v.case_id}: NaN in the anomaly map")
    ss, sl = np.asarray(v.slice_scores, dtype=np.float64).ravel(), np.asarray(v.slice_labels).ravel()
    if ss.size != m.shape[0] or sl.size != m.shape[0]:
        raise ValueError(
            f"case {v.case_id}: {ss.size} slice scores and {sl.size} slice labels for {m.shape[0]} slices"
        )
    if np.isnan(ss).any():
        raise ValueError(f"case {v.case_id}: NaN in the slice scores")
    if not np.isin(sl, (-1, 0, 1)).all():
        raise ValueError(f"case {v.case_id}: slice labels must be -1, 0 or 1")
    return _Checked(v.case_id, m[brain], lesion[brain], ss, sl, m, brain)


def _pooled(checked: Sequence[_Checked]) -> tuple[np.ndarray, np.ndarray]:
    return np.concatenate([c.scores for c in checked]), np.concatenate([c.labels for c in checked])


def _split_metrics(checked: Sequence[_Checked], scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    out = pooled_curve_metrics(scores, labels)
    ss = np.concatenate([c.slice_scores for c in checked])
    sl = np.concatenate([c.slice_labels for c in checked])
    known = sl >= 0  # ambiguous slices (-1) are left out
    pos, neg = _sorted_classes(ss[known], sl[known] == 1)
    _warn_undefined(pos.size, neg.size, ("slice_auroc", "slice_ap"))
    slice_m = _curve_metrics(pos, neg)
    out["slice_auroc"], out["slice_ap"] = slice_m["auroc"], slice_m["auprc"]
    out["n_volumes"] = len(checked)
    out["n_lesion_volumes"] = sum(bool(c.labels.any()) for c in checked)
    out["prevalence"] = float(np.count_nonzero(labels) / labels.size)
    return out


def _check_all(volumes: Sequence[ScoredVolume], split: str) -> list[_Checked]:
    if len(volumes) == 0:
        raise ValueError(f"no volumes in the {split} split")
    return [_check(v) for v in volumes]


def evaluate_split(volumes: Sequence[ScoredVolume]) -> dict[str, float]:
    """Pooled metrics of one split: auprc, auroc, dice_best (+ threshold), slice_auroc, slice_ap,
    n_volumes, n_lesion_volumes, prevalence (lesion fraction of brain voxels)."""
    checked = _check_all(volumes, "given")
    return _split_metrics(checked, *_pooled(checked))


class _Collect:
    """Records warnings raised inside, prefixed with the split, and re-emits them on exit."""

    def __init__(self, sink: list[str], prefix: str):
        self.sink, self.prefix = sink, prefix

    def __enter__(self):
        self._cm = warnings.catch_warnings(record=True)
        self._caught = self._cm.__enter__()
        warnings.simplefilter("always")  # record repeats too
        return self

    def __exit__(self, *exc):
        self._cm.__exit__(*exc)
        for w in self._caught:
            msg = f"{self.prefix}: {w.message}"
            self.sink.append(msg)
            warnings.warn(msg, w.category, stacklevel=3)
        return False


def _volume_mean(key: str, values: np.ndarray) -> dict[str, float]:
    """``<key>_vol_mean``, ``<key>_vol_std`` (ddof=0) and ``<key>_n_volumes`` of the lesioned volumes' values; NaN
    mean and std (n = 0) without a lesioned test volume."""
    if values.size == 0:
        return {f"{key}_vol_mean": NAN, f"{key}_vol_std": NAN, f"{key}_n_volumes": 0}
    return {f"{key}_vol_mean": float(values.mean()), f"{key}_vol_std": float(values.std()), f"{key}_n_volumes": int(values.size)}


def evaluate(test: Sequence[ScoredVolume], val: Sequence[ScoredVolume]) -> Evaluation:
    """All §5 metrics: pooled test and validation metrics, thresholds chosen on validation, per volume."""
    import pandas as pd  # only the evaluation needs pandas

    notes: list[str] = []
    test_c = _check_all(test, "test")
    val_c = [_check(v) for v in val]
    test_s, test_y = _pooled(test_c)
    val_m, t_val, t_fpr5 = {}, NAN, NAN
    if not val_c:
        message = ("the split has no validation case, so dice_val, dice_val_vol_mean, dice_val_vol_std and "
                   "dice_fpr5 (thresholds chosen on validation) are not computed (NaN); the other metrics are reported")
        notes.append(message)
        warnings.warn(message, UndefinedMetricWarning)
    else:
        with _Collect(notes, "validation"):
            val_m = _split_metrics(val_c, *_pooled(val_c))
            # dice_val: the threshold that maximises pooled validation Dice (uses validation voxel masks).
            t_val = val_m["dice_best_threshold"]
            if math.isnan(t_val):
                warnings.warn(
                    "no lesion voxels in the validation split: dice_val cannot be computed", UndefinedMetricWarning
                )
            # dice_fpr5: flags 5 % of the brain voxels of healthy validation slices (image labels only).
            healthy = np.concatenate([c.map[c.slice_labels == 0][c.brain[c.slice_labels == 0]] for c in val_c])
            if healthy.size:
                t_fpr5 = threshold_at_rate(healthy, 0.05)
            else:
                warnings.warn(
                    "no healthy (label 0) slice with brain voxels in the validation split: dice_fpr5 cannot be computed",
                    UndefinedMetricWarning,
                )

    with _Collect(notes, "test"):
        test_m = _split_metrics(test_c, test_s, test_y)

        def dice_or_nan(scores, labels, t):
            return NAN if math.isnan(t) else _dice(scores >= np.float64(t), labels)

        test_m["dice_val"] = dice_or_nan(test_s, test_y, t_val)
        test_m["dice_fpr5"] = dice_or_nan(test_s, test_y, t_fpr5)

        rows = []
        for c in test_c:
            n_lesion = int(np.count_nonzero(c.labels))
            # Healthy volumes have no AP or best Dice: NaN, expected, so no warning per volume.
            vm = _curve_metrics(*_sorted_classes(c.scores, c.labels)) if n_lesion else {}
            rows.append(dict(
                case_id=c.case_id, n_brain=int(c.labels.size), n_lesion=n_lesion,
                auprc=vm.get("auprc", NAN), dice_best=vm.get("dice_best", NAN),
                dice_val=dice_or_nan(c.scores, c.labels, t_val),
                dice_fpr5=dice_or_nan(c.scores, c.labels, t_fpr5),
            ))
        per_volume = pd.DataFrame(
            rows, columns=["case_id", "n_brain", "n_lesion", "auprc", "dice_best", "dice_val", "dice_fpr5"]
        )

        lesioned = per_volume.n_lesion > 0
        if math.isnan(t_val):
            test_m.update(dice_val_vol_mean=NAN, dice_val_vol_std=NAN, dice_val_n_volumes=NAN)
        else:
            test_m.update(_volume_mean("dice_val", per_volume.loc[lesioned, "dice_val"].to_numpy(np.float64)))
        test_m.update(_volume_mean("auprc", per_volume.loc[lesioned, "auprc"].to_numpy(np.float64)))

    return Evaluation(
        test=test_m,
        val=val_m,
        thresholds=dict(dice_val=t_val, dice_fpr5=t_fpr5),
        per_volume=per_volume,
        warnings=notes,
    )


# -- the per-slice protocol of Wolleb et al. (2022) ---------------------------------------------------


def otsu_threshold(values, bins: int = 256) -> float:
    """Otsu's threshold (1979): the histogram cut (``bins`` bins over [min, max]) that maximises the
    between-class variance; returns the centre of the last bin of the lower class, and ``values > t`` is
    the upper class (the convention of scikit-image's ``threshold_otsu``)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        raise ValueError("otsu_threshold: no values")
    lo, hi = float(v.min()), float(v.max())
    if lo == hi:
        return lo
    counts, edges = np.histogram(v, bins=bins, range=(lo, hi))
    centres = (edges[:-1] + edges[1:]) / 2
    counts = counts.astype(np.float64)
    w_low, w_high = np.cumsum(counts), np.cumsum(counts[::-1])[::-1]  # the first and last bins are never empty
    mean_low = np.cumsum(counts * centres) / w_low
    mean_high = (np.cumsum((counts * centres)[::-1]) / w_high[::-1])[::-1]
    between = w_low[:-1] * w_high[1:] * (mean_low[:-1] - mean_high[1:]) ** 2
    return float(centres[int(np.argmax(between))])


def wolleb_protocol(volumes: Sequence[ScoredVolume]) -> dict[str, float]:
    """Wolleb et al. (2022)'s evaluation: every slice with lesion voxels is thresholded on its own with Otsu's
    method, and Dice (and the slice's voxel AUROC) are averaged over those diseased slices.

    Not our metric (design §5): per-slice thresholds use the test map itself and healthy slices are left out,
    so these figures are higher than the pooled ones and are never mixed with them. Ours differs from the
    authors' script in one point: Otsu and AUROC run over the slice's brain voxels, not the whole image.
    Returns ``dice_otsu``, ``auroc`` (slices whose brain is all lesion have no AUROC and are left out of it)
    and ``n_slices``; NaN (with a warning) when no slice has a lesion."""
    _check_all(volumes, "given")
    dices, aurocs = [], []
    for v in volumes:
        m, brain, lesion = np.asarray(v.map), np.asarray(v.brain, dtype=bool), np.asarray(v.lesion, dtype=bool)
        for d in np.flatnonzero((lesion & brain).any(axis=(1, 2))):
            scores, truth = m[d][brain[d]].astype(np.float64), lesion[d][brain[d]]
            dices.append(_dice(scores > otsu_threshold(scores), truth))
            if not truth.all():
                aurocs.append(_curve_metrics(*_sorted_classes(scores, truth))["auroc"])
    if not dices:
        return {"dice_otsu": _undefined("wolleb_protocol", "no slice with lesion voxels"), "auroc": NAN, "n_slices": 0}
    return {"dice_otsu": float(np.mean(dices)), "auroc": float(np.mean(aurocs)) if aurocs else NAN, "n_slices": len(dices)}


# -- lesion-wise ----------------------------------------------------------------------------------------


def lesion_wise(map_, brain, lesion, threshold: float) -> dict[str, np.ndarray]:
    """Each lesion of a volume at one threshold: lesions are the 3D connected components of the lesion mask in
    the brain (face connectivity, ``scipy.ndimage.label``'s default, as ``check-data`` counts them); the
    prediction is ``map >= threshold`` in the brain.

    Returns arrays over lesions: ``size`` (voxels), ``detected`` (at least one voxel predicted) and ``dice``,
    2|P ∩ L| / (|P_L| + |L|) with P_L the predicted components (3D) that touch the lesion, so false positives
    elsewhere in the volume do not count against it (the lesion-wise Dice of the BraTS 2023 challenge)."""
    from scipy import ndimage

    brain = np.asarray(brain, dtype=bool)
    truth = np.asarray(lesion, dtype=bool) & brain
    pred = (np.asarray(map_) >= np.float64(threshold)) & brain
    lesions, n = ndimage.label(truth)
    if n == 0:
        return {"size": np.zeros(0, np.int64), "detected": np.zeros(0, bool), "dice": np.zeros(0)}
    components, _ = ndimage.label(pred)
    size = np.bincount(lesions.ravel(), minlength=n + 1)[1:]
    overlap = np.bincount(lesions[pred], minlength=n + 1)[1:]
    component_size = np.bincount(components.ravel())
    pairs = np.unique(np.stack([lesions[truth & pred], components[truth & pred]]), axis=1)  # (lesion, component)
    touched = np.bincount(pairs[0], weights=component_size[pairs[1]], minlength=n + 1)[1:]
    return {"size": size, "detected": overlap > 0, "dice": 2 * overlap / (touched + size)}
