"""lesionbench.metrics against scikit-learn (to 1e-6) and brute force."""

import math
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

from lesionbench.metrics import (
    ScoredVolume,
    UndefinedMetricWarning,
    average_precision,
    best_dice,
    dice_at,
    dice_curve,
    evaluate,
    evaluate_split,
    pooled_curve_metrics,
    roc_auc,
    threshold_at_rate,
)

TOL = 1e-6


def random_data(seed, n, prevalence=0.2, shift=1.0):
    rng = np.random.default_rng(seed)
    y = rng.random(n) < prevalence
    y[0], y[-1] = True, False  # both classes present
    s = rng.standard_normal(n) + shift * y
    return s, y


def brute_dice(s, y):
    """Dice of s >= t for every unique t (descending), via sklearn's f1_score (F1 == Dice)."""
    ts = np.unique(s)[::-1]
    return ts, np.array([f1_score(y, s >= t, zero_division=0.0) for t in ts])


def loop_dice(s, y):
    """The same brute force as a plain numpy loop (fast enough for thousands of thresholds)."""
    ts = np.unique(s)[::-1]
    dice = []
    for t in ts:
        pred = s >= t
        dice.append(2 * np.count_nonzero(pred & y) / (np.count_nonzero(pred) + np.count_nonzero(y)))
    return ts, np.array(dice)


def assert_like_sklearn(s, y):
    m = pooled_curve_metrics(s, y)
    ap, auc = average_precision_score(y, s), roc_auc_score(y, s)
    assert abs(m["auprc"] - ap) < TOL
    assert abs(m["auroc"] - auc) < TOL
    assert abs(average_precision(s, y) - ap) < TOL
    assert abs(roc_auc(s, y) - auc) < TOL
    return m


# --- low level ------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("n", [2, 7, 100, 5000])
def test_random_against_sklearn(seed, n):
    assert_like_sklearn(*random_data(seed, n))


def test_large_low_prevalence_against_sklearn():
    s, y = random_data(5, 200_000, prevalence=0.015, shift=2.0)
    assert_like_sklearn(s.astype(np.float32), y)


@pytest.mark.parametrize(
    "transform",
    [
        lambda s: np.round(s, 1),
        lambda s: np.round(2 * s).astype(np.int64),
        lambda s: s.astype(np.float16),
        lambda s: np.round(s, 1).astype(np.float32),
    ],
    ids=["round1", "int", "float16", "round1-float32"],
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_heavy_ties_against_sklearn(transform, seed):
    s, y = random_data(seed, 3000)
    s = transform(s)
    m = assert_like_sklearn(s, y.astype(np.int64))  # int labels too
    ts, brute = loop_dice(s, y)
    assert abs(m["dice_best"] - brute.max()) < TOL
    assert m["dice_best_threshold"] == ts[np.argmax(brute)]


def test_constant_scores():
    y = np.array([1, 0, 0, 1, 0, 0, 0, 0], bool)
    s = np.full(8, 0.3)
    m = assert_like_sklearn(s, y)
    assert m["auroc"] == pytest.approx(0.5)
    assert m["auprc"] == pytest.approx(0.25)  # prevalence
    assert m["dice_best"] == pytest.approx(2 * 2 / (8 + 2))
    assert m["dice_best_threshold"] == pytest.approx(0.3)


def test_single_positive():
    s, y = random_data(3, 500)
    y[:] = False
    y[17] = True
    m = assert_like_sklearn(s, y)
    rank = np.sum(s >= s[17])  # voxels predicted at the positive's score
    assert m["auprc"] == pytest.approx(1 / rank)
    assert m["dice_best"] == pytest.approx(2 / (rank + 1))
    assert m["dice_best_threshold"] == s[17]


def test_best_dice_tie_reports_highest_threshold():
    s, y = np.array([4.0, 3.0, 2.0, 1.0]), np.array([1, 0, 0, 1])
    assert best_dice(s, y) == (pytest.approx(2 / 3), 4.0)  # t=4 and t=1 both give 2/3
    ts, dice = dice_curve(s, y)
    np.testing.assert_allclose(dice, [2 / 3, 0.5, 0.4, 2 / 3])


def test_perfect_and_inverted():
    y = np.array([0, 0, 1, 1], bool)
    assert assert_like_sklearn(np.array([0.1, 0.2, 0.8, 0.9]), y)["auroc"] == 1.0
    assert assert_like_sklearn(np.array([0.9, 0.8, 0.2, 0.1]), y)["auroc"] == 0.0


def test_all_negative_is_nan_with_warning():
    s = np.linspace(0, 1, 10)
    y = np.zeros(10, bool)
    with pytest.warns(UndefinedMetricWarning, match="auprc.*no positive"):
        assert math.isnan(average_precision(s, y))
    with pytest.warns(UndefinedMetricWarning, match="auroc.*no positive"):
        assert math.isnan(roc_auc(s, y))
    with pytest.warns(UndefinedMetricWarning, match="dice_best.*no positive"):
        d, t = best_dice(s, y)
    assert math.isnan(d) and math.isnan(t)
    with pytest.warns(UndefinedMetricWarning):
        m = pooled_curve_metrics(s, y)
    assert all(math.isnan(v) for v in m.values())
    # the curve itself is defined: every threshold predicts something and finds nothing
    ts, dice = dice_curve(s, y)
    assert len(ts) == 10 and np.all(dice == 0)


def test_all_positive():
    s = np.array([0.2, 0.5, 0.5, 0.9])
    y = np.ones(4, bool)
    assert average_precision(s, y) == pytest.approx(average_precision_score(y, s)) == 1.0
    with pytest.warns(UndefinedMetricWarning, match="auroc.*no negative"):
        assert math.isnan(roc_auc(s, y))
    assert best_dice(s, y) == (1.0, 0.2)


def test_empty_input_is_nan_with_warning():
    with pytest.warns(UndefinedMetricWarning):
        m = pooled_curve_metrics(np.zeros(0), np.zeros(0, bool))
    assert math.isnan(m["auprc"]) and math.isnan(m["auroc"])


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("decimals", [None, 1])
def test_dice_curve_and_best_against_brute_force(seed, decimals):
    s, y = random_data(seed, 400)
    if decimals is not None:
        s = np.round(s, decimals)
    ts, dice = dice_curve(s, y)
    bts, bdice = brute_dice(s, y)
    np.testing.assert_array_equal(ts, bts)
    np.testing.assert_allclose(dice, bdice, atol=TOL)
    d, t = best_dice(s, y)
    assert abs(d - bdice.max()) < TOL and t == bts[np.argmax(bdice)]


def test_dice_at_against_f1():
    s, y = random_data(4, 300)
    for t in [-1.0, 0.0, 0.5, 2.0]:
        assert abs(dice_at(s, y, t) - f1_score(y, s >= t)) < TOL
    assert dice_at(s, y, 100.0) == 0.0  # nothing predicted, lesions missed


def test_dice_at_empty_sets_is_nan():
    with pytest.warns(UndefinedMetricWarning, match="dice_at"):
        assert math.isnan(dice_at(np.array([0.1, 0.2]), np.array([0, 0]), 0.5))


def test_dice_at_compares_float32_scores_exactly():
    s = np.array([np.float32(0.1)], np.float32)  # 0.10000000149...
    t = float(np.nextafter(float(s[0]), 1.0))  # just above the score in float64, rounds to it in float32
    assert dice_at(s, np.array([True]), t) == 0.0
    assert dice_at(s, np.array([True]), float(s[0])) == 1.0


def test_threshold_at_rate_exact():
    s = np.arange(100.0)
    assert threshold_at_rate(s, 0.05) == 95.0  # flags 95..99
    assert threshold_at_rate(s, 0.29) == 71.0  # 0.29 * 100 is 28.999.. in floating point
    assert threshold_at_rate(s, 1.0) == 0.0
    assert threshold_at_rate(s, 0.0) == math.inf
    ties = np.r_[np.zeros(90), np.ones(5), np.full(5, 2.0)]
    assert threshold_at_rate(ties, 0.07) == 2.0  # 1.0 would flag 10 %
    assert threshold_at_rate(np.ones(10), 0.05) == math.inf
    rng = np.random.default_rng(0)
    for x in [rng.standard_normal(10_001), np.round(rng.standard_normal(5000), 1), rng.random(999).astype(np.float16)]:
        t = threshold_at_rate(x, 0.05)
        assert np.mean(x >= t) <= 0.05
        lower = np.max(x[x < t])  # the next lower candidate flags too many
        assert np.mean(x >= lower) > 0.05
    with pytest.raises(ValueError):
        threshold_at_rate(s, 1.5)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="NaN"):
        average_precision(np.array([0.1, np.nan]), np.array([0, 1]))
    with pytest.raises(ValueError, match="size"):
        roc_auc(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="binary"):
        roc_auc(np.zeros(3), np.array([0, 1, 2]))


def test_module_imports_numpy_only():
    code = "import sys, lesionbench.metrics; print(sorted({'sklearn', 'pandas', 'scipy', 'torch'} & set(sys.modules)))"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "[]"


# --- evaluation of volumes ---------------------------------------------------------------------------

D, H, W = 6, 10, 10


def make_volume(case_id, rng, lesion=True, dtype=np.float32):
    brain = np.zeros((D, H, W), bool)
    brain[:, 1:-1, 1:-1] = True
    les = np.zeros((D, H, W), bool)
    if lesion:
        z = rng.integers(0, D - 2)
        les[z : z + 2, 3:6, 3:6] = True
        les[z + 2, 4, 4] = True  # one-voxel slice: ambiguous
        les[0, 0, 0] = True  # outside the brain: ignored
    m = (rng.standard_normal((D, H, W)) + 1.5 * les).astype(dtype)
    m[~brain] = 0
    per_slice = (les & brain).sum(axis=(1, 2))
    labels = np.where(per_slice == 0, 0, np.where(per_slice >= 3, 1, -1)).astype(np.int8)
    slice_scores = np.array([np.percentile(m[k][brain[k]], 99) for k in range(D)])
    return ScoredVolume(case_id, m, brain, les, slice_scores, labels)


def make_split(prefix, seed, n=4, n_healthy=1):
    rng = np.random.default_rng(seed)
    return [make_volume(f"{prefix}{i}", rng, lesion=i >= n_healthy) for i in range(n)]


def pool(vols):
    s = np.concatenate([v.map[v.brain] for v in vols])
    y = np.concatenate([v.lesion[v.brain] for v in vols])
    return s, y


def test_evaluate_split_against_sklearn():
    vols = make_split("v", 0)
    out = evaluate_split(vols)
    s, y = pool(vols)
    assert abs(out["auprc"] - average_precision_score(y, s)) < TOL
    assert abs(out["auroc"] - roc_auc_score(y, s)) < TOL
    ts, bd = loop_dice(s, y)
    assert abs(out["dice_best"] - bd.max()) < TOL and out["dice_best_threshold"] == ts[np.argmax(bd)]
    ss = np.concatenate([v.slice_scores for v in vols])
    sl = np.concatenate([v.slice_labels for v in vols])
    assert (sl == -1).any()  # the fixture has ambiguous slices, which must be left out
    keep = sl >= 0
    assert abs(out["slice_auroc"] - roc_auc_score(sl[keep], ss[keep])) < TOL
    assert abs(out["slice_ap"] - average_precision_score(sl[keep], ss[keep])) < TOL
    assert out["n_volumes"] == 4 and out["n_lesion_volumes"] == 3
    assert out["prevalence"] == pytest.approx(y.mean())
    assert out["prevalence"] == pytest.approx(3 * 19 / (4 * D * 8 * 8))  # the voxel outside the brain is ignored


def test_single_volume():
    vol = make_split("one", 1, n=1, n_healthy=0)
    out = evaluate_split(vol)
    s, y = pool(vol)
    assert abs(out["auprc"] - average_precision_score(y, s)) < TOL
    ev = evaluate(vol, vol)
    assert ev.test["dice_val"] == pytest.approx(ev.test["dice_best"])  # same data: the val optimum is the test optimum
    assert ev.test["dice_val_n_volumes"] == 1 and ev.test["dice_val_vol_std"] == 0.0


def test_evaluate_thresholds_and_per_volume():
    test, val = make_split("t", 2, n=5, n_healthy=2), make_split("v", 3, n=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is undefined here
        ev = evaluate(test, val)
    assert ev.warnings == []
    ts, ty = pool(test)
    vs, vy = pool(val)

    # dice_val: the threshold maximising pooled validation Dice, applied to pooled test voxels
    cand, vdice = loop_dice(vs, vy)
    t_val = ev.thresholds["dice_val"]
    assert t_val == cand[np.argmax(vdice)]
    assert abs(ev.test["dice_val"] - f1_score(ty, ts >= t_val)) < TOL
    assert abs(ev.val["dice_best"] - vdice.max()) < TOL

    # per volume, and the mean/std over lesion volumes only
    pv = ev.per_volume.set_index("case_id")
    assert list(pv.index) == [v.case_id for v in test]
    direct = []
    for v in test:
        s, y = v.map[v.brain], v.lesion[v.brain]
        row = pv.loc[v.case_id]
        assert row.n_brain == v.brain.sum() and row.n_lesion == y.sum()
        if y.any():
            direct.append(f1_score(y, s >= t_val))
            assert abs(row.dice_val - direct[-1]) < TOL
            assert abs(row.auprc - average_precision_score(y, s)) < TOL
            assert abs(row.dice_best - loop_dice(s, y)[1].max()) < TOL
        else:
            assert math.isnan(row.auprc) and math.isnan(row.dice_best)
            if (s >= t_val).any():
                assert row.dice_val == 0.0  # false alarms only
            else:
                assert math.isnan(row.dice_val)  # two empty sets
    assert ev.test["dice_val_n_volumes"] == 3
    assert abs(ev.test["dice_val_vol_mean"] - np.mean(direct)) < TOL
    assert abs(ev.test["dice_val_vol_std"] - np.std(direct)) < TOL

    # dice_fpr5: flags <= 5 % of the brain voxels of healthy validation slices, as close as possible
    healthy = np.concatenate([v.map[v.slice_labels == 0][v.brain[v.slice_labels == 0]] for v in val])
    t5 = ev.thresholds["dice_fpr5"]
    assert np.mean(healthy >= t5) <= 0.05
    assert np.mean(healthy >= np.max(healthy[healthy < t5])) > 0.05
    assert abs(ev.test["dice_fpr5"] - f1_score(ty, ts >= t5)) < TOL

    # the test dict is evaluate_split(test) plus the threshold-based keys
    for key, value in evaluate_split(test).items():
        assert ev.test[key] == pytest.approx(value, nan_ok=True)
    for key in ["auprc", "auroc", "dice_best", "dice_val", "dice_val_vol_mean", "dice_val_vol_std",
                "dice_val_n_volumes", "auprc_vol_mean", "auprc_vol_std", "auprc_n_volumes", "dice_fpr5", "slice_auroc", "slice_ap", "n_volumes",
                "n_lesion_volumes", "prevalence"]:
        assert key in ev.test


def test_auprc_vol_mean_is_sklearn_ap_per_lesioned_volume():
    """auprc_vol_mean: scikit-learn's AP of each test volume with lesions, averaged; healthy volumes left out and
    counted (auprc_n_volumes), std with ddof=0 as dice_val_vol_std; logged whatever the validation split holds."""
    test, val = make_split("t", 12, n=6, n_healthy=2), make_split("v", 13, n=3)
    ev = evaluate(test, val)
    ap = [average_precision_score(v.lesion[v.brain], v.map[v.brain]) for v in test if v.lesion[v.brain].any()]
    assert len(ap) == 4 and ev.test["auprc_n_volumes"] == 4
    assert abs(ev.test["auprc_vol_mean"] - np.mean(ap)) < TOL
    assert abs(ev.test["auprc_vol_std"] - np.std(ap)) < TOL
    assert abs(ev.test["auprc_vol_mean"] - ev.test["auprc"]) > 1e-3  # not the pooled AP
    healthy_val = make_split("v", 14, n=2, n_healthy=2)  # no validation lesion: dice_val* NaN, AP per volume still
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        no_threshold = evaluate(test, healthy_val)
    assert math.isnan(no_threshold.test["dice_val_vol_mean"])
    assert no_threshold.test["auprc_vol_mean"] == pytest.approx(np.mean(ap), abs=TOL)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the pooled metrics warn: no lesion in the test split
        only_healthy = evaluate(make_split("h", 15, n=2, n_healthy=2), val)
    assert math.isnan(only_healthy.test["auprc_vol_mean"]) and only_healthy.test["auprc_n_volumes"] == 0


@pytest.mark.filterwarnings("ignore:validation. (auprc|auroc|dice_best|slice_auroc|slice_ap) is undefined")
def test_no_lesion_in_validation():
    test = make_split("t", 4)
    val = make_split("v", 5, n=3, n_healthy=3)
    message = "no lesion voxels in the validation split: dice_val cannot be computed"
    with pytest.warns(UndefinedMetricWarning, match=message):
        ev = evaluate(test, val)
    assert any("validation split: dice_val cannot be computed" in w for w in ev.warnings)
    for key in ["dice_val", "dice_val_vol_mean", "dice_val_vol_std", "dice_val_n_volumes"]:
        assert math.isnan(ev.test[key])
    assert ev.per_volume.dice_val.isna().all()
    s, y = pool(test)
    assert abs(ev.test["auprc"] - average_precision_score(y, s)) < TOL
    assert 0 < ev.test["dice_fpr5"] <= 1  # all slices of val are healthy: still computed
    assert math.isnan(ev.val["auprc"]) and ev.val["n_lesion_volumes"] == 0


def test_no_healthy_validation_slice():
    test = make_split("t", 6)
    val = make_split("v", 7, n=2, n_healthy=0)
    for v in val:
        v.slice_labels[:] = np.where(v.slice_labels == 0, -1, v.slice_labels)
    with pytest.warns(UndefinedMetricWarning, match="dice_fpr5"):
        ev = evaluate(test, val)
    assert math.isnan(ev.test["dice_fpr5"]) and math.isnan(ev.thresholds["dice_fpr5"])
    assert not math.isnan(ev.test["dice_val"])


def test_float16_maps():
    test = make_split("t", 8)
    val = make_split("v", 9)
    for v in test + val:
        v.map = v.map.astype(np.float16)
    ev = evaluate(test, val)
    s, y = pool(test)
    assert abs(ev.test["auprc"] - average_precision_score(y, s)) < TOL
    assert abs(ev.test["dice_val"] - f1_score(y, s >= ev.thresholds["dice_val"])) < TOL


@pytest.mark.parametrize(
    "breakage, match",
    [
        (lambda v: setattr(v, "brain", np.zeros_like(v.brain)), "no brain voxels"),
        (lambda v: setattr(v, "map", v.map[:, :-1]), "must be the same"),
        (lambda v: v.map.__setitem__((2, 4, 4), np.nan), "NaN in the anomaly map"),
        (lambda v: setattr(v, "slice_scores", v.slice_scores[:-1]), "slice scores"),
    ],
    ids=["empty-brain", "shape", "nan", "slices"],
)
def test_bad_volumes_name_the_case(breakage, match):
    test = make_split("t", 10)
    breakage(test[2])
    with pytest.raises(ValueError, match=rf"case t2: .*{match}|case t2: {match}"):
        evaluate(test, make_split("v", 11))
    with pytest.raises(ValueError, match="case t2"):
        evaluate_split(test)


def test_no_validation_case_reports_test_metrics_and_says_why():
    rng = np.random.default_rng(7)
    lesion = rng.random((2, 8, 8)) < 0.2
    vol = ScoredVolume("t0", rng.random((2, 8, 8)) + lesion, np.ones((2, 8, 8), bool), lesion,
                       rng.random(2), np.array([1, 1], np.int8))
    with pytest.warns(UserWarning, match="no validation case"):
        ev = evaluate([vol], [])
    assert math.isnan(ev.test["dice_val"]) and math.isnan(ev.test["dice_fpr5"]) and ev.val == {}
    scores, labels = vol.map.ravel(), lesion.ravel()
    assert ev.test["auprc"] == pytest.approx(average_precision_score(labels, scores), abs=1e-9)
    assert any("no validation case" in w for w in ev.warnings)


# -- Wolleb et al.'s per-slice protocol ------------------------------------------------------------


def _between_class_variances(values, bins=256):
    """Otsu's criterion for every cut of the histogram, computed directly: {threshold: variance}."""
    counts, edges = np.histogram(values, bins=bins, range=(values.min(), values.max()))
    centres = (edges[:-1] + edges[1:]) / 2
    out = {}
    for k in range(bins - 1):
        lo, hi = counts[: k + 1], counts[k + 1 :]
        m_lo = (lo * centres[: k + 1]).sum() / lo.sum()
        m_hi = (hi * centres[k + 1 :]).sum() / hi.sum()
        out[centres[k]] = lo.sum() * hi.sum() * (m_lo - m_hi) ** 2
    return out


@pytest.mark.parametrize("seed", range(4))
def test_otsu_matches_brute_force_and_splits_two_modes(seed):
    from lesionbench.metrics import otsu_threshold

    rng = np.random.default_rng(seed)
    values = np.concatenate([rng.normal(0.0, 0.1, 3000), rng.normal(1.0 + seed, 0.2, 500 * (seed + 1))])
    t = otsu_threshold(values)
    # the criterion's maximum (cuts inside a run of empty bins tie up to rounding, so compare the criterion)
    variances = _between_class_variances(values)
    assert variances[t] == pytest.approx(max(variances.values()), rel=1e-12)
    assert 0.3 < t < 0.7 + seed  # between the modes
    assert otsu_threshold(np.full(10, 2.5)) == 2.5  # constant: nothing above the threshold


def test_wolleb_protocol_averages_over_diseased_slices_only():
    from lesionbench.metrics import wolleb_protocol

    rng = np.random.default_rng(0)
    shape = (3, 16, 16)
    brain = np.zeros(shape, bool)
    brain[:, 2:14, 2:14] = True
    lesion = np.zeros(shape, bool)
    lesion[1, 4:8, 4:8] = True  # found exactly: map high there
    lesion[2, 10:13, 10:13] = True  # missed: the map is high elsewhere
    m = rng.uniform(0, 0.1, shape)
    m[1][lesion[1]] += 1.0
    m[2, 3:6, 3:6] += 1.0
    m[0, 5:9, 5:9] += 1.0  # a false positive on the healthy slice: not counted by this protocol
    vol = ScoredVolume("v", m.astype(np.float32), brain, lesion, np.zeros(3), np.array([0, 1, 1], np.int8))
    out = wolleb_protocol([vol])
    assert out["n_slices"] == 2
    assert out["dice_otsu"] == pytest.approx(0.5)  # 1 on slice 1, 0 on slice 2
    expected_auroc = np.mean([roc_auc_score(lesion[d][brain[d]], m[d][brain[d]]) for d in (1, 2)])
    assert out["auroc"] == pytest.approx(expected_auroc, abs=TOL)
    # pooled metrics see the healthy slice's false positive; this protocol does not
    assert evaluate_split([vol])["dice_best"] < out["dice_otsu"] * 2


def test_wolleb_protocol_without_lesion_is_nan_with_a_warning():
    from lesionbench.metrics import wolleb_protocol

    shape = (2, 8, 8)
    vol = ScoredVolume("h", np.random.default_rng(1).random(shape), np.ones(shape, bool), np.zeros(shape, bool),
                       np.zeros(2), np.zeros(2, np.int8))
    with pytest.warns(UndefinedMetricWarning, match="no slice with lesion"):
        out = wolleb_protocol([vol])
    assert math.isnan(out["dice_otsu"]) and out["n_slices"] == 0


# -- counts at distinct scores (the leaderboard's re-scoring of volume sets) ------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_from_counts_equal_sklearn_on_repeated_volumes(seed):
    """Weights are multiplicities: the metrics of weighted counts equal sklearn's on the data repeated."""
    from lesionbench.metrics import curve_metrics_from_counts

    rng = np.random.default_rng(seed)
    volumes = [(rng.integers(0, 20, 50) / 4, rng.random(50) < 0.2) for _ in range(4)]
    values = np.unique(np.concatenate([s for s, _ in volumes]))[::-1]
    pos = np.array([[np.sum(y & (s == v)) for v in values] for s, y in volumes])
    neg = np.array([[np.sum(~y & (s == v)) for v in values] for s, y in volumes])
    weights = np.array([[1, 1, 1, 1], [2, 0, 1, 1], [0, 0, 3, 1]])
    t = values[5]
    got = curve_metrics_from_counts(weights @ pos, weights @ neg, [int(np.sum(values >= t))])
    for b, w in enumerate(weights):
        s = np.concatenate([np.tile(s, n) for (s, _), n in zip(volumes, w)])
        y = np.concatenate([np.tile(y, n) for (_, y), n in zip(volumes, w)])
        assert got["auprc"][b] == pytest.approx(average_precision_score(y, s), abs=1e-12)
        assert got["auroc"][b] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
        assert got["dice_best"][b] == pytest.approx(best_dice(s, y)[0], abs=1e-12)
        assert got["dice_at"][b, 0] == pytest.approx(f1_score(y, s >= t), abs=1e-12)
    empty = curve_metrics_from_counts(np.zeros((1, 3)), np.ones((1, 3)))
    assert all(np.isnan(empty[k][0]) for k in ("auprc", "auroc", "dice_best"))  # no lesion: undefined, no warning


def test_lesion_wise_counts_each_component():
    from lesionbench.metrics import lesion_wise

    lesion = np.zeros((2, 5, 5), bool)
    lesion[0, 0, 0] = True
    lesion[0:2, 3:5, 3:5] = True
    brain = np.ones_like(lesion)
    found = lesion_wise(lesion.astype(float), brain, lesion, 0.5)  # a perfect map
    np.testing.assert_array_equal(found["size"], [1, 8])
    assert found["detected"].all() and np.allclose(found["dice"], 1.0)
    assert lesion_wise(np.zeros((2, 5, 5)), brain, np.zeros_like(lesion), 0.5)["size"].size == 0
