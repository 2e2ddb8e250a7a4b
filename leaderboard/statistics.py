"""The leaderboard's statistics (design §6): bootstrap confidence intervals over test volumes, tests against the
best row of a column (a paired Wilcoxon signed-rank test for per-volume columns, a paired bootstrap for pooled
ones) with Holm's correction, the power of the signed-rank test, and rank aggregation over columns.

- **Bootstrap.** Test volumes are drawn with replacement (percentile bootstrap, 1000 resamples by default). One
  set of resamples per dataset, drawn from (seed, dataset name), is shared by every row, so intervals of one
  column are comparable. For each resample the pooled metric is recomputed per run from its stored maps and
  averaged over the row's seeds: the interval is that of the seed mean printed in the table. Resamples without
  a lesion voxel (the metric undefined) are left out.
- **Which test.** A per-volume column (``dice_val_vol_mean``, ``auprc_vol_mean``: a mean of one value per
  lesioned volume) is tested with the paired Wilcoxon signed-rank test on those values. A pooled column (auprc,
  auroc, ⌈Dice⌉, dice_val, dice_fpr5, slice metrics) is not a mean of per-volume values: per-volume AP, for one,
  ignores false positives on healthy volumes. It is tested with a **paired bootstrap** over test volumes: on
  the same resamples for both rows, the difference row - best of the pooled metric (seed means) is recomputed;
  p = 2 min(P(diff <= 0), P(diff >= 0)) with the add-one Monte Carlo correction of North, Curtis & Sham (2002),
  (1 + count) / (1 + resamples), so p is never 0. Unadjusted, p < 0.05 is the 95 % percentile interval of the
  difference excluding 0.
- **Wilcoxon.** A row and the best row of a column are paired on test volumes: each volume's own value of the
  metric (e.g. AP of that volume), averaged over each row's seeds; volumes where either is undefined (healthy
  volumes for voxel metrics) and zero differences are dropped. Two-sided. With n < 6 pairs the smallest
  two-sided p is 2/2^5 = 0.0625, so no test can reach p < 0.05 and none is run; the paired bootstrap keeps the
  same floor of 6 test volumes (over fewer, a bootstrap is anti-conservative: with 3 volumes there are 10
  distinct resamples, all of which can favour one row).
- **Holm.** The p-values of the rows tested within one column are Holm-adjusted (step-down, family-wise 5 %).
- **Power.** :func:`minimum_detectable_difference`: the smallest mean paired difference d that an exact
  two-sided signed-rank test at alpha' = 0.05 / m (Holm's first step over m rows) rejects with 80 % probability
  when the n paired differences are N(d, s^2). The exact null distribution of W+ comes from a dynamic programme
  once per n; power is simulated (seeded) through the Walsh averages (W+ = #{i <= j: (x_i + x_j) / 2 > 0}), so
  each replicate gives in one step the smallest shift it rejects at. d scales with s, so one simulation per
  (n, m) serves every row.
"""

from __future__ import annotations

import math
import zlib
from functools import lru_cache

import numpy as np
import pandas as pd

CONFIDENCE = 0.95
ALPHA = 0.05
#: The fewest non-zero paired differences with which a two-sided signed-rank test can reach p < 0.05.
MIN_WILCOXON_PAIRS = 6
#: Up to this many pairs the power of the signed-rank test is simulated; above it, the normal approximation.
SIMULATED_PAIRS = 100


def resample_weights(n_volumes: int, n_resamples: int, seed: int, stream: str) -> np.ndarray:
    """[resamples, volumes]: how often each volume is drawn in each bootstrap resample (each draws n_volumes
    volumes with replacement); deterministic in (seed, stream), e.g. stream = the dataset's name."""
    rng = np.random.default_rng([seed, zlib.crc32(stream.encode())])
    draws = rng.integers(0, n_volumes, size=(n_resamples, n_volumes))
    return np.stack([np.bincount(d, minlength=n_volumes) for d in draws]) if n_resamples else np.zeros((0, n_volumes), int)


def percentile_interval(values, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The central ``confidence`` interval of bootstrap values (NaN ones left out); NaN when none is left."""
    v = np.asarray(values, np.float64)
    v = v[~np.isnan(v)]
    if v.size == 0:
        return math.nan, math.nan
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(v, [tail, 100 - tail])
    return float(low), float(high)


def paired_wilcoxon(x, y) -> tuple[float, int]:
    """(two-sided p, number of non-zero paired differences) of the signed-rank test of x against y; pairs with a
    NaN are dropped; p is NaN when fewer than :data:`MIN_WILCOXON_PAIRS` differences remain."""
    from scipy.stats import wilcoxon

    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    keep = ~(np.isnan(x) | np.isnan(y))
    diff = x[keep] - y[keep]
    diff = diff[diff != 0]
    if diff.size < MIN_WILCOXON_PAIRS:
        return math.nan, int(diff.size)
    return float(wilcoxon(diff).pvalue), int(diff.size)


def paired_bootstrap_p(row, best) -> float:
    """Two-sided paired bootstrap p of row - best: ``row`` and ``best`` are a metric on the same resamples
    [resamples]; resamples where either is NaN are left out; NaN when none is left. See the module docstring."""
    row, best = np.asarray(row, np.float64), np.asarray(best, np.float64)
    diff = row - best
    diff = diff[~np.isnan(diff)]
    if diff.size == 0:
        return math.nan
    below, above = np.count_nonzero(diff <= 0), np.count_nonzero(diff >= 0)
    return float(min(1.0, 2 * (1 + min(below, above)) / (1 + diff.size)))


def min_pairs(m: int, alpha: float = ALPHA) -> int:
    """The fewest pairs with which an exact two-sided signed-rank test at alpha / m can reject:
    2 / 2^n < alpha / m, i.e. n = ceil(log2(40 m)) at alpha = 0.05."""
    return int(math.ceil(math.log2(2 * m / alpha)))


@lru_cache(maxsize=None)
def signed_rank_null(n: int) -> np.ndarray:
    """P(W+ = w), w = 0 .. n(n+1)/2, under H0 (each rank's sign a fair coin): the dynamic programme over ranks
    k = 1..n, p_k(w) = (p_{k-1}(w) + p_{k-1}(w - k)) / 2."""
    p = np.zeros(n * (n + 1) // 2 + 1)
    p[0] = 1.0
    for k in range(1, n + 1):
        top = k * (k + 1) // 2
        shifted = np.zeros(top + 1)
        shifted[k:] = p[: top + 1 - k]
        p[: top + 1] = (p[: top + 1] + shifted) / 2
    return p


def signed_rank_critical(n: int, alpha: float) -> int:
    """The largest c such that the exact two-sided test (p = 2 P(W <= min(W+, W-))) rejects at ``alpha`` when
    min(W+, W-) <= c, i.e. 2 P(W+ <= c) < alpha; -1 when no c does (too few pairs)."""
    cdf = np.cumsum(signed_rank_null(n))
    return int(np.count_nonzero(2 * cdf < alpha)) - 1


@lru_cache(maxsize=None)
def _detectable_shift(n: int, m: int, power: float, replicates: int, seed: int) -> float:
    """The smallest d / s at which the exact two-sided signed-rank test at ALPHA / m rejects in ``power`` of the
    simulated samples of n differences N(d / s, 1) (common random numbers across d)."""
    c = signed_rank_critical(n, ALPHA / m)
    if c < 0:
        return math.nan
    total = n * (n + 1) // 2
    i, j = np.triu_indices(n)
    rng = np.random.default_rng([seed, n, m])
    upper, lower = [], []
    step = max(1, 2_000_000 // total)  # replicates per chunk: bounded memory for large n
    for start in range(0, replicates, step):
        z = rng.standard_normal((min(step, replicates - start), n))
        walsh = np.partition((z[:, i] + z[:, j]) / 2, (c, total - c - 1), axis=1)  # the two order statistics used
        # shifted by d, W+ = #{walsh > -d}: W+ >= total - c (reject, upper side) iff d > -walsh[c];
        # W+ <= c (reject, lower side) iff d <= -walsh[total - c - 1]
        upper.append(-walsh[:, c])
        lower.append(-walsh[:, total - c - 1])
    upper, lower = np.sort(np.concatenate(upper)), np.sort(np.concatenate(lower))
    # power just above each candidate d = upper[k]: k + 1 upper rejections plus the lower ones (d <= lower)
    rejections = np.arange(1, upper.size + 1) + (upper.size - np.searchsorted(lower, upper, side="right"))
    reach = np.flatnonzero(rejections >= power * upper.size)
    return float(max(upper[reach[0]], 0.0)) if reach.size else math.inf


def minimum_detectable_difference(n: int, sd: float, m: int = 1, power: float = 0.8, replicates: int = 2000,
                                  seed: int = 0) -> float:
    """The smallest mean paired difference d that an exact two-sided signed-rank test at ALPHA / m rejects with
    probability ``power`` when the n differences are N(d, sd^2), by simulation (module docstring); NaN when n
    is below :func:`min_pairs` (no test possible). Deterministic in ``seed``. Above :data:`SIMULATED_PAIRS` pairs
    the simulation (cost ~ n^2) gives way to :func:`normal_detectable_difference`, within 1 % of it at n = 100."""
    if n < min_pairs(m):
        return math.nan
    if n > SIMULATED_PAIRS:
        return normal_detectable_difference(n, sd, m, power)
    return _detectable_shift(int(n), int(m), power, replicates, seed) * sd


def normal_detectable_difference(n: int, sd: float, m: int = 1, power: float = 0.8) -> float:
    """The large-sample form: (z_{1 - alpha'/2} + z_power) sd / sqrt(0.955 n), 0.955 = 3/pi being the signed-rank
    test's asymptotic relative efficiency against the t-test for normal data."""
    from scipy.stats import norm

    return (norm.ppf(1 - ALPHA / m / 2) + norm.ppf(power)) * sd / math.sqrt(3 / math.pi * n)


def holm(pvalues) -> np.ndarray:
    """Holm's step-down adjusted p-values (NaN entries are not part of the family and stay NaN)."""
    p = np.asarray(pvalues, np.float64)
    out = np.full(p.shape, math.nan)
    tested = np.flatnonzero(~np.isnan(p))
    m = tested.size
    running = 0.0
    for rank, i in enumerate(tested[np.argsort(p[tested], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def mean_ranks(means: pd.DataFrame, higher_is_better: dict) -> pd.Series:
    """Each row's mean rank over the columns (1 = best; ties share their mean rank); a row is ranked in the
    columns where it has a value."""
    ranks = pd.DataFrame({col: means[col].rank(ascending=not higher_is_better[col], method="average")
                          for col in means.columns}, index=means.index)
    return ranks.mean(axis=1)
