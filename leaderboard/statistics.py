"""The leaderboard's statistics (design §6): bootstrap confidence intervals over test volumes, paired Wilcoxon
signed-rank tests against the best row with Holm's correction, and rank aggregation over columns.

- **Bootstrap.** Test volumes are drawn with replacement (percentile bootstrap, 1000 resamples by default). One
  set of resamples per dataset, drawn from (seed, dataset name), is shared by every row, so intervals of one
  column are comparable. For each resample the pooled metric is recomputed per run from its stored maps and
  averaged over the row's seeds: the interval is that of the seed mean printed in the table. Resamples without
  a lesion voxel (the metric undefined) are left out.
- **Wilcoxon.** A row and the best row of a column are paired on test volumes: each volume's own value of the
  metric (e.g. AP of that volume), averaged over each row's seeds; volumes where either is undefined (healthy
  volumes for voxel metrics) and zero differences are dropped. Two-sided. With n < 6 pairs the smallest
  two-sided p is 2/2^5 = 0.0625, so no test can reach p < 0.05 and none is run.
- **Holm.** The p-values of the rows tested within one column are Holm-adjusted (step-down, family-wise 5 %).
"""

from __future__ import annotations

import math
import zlib

import numpy as np
import pandas as pd

CONFIDENCE = 0.95
ALPHA = 0.05
#: The fewest non-zero paired differences with which a two-sided signed-rank test can reach p < 0.05.
MIN_WILCOXON_PAIRS = 6


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
