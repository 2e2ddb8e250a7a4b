"""Where each row's maps put their highest scores (#22: where attributions fall, where a guided decoding edits).

The qualitative grid shows four slices; these two numbers summarise every lesioned test volume, from the
maps the runs stored (``scores.npz``), over brain voxels:

- **top precision** (R-precision): the share of lesion voxels among the volume's ``n`` highest-scoring voxels,
  ``n`` its number of lesion voxels. Voxels tied at the cut count by their share (the expected value under a
  random order of the ties). It depends on ranks only, like AP, so a monotone rescaling of a map leaves it
  unchanged. A map that ranks at random expects the volume's lesion prevalence, a perfect map scores 1; *lift*
  is the ratio to prevalence.
- **floor share**: the share of brain voxels tied at the map's lowest value, voxels the map does not rank at
  all. An attribution map keeps its positive part, so a classifier whose attributions all turned negative or
  zero leaves most of the brain on the floor.
- **slice AUROC** of the run's slice scores (every test volume, ambiguous slices left out, as
  ``test/slice_auroc``), beside a reference that sees no image: the **brain area** of each slice (its brain
  voxel count) as its score. Lesions sit where there is brain, so lesioned slices tend to be the large central
  ones; a slice AUROC near the brain area's does not show that the map sees lesions (the slice objective of
  #22's studies can be met by anatomy).

Per run, the mean over its lesioned test volumes; per row, the mean ± sd over seeds. The folds of a
cross-validation pool into one sample per seed, as in the leaderboard.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

COLUMNS = ("label", "seeds", "volumes", "top_precision", "top_precision_sd", "prevalence", "lift", "floor_share",
           "slice_auroc")


def top_precision(scores: np.ndarray, truth: np.ndarray) -> float:
    """Lesion share among the ``truth.sum()`` highest scores, ties at the cut counted by their share; NaN
    without lesion voxels."""
    scores = np.asarray(scores, np.float64).ravel()
    truth = np.asarray(truth, bool).ravel()
    n = int(truth.sum())
    if n == 0:
        return math.nan
    cut = np.partition(scores, scores.size - n)[scores.size - n]  # the n-th highest score
    above, at = scores > cut, scores == cut
    hits = np.count_nonzero(truth & above) + (n - np.count_nonzero(above)) * truth[at].mean()
    return float(hits / n)


def floor_share(scores: np.ndarray) -> float:
    """Share of the scores tied at their minimum (voxels the map leaves unranked)."""
    scores = np.asarray(scores).ravel()
    return float(np.count_nonzero(scores == scores.min()) / scores.size) if scores.size else math.nan


def _known_slices(volumes, score) -> tuple[np.ndarray, np.ndarray]:
    """(slice scores, slice is lesioned) over every volume's slices with a known label (not -1)."""
    scores = np.concatenate([np.asarray(score(v), np.float64).ravel() for v in volumes])
    labels = np.concatenate([np.asarray(v.slice_labels).ravel() for v in volumes])
    return scores[labels >= 0], labels[labels >= 0] == 1


def slice_auroc(volumes, score=lambda v: v.slice_scores) -> float:
    """Slice AUROC of ``score(volume)`` ([D] per volume; default the stored slice scores) pooled over the
    volumes, ambiguous slices left out; NaN without both classes."""
    from lesionbench.metrics import roc_auc

    scores, lesioned = _known_slices(volumes, score)
    if lesioned.all() or not lesioned.any():
        return math.nan
    return float(roc_auc(scores, lesioned))


def brain_area_slice_auroc(volumes) -> float:
    """The reference that sees no image: each slice scored by its number of brain voxels."""
    return slice_auroc(volumes, lambda v: np.asarray(v.brain, bool).reshape(len(v.slice_labels), -1).sum(axis=1))


def volume_placement(volumes) -> dict[str, float]:
    """Means over the lesioned volumes (``ScoredVolume``) of top precision, prevalence and floor share, and the
    slice AUROC over all of them."""
    volumes = list(volumes)
    auroc = slice_auroc(volumes) if volumes else math.nan
    rows = []
    for v in volumes:
        brain = np.asarray(v.brain, bool)
        truth = np.asarray(v.lesion, bool)[brain]
        if not truth.any():
            continue
        scores = np.asarray(v.map, np.float64)[brain]
        rows.append((top_precision(scores, truth), truth.mean(), floor_share(scores)))
    if not rows:
        return dict(volumes=0, top_precision=math.nan, prevalence=math.nan, floor_share=math.nan, slice_auroc=auroc)
    a = np.asarray(rows)
    return dict(volumes=len(rows), top_precision=a[:, 0].mean(), prevalence=a[:, 1].mean(), floor_share=a[:, 2].mean(),
                slice_auroc=auroc)


def placement_table(runs: pd.DataFrame, dataset: str, labels=None) -> pd.DataFrame:
    """One row per label on ``dataset`` (``labels``' order, else sorted) from the runs' stored maps
    (``load_runs``' frame), sampled as the leaderboard samples them; labels without stored maps are left out.
    ``attrs["brain_area_slice_auroc"]``: the brain-area reference on the test slices (one split per dataset)."""
    from lesionbench.leaderboard.tables import _samples, stored_volumes

    samples, _ = _samples(runs[runs["tags.dataset"] == dataset], ())
    labels = list(labels) if labels is not None else sorted({s.label for s in samples})
    out, reference = [], math.nan
    with tempfile.TemporaryDirectory(prefix="lesionbench-placement-") as tmp:
        for label in labels:
            per_seed = []
            for sample in (s for s in samples if s.label == label):  # one run, or a cross-validation's folds
                per_run = stored_volumes(sample, Path(tmp), runs.attrs.get("tracking_uri"))
                if per_run:
                    volumes = [v for read in per_run for v in read]
                    per_seed.append(volume_placement(volumes))
                    if math.isnan(reference):
                        reference = brain_area_slice_auroc(volumes)
            if not per_seed:
                continue
            s = pd.DataFrame(per_seed)
            out.append(dict(label=label, seeds=len(s), volumes=int(s["volumes"].max()),
                            top_precision=s["top_precision"].mean(),
                            top_precision_sd=s["top_precision"].std(ddof=1) if len(s) > 1 else math.nan,
                            prevalence=s["prevalence"].mean(), lift=s["top_precision"].mean() / s["prevalence"].mean(),
                            floor_share=s["floor_share"].mean(), slice_auroc=s["slice_auroc"].mean()))
    table = pd.DataFrame(out, columns=list(COLUMNS))
    table.attrs["brain_area_slice_auroc"] = reference
    return table


def render_placement(table: pd.DataFrame, dataset: str) -> str:
    """The table as Markdown, with what the columns mean."""
    lines = [f"| {dataset}: label | seeds | lesioned volumes | top precision | lift | floor share | slice AUROC |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in table.itertuples():
        sd = "" if math.isnan(r.top_precision_sd) else f" ± {r.top_precision_sd:.3f}"
        lines.append(f"| {r.label} | {r.seeds} | {r.volumes} | {r.top_precision:.3f}{sd} | {r.lift:.2f} | {r.floor_share:.3f} "
                     f"| {r.slice_auroc:.3f} |")
    area = table.attrs.get("brain_area_slice_auroc", math.nan)
    prevalence = table["prevalence"].iloc[0] if len(table) else math.nan
    lines += ["", f"Per lesioned test volume, over brain voxels: top precision, the lesion share among the volume's n "
              f"highest-scoring voxels (n its lesion voxels; ties at the cut counted by their share), mean over "
              f"volumes, then mean ± sd over seeds; lift: top precision / lesion prevalence (a map ranking at random "
              f"expects 1; prevalence here {prevalence:.4f}); floor share: brain voxels tied at the map's lowest "
              f"value, which the map leaves unranked; slice AUROC: of the run's slice scores over every test volume "
              f"(ambiguous slices left out), mean over seeds. A slice's brain area alone, no image seen, scores slice "
              f"AUROC {area:.3f} here: a row near it has not shown that its slice scores see lesions. From the maps "
              f"each run stored (float16)."]
    return "\n".join(lines) + "\n"
