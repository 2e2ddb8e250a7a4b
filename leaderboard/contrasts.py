"""Planned contrasts: a few paired comparisons fixed before looking at the results, not a horse race.

Each contrast compares a row with a reference row on one dataset, over the test volumes both were scored on
(per-volume values, each the mean over the row's seeds; a cross-validation's volumes are the union of its
folds'):

- effect: the Hodges-Lehmann estimate of the paired difference (row - reference), the median of the Walsh
  averages (d_i + d_j) / 2, i <= j, of the per-volume differences (Hollander & Wolfe, the estimator matched to
  the signed-rank test);
- a 95 % percentile bootstrap interval of that estimate, resampling volumes (pairs kept together);
- the two-sided Wilcoxon signed-rank test of the differences, Holm-corrected over the planned family on
  that dataset only (the contrasts asked for, not every pair of rows);
- the same effect on each seed the two rows share, alone. The test's unit is the volume: averaging over seeds
  first keeps the training runs' own variance out of it, so one seed far from the others can carry a marked
  effect. Effects of opposite sign across seeds say so; the table flags them.

With fewer than ``MIN_WILCOXON_PAIRS`` non-zero differences no test can reach p < 0.05 and none is run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from lesionbench.leaderboard import LeaderboardError
from lesionbench.leaderboard import statistics as S
from lesionbench.leaderboard.rescoring import PER_VOLUME_KEY


def hodges_lehmann(differences) -> float:
    """The median of the Walsh averages of ``differences`` (NaN when there are none)."""
    d = np.asarray(differences, np.float64)
    if d.size == 0:
        return math.nan
    i, j = np.triu_indices(d.size)
    return float(np.median((d[i] + d[j]) / 2))


@dataclass
class Contrast:
    dataset: str
    row: str
    reference: str
    metric: str
    n_volumes: int
    effect: float
    low: float
    high: float
    p: float = math.nan
    p_holm: float = math.nan
    per_seed: tuple[tuple[str, float], ...] = ()  # (seed, effect on that seed alone), seeds both rows share

    @property
    def seeds_disagree(self) -> bool:
        """Two seeds give non-zero effects of opposite sign."""
        signs = {np.sign(e) for _, e in self.per_seed if e != 0 and not math.isnan(e)}
        return len(signs) > 1


def seed_means(per_volume: pd.DataFrame, metric: str) -> dict:
    """dataset -> label -> Series of the per-volume ``metric`` averaged over seeds, indexed by volume."""
    frame = per_volume[per_volume["metric"] == metric]
    out: dict = {}
    for (dataset, label), group in frame.groupby(["dataset", "label"]):
        out.setdefault(dataset, {})[label] = group.groupby("volume")["value"].mean()
    return out


def per_seed_effects(per_volume: pd.DataFrame, metric: str, dataset: str, row: str, reference: str):
    """((seed, Hodges-Lehmann effect of row - reference on that seed's volumes), ...) over the seeds both rows
    have on ``dataset``, in seed order; empty with fewer than two such seeds."""
    frame = per_volume[(per_volume["metric"] == metric) & (per_volume["dataset"] == dataset)]
    by_seed = {label: {str(s): g.groupby("volume")["value"].mean() for s, g in frame[frame["label"] == label].groupby("seed")}
               for label in (row, reference)}
    shared = sorted(set(by_seed[row]) & set(by_seed[reference]), key=lambda s: (len(s), s))
    if len(shared) < 2:
        return ()
    out = []
    for s in shared:
        both = pd.concat([by_seed[row][s], by_seed[reference][s]], axis=1, join="inner").dropna()
        out.append((s, hodges_lehmann((both.iloc[:, 0] - both.iloc[:, 1]).to_numpy())))
    return tuple(out)


def planned_contrasts(per_volume: pd.DataFrame, pairs, metric: str = "auprc_vol_mean", n_resamples: int = 2000,
                      seed: int = 0) -> list[Contrast]:
    """The contrasts ``pairs`` ((row, reference), ...) on every dataset where both rows have per-volume values."""
    if per_volume is None or per_volume.empty:
        raise LeaderboardError("no per-volume values: planned contrasts need the runs' stored test maps")
    key = PER_VOLUME_KEY.get(metric, metric)
    values = seed_means(per_volume, key)
    if not values:
        raise LeaderboardError(f"no per-volume values of {metric!r}; per-volume columns: {sorted(PER_VOLUME_KEY)}")
    labels = {label for rows in values.values() for label in rows}
    unknown = sorted({name for pair in pairs for name in pair} - labels)
    if unknown:
        raise LeaderboardError(f"contrast rows {unknown} are not rows of these runs; rows: {sorted(labels)}")
    out = []
    for dataset in sorted(values):
        rows = values[dataset]
        family = []
        for row, reference in pairs:
            if row not in rows or reference not in rows:
                continue
            both = pd.concat([rows[row], rows[reference]], axis=1, join="inner").dropna()
            d = (both.iloc[:, 0] - both.iloc[:, 1]).to_numpy()
            contrast = Contrast(dataset, row, reference, metric, len(d), hodges_lehmann(d), math.nan, math.nan)
            if len(d) > 1 and n_resamples:
                rng = np.random.default_rng([seed, len(d)])
                picks = rng.integers(0, len(d), size=(n_resamples, len(d)))
                contrast.low, contrast.high = S.percentile_interval([hodges_lehmann(d[p]) for p in picks])
            contrast.p, _ = S.paired_wilcoxon(both.iloc[:, 0].to_numpy(), both.iloc[:, 1].to_numpy())
            contrast.per_seed = per_seed_effects(per_volume, key, dataset, row, reference)
            family.append(contrast)
        tested = [c for c in family if not math.isnan(c.p)]
        for c, p in zip(tested, S.holm([c.p for c in tested])):
            c.p_holm = float(p)
        out += family
    return out


def render_contrasts(contrasts: list[Contrast], alpha: float = S.ALPHA) -> str:
    """A Markdown table: one line per contrast and dataset; * marks p_Holm < alpha."""
    if not contrasts:
        return "No planned contrast has both of its rows on any dataset."
    lines = ["| dataset | contrast | volumes | effect (HL) | 95% interval | p | p (Holm) | per seed (HL) |",
             "| --- | --- | ---: | ---: | --- | ---: | ---: | --- |"]
    for c in contrasts:
        mark = " *" if c.p_holm < alpha else ""
        interval = "-" if math.isnan(c.low) else f"[{c.low:+.3f}, {c.high:+.3f}]"
        p = "-" if math.isnan(c.p) else f"{c.p:.3g}"
        ph = "-" if math.isnan(c.p_holm) else f"{c.p_holm:.3g}{mark}"
        seeds = " / ".join(f"{e:+.3f}" for _, e in c.per_seed) + (" ±" if c.seeds_disagree else "") if c.per_seed else "-"
        lines.append(f"| {c.dataset} | {c.row} - {c.reference} | {c.n_volumes} | {c.effect:+.3f} | {interval} | {p} | {ph} "
                     f"| {seeds} |")
    metric = contrasts[0].metric
    lines.append("")
    lines.append(f"Per-volume {metric} (each the mean over the row's seeds), row - reference. Effect: Hodges-Lehmann estimate; "
                 "interval: percentile bootstrap over volumes; p: two-sided Wilcoxon signed-rank; Holm over the planned "
                 f"contrasts on each dataset; * p (Holm) < {alpha}. '-': fewer than {S.MIN_WILCOXON_PAIRS} non-zero "
                 "differences, no test can reach p < 0.05. Per seed: the effect on each seed's own per-volume values, "
                 "in seed order ('-': fewer than two seeds); ± marks seeds whose effects have opposite signs, where "
                 "the effect over seed means rests on which seeds ran, which the test (over volumes) does not see.")
    return "\n".join(lines)
