"""Time lesionbench's exact pooled metrics against scikit-learn plus a 100-threshold Dice grid.

    python scripts/bench_metrics.py [--voxels 10000000] [--seed 0] [--prevalence 0.015]

Scores are float32 like real anomaly maps: healthy voxels ~ N(0, 1), lesion voxels (1-2 %) shifted by
+2. Each side is timed with time.perf_counter, best of --repeats runs.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

try:
    from lesionbench.metrics import pooled_curve_metrics
except ImportError:  # run from a checkout without the package installed
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmark" / "metrics.py"
    spec = importlib.util.spec_from_file_location("lesionbench_metrics", path)
    _metrics = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(_metrics)
    pooled_curve_metrics = _metrics.pooled_curve_metrics


def sklearn_metrics(scores: np.ndarray, labels: np.ndarray, steps: int = 100) -> dict[str, float]:
    """The usual approach: sklearn AP and AUROC, best Dice over a fixed grid of thresholds."""
    grid = np.linspace(scores.min(), scores.max(), steps)
    n_lesion = np.count_nonzero(labels)
    best, best_t = 0.0, float("nan")
    for t in grid:
        pred = scores >= t
        dice = 2 * np.count_nonzero(pred & labels) / (np.count_nonzero(pred) + n_lesion)
        if dice > best:
            best, best_t = dice, float(t)
    return dict(
        auprc=average_precision_score(labels, scores),
        auroc=roc_auc_score(labels, scores),
        dice_best=best,
        dice_best_threshold=best_t,
    )


def best_of(repeats: int, fn, *args):
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn(*args)
        times.append(time.perf_counter() - t0)
    return min(times), result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--voxels", type=int, default=10_000_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prevalence", type=float, default=0.015)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args(argv)

    rng = np.random.default_rng(a.seed)
    labels = rng.random(a.voxels) < a.prevalence
    scores = rng.standard_normal(a.voxels, dtype=np.float32)
    scores[labels] += 2.0
    print(f"{a.voxels:,} float32 voxel scores, {labels.mean():.2%} lesion, "
          f"{np.unique(scores).size:,} distinct values; best of {a.repeats}")

    t_ours, ours = best_of(a.repeats, pooled_curve_metrics, scores, labels)
    t_sk, sk = best_of(a.repeats, sklearn_metrics, scores, labels)

    print(f"lesionbench pooled_curve_metrics (exact AP, AUROC, best Dice): {t_ours:8.4f} s")
    print(f"sklearn AP + AUROC + 100-step Dice grid:                       {t_sk:8.4f} s")
    print(f"ratio sklearn / ours: {t_sk / t_ours:.1f}x")
    diff = max(abs(ours["auprc"] - sk["auprc"]), abs(ours["auroc"] - sk["auroc"]))
    print(f"auprc  ours {ours['auprc']:.10f}  sklearn {sk['auprc']:.10f}")
    print(f"auroc  ours {ours['auroc']:.10f}  sklearn {sk['auroc']:.10f}")
    print(f"largest |difference| auprc/auroc: {diff:.3g}")
    print(f"dice_best exact {ours['dice_best']:.6f} at {ours['dice_best_threshold']:.6f}; "
          f"100-step grid {sk['dice_best']:.6f} at {sk['dice_best_threshold']:.6f} "
          f"(exact - grid = {ours['dice_best'] - sk['dice_best']:.3g}, expected >= 0)")
    if diff > 1e-6 or ours["dice_best"] < sk["dice_best"]:
        sys.exit("mismatch with scikit-learn")


if __name__ == "__main__":
    main()
