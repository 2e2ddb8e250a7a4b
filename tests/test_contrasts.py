"""Planned contrasts (lesionbench.leaderboard.contrasts): the effect, its interval, the test and Holm over the family."""

import numpy as np
import pandas as pd
import pytest
from scipy.stats import wilcoxon

from lesionbench.leaderboard import LeaderboardError
from lesionbench.leaderboard.contrasts import hodges_lehmann, planned_contrasts, render_contrasts


def test_hodges_lehmann_is_the_median_of_the_walsh_averages():
    assert hodges_lehmann([1.0, 2.0, 3.0]) == 2.0  # averages 1, 1.5, 2, 2, 2.5, 3
    d = np.random.default_rng(0).normal(0.3, 1.0, 25)
    walsh = [(d[i] + d[j]) / 2 for i in range(25) for j in range(i, 25)]
    assert hodges_lehmann(d) == pytest.approx(float(np.median(walsh)))
    assert hodges_lehmann([5.0, 100.0, 5.0, 5.0]) == 5.0  # robust to the outlier, unlike the mean


def _frame(shift_b: float, shift_c: float, n: int = 12, seeds=(0, 1)):
    rng = np.random.default_rng(1)
    base = rng.uniform(0.2, 0.6, n)
    rows = []
    for seed in seeds:
        noise = rng.normal(0, 0.01, (3, n))
        for label, shift, e in (("a", 0.0, noise[0]), ("b", shift_b, noise[1]), ("c", shift_c, noise[2])):
            rows += [(label, label, "set", str(seed), f"v{i}", "auprc", base[i] + shift + e[i]) for i in range(n)]
    return pd.DataFrame(rows, columns=["label", "method", "dataset", "seed", "volume", "metric", "value"])


def test_a_clear_shift_is_estimated_intervalled_and_marked_and_holm_covers_the_family_only():
    frame = _frame(0.1, 0.0)
    b, c = planned_contrasts(frame, [("b", "a"), ("c", "a")], "auprc_vol_mean", n_resamples=500)
    assert b.n_volumes == 12 and b.effect == pytest.approx(0.1, abs=0.02)
    assert b.low < b.effect < b.high and b.low > 0.05
    seed_mean = frame.groupby(["label", "volume"])["value"].mean()
    expected_p = wilcoxon(seed_mean["b"] - seed_mean["a"]).pvalue
    assert b.p == pytest.approx(expected_p)
    assert b.p_holm == pytest.approx(min(1.0, 2 * b.p))  # the smaller of two p values, times 2
    assert b.p_holm < 0.05 and c.p_holm > 0.05 and abs(c.effect) < 0.01
    assert "b - a" in render_contrasts([b, c]) and "*" in render_contrasts([b, c]).splitlines()[2]


def test_unknown_rows_and_too_few_volumes():
    with pytest.raises(LeaderboardError, match="not rows"):
        planned_contrasts(_frame(0.1, 0.0), [("b", "nope")])
    few = planned_contrasts(_frame(0.1, 0.0, n=4), [("b", "a")], n_resamples=50)[0]
    assert np.isnan(few.p) and np.isnan(few.p_holm) and few.n_volumes == 4


def test_each_seed_gets_its_own_effect_and_opposite_signs_are_flagged():
    frame = _frame(0.1, 0.0, seeds=(0, 1, 2))
    b, c = planned_contrasts(frame, [("b", "a"), ("c", "a")], n_resamples=50)
    assert [s for s, _ in b.per_seed] == ["0", "1", "2"]
    assert all(e == pytest.approx(0.1, abs=0.02) for _, e in b.per_seed) and not b.seeds_disagree
    # b beats a by 0.3 on seed 0 only and loses by 0.05 on seeds 1 and 2: the mean over seeds still favours b
    # (+0.067), the volumes' test marks it, and the per-seed effects show what carries it
    mask = (frame["label"] == "b") & (frame["seed"] == "0")
    frame.loc[mask, "value"] += 0.3 - 0.1
    frame.loc[(frame["label"] == "b") & (frame["seed"] != "0"), "value"] -= 0.15
    b = planned_contrasts(frame, [("b", "a")], n_resamples=50)[0]
    seed_mean = frame[frame["label"].isin(["a", "b"])].groupby(["label", "volume"])["value"].mean()
    assert b.effect == pytest.approx(hodges_lehmann(seed_mean["b"] - seed_mean["a"]))
    assert b.effect == pytest.approx(0.3 / 3 - 2 * 0.05 / 3, abs=0.01) and b.p < 0.01
    assert [round(e, 2) for _, e in b.per_seed] == [0.3, -0.05, -0.05] and b.seeds_disagree
    line = render_contrasts([b]).splitlines()[2]
    assert line.endswith("| " + " / ".join(f"{e:+.3f}" for _, e in b.per_seed) + " ± |"), line


def test_one_seed_has_no_per_seed_column():
    b = planned_contrasts(_frame(0.1, 0.0, seeds=(0,)), [("b", "a")], n_resamples=50)[0]
    assert b.per_seed == () and not b.seeds_disagree
    assert render_contrasts([b]).splitlines()[2].endswith("| - |")
