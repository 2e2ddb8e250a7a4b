"""Read FINISHED ``run_kind=run`` runs (the latest per cell) and make the leaderboard (design §6): rows =
``label``, columns = datasets x metrics, mean ± std over seeds, a 95 % bootstrap interval over test volumes,
tests against the best row (paired Wilcoxon for per-volume columns, paired bootstrap for pooled ones;
Holm-corrected), the power of the test stated per dataset, a mean rank; rendered as Markdown, LaTeX (booktabs),
long CSV, a rich terminal table or an HTML page (:mod:`lesionbench.leaderboard.report`).

Cross-validation: the runner tags each fold run ``fold`` (0-based) and ``folds`` (K) and logs ``cv_hash`` (the
whole fold assignment). The K fold runs of one (label, seed) are one sample: its test volumes are the union of
the folds' (each scored by its own fold's model, thresholds each fold's own), pooled metrics are recomputed from
the stored maps of all folds together and per-volume values concatenated; timings are the mean over the folds.

The statistics come from each run's stored test maps (``scores.npz``, :mod:`.rescoring`); how they are
computed is documented in :mod:`.statistics`.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

import numpy as np
import pandas as pd

from lesionbench.leaderboard import LeaderboardError
from lesionbench.leaderboard import statistics as S
from lesionbench.leaderboard.rescoring import PER_VOLUME_KEY, RESCORABLE, THRESHOLDS, VOLUME_MEANS, RunScores

DEFAULT_METRICS = ("auprc", "auroc", "dice_best", "dice_val", "auprc_vol_mean", "fit_s", "predict_ms")
#: metric key in the table -> (MLflow metric, scale, higher is better)
COLUMNS = {
    "auprc": ("test/auprc", 1.0, True),
    "auroc": ("test/auroc", 1.0, True),
    "dice_best": ("test/dice_best", 1.0, True),
    "dice_val": ("test/dice_val", 1.0, True),
    "dice_val_vol_mean": ("test/dice_val_vol_mean", 1.0, True),
    "auprc_vol_mean": ("test/auprc_vol_mean", 1.0, True),
    "dice_fpr5": ("test/dice_fpr5", 1.0, True),
    "slice_auroc": ("test/slice_auroc", 1.0, True),
    "slice_ap": ("test/slice_ap", 1.0, True),
    # Wolleb et al. (2022)'s per-slice protocol (Otsu per diseased slice): beside that paper, not beside ours
    "wolleb_dice": ("wolleb_protocol/dice_otsu", 1.0, True),
    "wolleb_auroc": ("wolleb_protocol/auroc", 1.0, True),
    "fit_s": ("time/fit_s", 1.0, False),
    "predict_ms": ("time/predict_s_per_slice", 1000.0, False),
}
#: Timings are shown, never bolded or ranked: they depend on the device, not on the method alone.
QUALITY = tuple(m for m, (_, _, higher) in COLUMNS.items() if higher)
TIMINGS = ("fit_s", "predict_ms")
#: Per-volume columns (a mean over lesioned test volumes): paired Wilcoxon; the other re-scorable columns are
#: pooled: paired bootstrap (:mod:`.statistics`).
PER_VOLUME_COLUMNS = tuple(VOLUME_MEANS)
POOLED_COLUMNS = tuple(m for m in RESCORABLE if m not in VOLUME_MEANS)
WOLLEB = {"wolleb_dice": "dice_otsu", "wolleb_auroc": "auroc"}
HEADERS = {"dice_best": "⌈Dice⌉", "fit_s": "fit s", "predict_ms": "ms/slice", "wolleb_dice": "Otsu Dice (Wolleb)",
           "wolleb_auroc": "AUROC per slice (Wolleb)", "auprc_vol_mean": "AP per volume",
           "dice_val_vol_mean": "Dice per volume"}
CONSISTENT_PER_DATASET = ("params.data.preprocessing_hash", "params.split_hash", "tags.eval_space")
#: Fold runs of a cross-validation differ in split_hash by design; they share cv_hash (and K).
CONSISTENT_PER_CV_DATASET = ("params.data.preprocessing_hash", "params.cv_hash", "tags.folds", "tags.eval_space")
FOLD, FOLDS = "tags.fold", "tags.folds"
SIGNIFICANT, VAL_VOXEL_LABELS, REUSED_PARTS, SEED_SPREAD, UNTUNED = "†", "‡", "§", "≈", "°"
#: in the label of a study's best configuration (``lesionbench tune`` writes LABEL-tuned into best.toml; --label
#: names such as wolleb-tuned-auprc keep it)
TUNED_MARK = "-tuned"
MEAN_RANK = "mean rank"
#: Seeds from which the "within seed spread" mark is given.
MIN_SEEDS_FOR_SPREAD = 3

WOLLEB_PROTOCOL = ("Otsu Dice / AUROC per slice (Wolleb): Wolleb et al. (2022)'s protocol on each diseased test slice, an Otsu "
                   "threshold for Dice and the slice's voxel AUROC, averaged over diseased slices only; comparable with that "
                   "paper's table, not with the pooled columns")
TIMING = "fit s: training wall time; ms/slice: inference time per test slice (device-dependent, not ranked)"
DEFINITIONS = {
    "auprc": "auprc: average precision over all test brain voxels pooled (primary)",
    "auroc": "auroc: voxel AUROC, pooled",
    "dice_best": "⌈Dice⌉: best pooled Dice over all thresholds chosen on the test set — an upper bound, not an achievable score",
    "dice_val": "dice_val: pooled test Dice at the threshold that maximises pooled Dice on the validation split (uses validation voxel labels)",
    "dice_val_vol_mean": "Dice per volume (dice_val_vol_mean): the dice_val threshold, Dice per test volume with lesions, averaged (uses validation voxel labels)",
    "auprc_vol_mean": "AP per volume (auprc_vol_mean): average precision of each test volume with lesions, averaged (healthy volumes left out)",
    "dice_fpr5": "dice_fpr5: pooled test Dice at the threshold that flags 5 % of the brain voxels of healthy validation slices (image labels only)",
    "slice_auroc": "slice_auroc / slice_ap: slice-level detection from the slice score",
    "slice_ap": "slice_auroc / slice_ap: slice-level detection from the slice score",
    "wolleb_dice": WOLLEB_PROTOCOL,
    "wolleb_auroc": WOLLEB_PROTOCOL,
    "fit_s": TIMING,
    "predict_ms": TIMING,
}


def load_runs(tracking_uri, experiment: str = "lesionbench") -> pd.DataFrame:
    """The latest FINISHED ``run_kind=run`` run of each cell, from one store or several (``tracking_uri`` a
    URI or a list of them): one table can hold rows run in different workdirs, say untuned context rows
    reused from an earlier grid beside a study's tuned rows. Each row keeps its store (``tracking_uri``) for
    its artifacts; the per-dataset checks (one split, one preprocessing) then apply across the stores."""
    uris = [tracking_uri] if isinstance(tracking_uri, str) else list(tracking_uri)
    frames = [_runs_of_store(uri, experiment) for uri in uris]
    df = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    # the latest finished run of each cell (a cell run again in a second store counts once)
    df = df.sort_values("start_time", ascending=False).drop_duplicates("tags.cell").reset_index(drop=True)
    df.attrs["tracking_uri"] = uris[0] if len(uris) == 1 else None
    return df


def _runs_of_store(tracking_uri: str, experiment: str) -> pd.DataFrame:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise LeaderboardError(f"no experiment {experiment!r} in {tracking_uri}: nothing has run there yet")
    runs, token = [], None
    while True:
        page = client.search_runs([exp.experiment_id], "attributes.status = 'FINISHED' and tags.run_kind = 'run'",
                                  max_results=1000, order_by=["attributes.start_time DESC"], page_token=token)
        runs += page
        token = page.token
        if not token:
            break
    rows = []
    for r in runs:
        row = {"run_id": r.info.run_id, "start_time": r.info.start_time, "artifact_uri": r.info.artifact_uri,
               "tracking_uri": tracking_uri}
        row.update({f"tags.{k}": v for k, v in r.data.tags.items()})
        row.update({f"params.{k}": v for k, v in r.data.params.items()})
        row.update({f"metrics.{k}": v for k, v in r.data.metrics.items()})
        rows.append(row)
    if not rows:
        raise LeaderboardError(f"no finished runs in {tracking_uri} (experiment {experiment!r})")
    return pd.DataFrame(rows)


def artifact_path(run: pd.Series, name: str, scratch: Path, tracking_uri: str | None = None) -> Path | None:
    """A run's artifact as a local file: read in place from a local artifact store, else downloaded into
    ``scratch``; None when the run has no such artifact."""
    tracking_uri = run.get("tracking_uri") or tracking_uri  # the run's own store, when runs of several are merged
    uri = str(run.get("artifact_uri") or "")
    parsed = urlparse(uri)
    if uri and parsed.scheme in ("", "file"):
        path = Path(url2pathname(parsed.path)) / name
        return path if path.exists() else None
    import mlflow

    try:
        return Path(mlflow.artifacts.download_artifacts(run_id=run["run_id"], artifact_path=name,
                                                        dst_path=str(scratch / run["run_id"]), tracking_uri=tracking_uri))
    except Exception:  # MLflow raises several types for a missing artifact
        return None


def is_fold_run(runs: pd.DataFrame) -> pd.Series:
    """Which runs are folds of a cross-validation (tagged ``fold``)."""
    if FOLD not in runs:
        return pd.Series(False, index=runs.index)
    return runs[FOLD].notna() & (runs[FOLD].astype(str) != "")


def _check_consistent(runs: pd.DataFrame) -> None:
    folds = is_fold_run(runs)
    for dataset, group in runs.groupby("tags.dataset"):
        cv = folds[group.index]
        if cv.any() and not cv.all():
            raise LeaderboardError(
                f"dataset {dataset}: {int(cv.sum())} cross-validation fold runs and {int((~cv).sum())} single-split runs; "
                "one table cannot mix them (a fold row pools every case, a single-split row tests a few) — use separate "
                "workdirs or experiments")
        for key in CONSISTENT_PER_CV_DATASET if cv.any() else CONSISTENT_PER_DATASET:
            values = group[key].dropna().unique() if key in group else []
            if len(values) > 1:
                raise LeaderboardError(
                    f"dataset {dataset}: runs differ in {key.split('.', 1)[1]} ({', '.join(map(str, values))}); "
                    "they cannot share one table — use separate workdirs or experiments"
                )
        for label, rows in group.groupby("tags.label"):
            configs = rows["params.config_hash"].unique()
            if len(configs) > 1:
                raise LeaderboardError(
                    f"label {label!r} on {dataset} has {len(configs)} different configurations "
                    f"(config_hash {', '.join(configs)}); give each configuration its own label"
                )
            objectives = rows["params.objective"].dropna().unique() if "params.objective" in rows else []
            if len(objectives) > 1:  # another objective keeps other checkpoints (log.evaluate): another row
                raise LeaderboardError(
                    f"label {label!r} on {dataset} has runs under {len(objectives)} validation objectives "
                    f"({', '.join(sorted(objectives))}); give each objective its own label"
                )


def _select(runs: pd.DataFrame, metrics, datasets) -> pd.DataFrame:
    unknown = [m for m in metrics if m not in COLUMNS]
    if unknown:
        raise LeaderboardError(f"unknown metric(s) {unknown}; choose from {', '.join(COLUMNS)}")
    if datasets:
        missing = sorted(set(datasets) - set(runs["tags.dataset"]))
        if missing:
            raise LeaderboardError(f"no finished runs on {', '.join(missing)}")
        runs = runs[runs["tags.dataset"].isin(datasets)]
    _check_consistent(runs)
    return runs


def build_table(runs: pd.DataFrame, metrics=DEFAULT_METRICS, datasets=None) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(means, stds, seed counts), each indexed by label with (dataset, metric) columns (no statistics; the stored
    maps are read only for cross-validation rows, whose pooled metrics come from them)."""
    lb = build_leaderboard(runs, metrics, datasets, n_resamples=0, statistics=False)
    return lb.means, lb.stds, lb.counts


# -- the leaderboard with its statistics -----------------------------------------------------------------


@dataclass
class Sample:
    """One (label, dataset, seed) value of the table: one run, or the K fold runs of a cross-validation."""

    label: str
    dataset: str
    seed: str
    runs: list  # pd.Series, by fold
    folds: int | None = None  # K for a cross-validation sample
    values: dict = field(default_factory=dict)  # metric -> value (scaled as in the table)

    @property
    def method(self) -> str:
        return self.runs[0]["tags.method"]


@dataclass
class Leaderboard:
    """Everything a rendering needs; frames are indexed by label with (dataset, metric) columns."""

    metrics: tuple[str, ...]
    runs: pd.DataFrame
    means: pd.DataFrame
    stds: pd.DataFrame
    counts: pd.DataFrame
    ci_low: pd.DataFrame
    ci_high: pd.DataFrame
    p_holm: pd.DataFrame  # Holm-adjusted p of the test against the column's best row (NaN: not tested)
    best: dict  # column -> best label (None: no bold, e.g. a timing or a single row)
    mean_rank: pd.Series
    data: dict  # dataset -> n_volumes, n_lesion_volumes, prevalence, folds (K or None), power (text or None)
    val_voxel_rows: list[str]
    seeds: list[str]
    n_resamples: int
    bootstrap_seed: int
    notes: list[str] = field(default_factory=list)
    per_volume: pd.DataFrame | None = None  # long: label, method, dataset, seed, volume, metric, value
    lesions: pd.DataFrame | None = None  # label, dataset, seed, case_id, size, detected, dice
    reused: dict = field(default_factory=dict)  # (label, dataset) -> cached trained parts its runs loaded
    samples: pd.DataFrame | None = None  # long: label, method, dataset, seed, metric, value (the table's inputs)
    tests: dict = field(default_factory=dict)  # column -> "wilcoxon" or "bootstrap": the test its p_holm comes from
    seed_spread: set = field(default_factory=set)  # (label, column): gap to the best within the seeds' spread

    @property
    def columns(self) -> list[tuple[str, str]]:
        return list(self.means.columns)

    @property
    def untuned_rows(self) -> list[str]:
        """In a table with tuned rows (a study's best configuration: ``-tuned`` in the label), the rows that
        were not tuned by a study of their own: context at the profile's defaults or at settings their label names
        (a post hoc control takes another row's tuned settings), not a tuned twin. Empty when no row is tuned."""
        labels = list(self.means.index)
        if not any(TUNED_MARK in str(label) for label in labels):
            return []
        return [label for label in labels if TUNED_MARK not in str(label)]


def seed_key(seed) -> tuple:
    s = str(seed)
    return (0, int(s), "") if s.lstrip("-").isdigit() else (1, 0, s)


def run_key(run: pd.Series) -> tuple:
    """Runs in (seed, fold) order."""
    fold = run.get(FOLD)
    return seed_key(run["tags.seed"]) + (int(fold) if isinstance(fold, str) and fold.isdigit() else -1,)


def _seed_order(seeds) -> list[str]:
    return sorted({str(s) for s in seeds}, key=seed_key)


def _logged(run: pd.Series, metric: str) -> float:
    key, scale, _ = COLUMNS[metric]
    v = run.get(f"metrics.{key}")
    return math.nan if v is None or pd.isna(v) else float(v) * scale


def _samples(runs: pd.DataFrame, metrics) -> tuple[list[Sample], list[str]]:
    """The table's samples, with the values known from the logged metrics; notes on incomplete cross-validations."""
    samples, notes = [], []
    folds = is_fold_run(runs)
    for (dataset, label, seed), group in runs.groupby(["tags.dataset", "tags.label", "tags.seed"], sort=True):
        rows = sorted((r for _, r in group.iterrows()), key=run_key)
        if not folds[group.index].any():
            samples += [Sample(label, dataset, str(seed), [r], values={m: _logged(r, m) for m in metrics}) for r in rows]
            continue
        k = int(rows[0][FOLDS])
        by_fold = {}
        for r in sorted(rows, key=lambda r: r["start_time"]):  # a fold run twice (another cell): the latest
            by_fold[int(r[FOLD])] = r
        missing = sorted(set(range(k)) - set(by_fold))
        if missing:
            notes.append(f"{label} (seed {seed}) on {dataset}: fold(s) {', '.join(map(str, missing))} of {k} have no "
                         "finished run, so this seed is left out (a partial cross-validation tests only some cases).")
            continue
        fold_runs = [by_fold[i] for i in range(k)]
        timings = {m: float(np.mean([_logged(r, m) for r in fold_runs])) for m in metrics if m in TIMINGS}
        samples.append(Sample(label, dataset, str(seed), fold_runs, k, timings))
    return samples, notes


def stored_volumes(sample: Sample, scratch: Path, uri: str | None) -> list[list] | None:
    """Each of the sample's runs' stored test volumes (ScoredVolume), by run; None when a run stored no maps."""
    from lesionbench.tracking import read_scores

    per_run = []
    for run in sample.runs:
        path = artifact_path(run, "scores.npz", scratch, uri)
        if path is None:
            return None
        per_run.append(read_scores(path))
    return per_run


def _read_sample(sample: Sample, scratch: Path, uri: str | None):
    """(RunScores of the sample's test volumes, the ScoredVolumes) or None when a run stored no maps. Fold runs:
    the union of their volumes in case order, each volume with its own fold's thresholds."""
    per_run = stored_volumes(sample, scratch, uri)
    if per_run is None:
        return None
    volumes, thresholds = [], {k: [] for k in THRESHOLDS}
    for run, read in zip(sample.runs, per_run):
        volumes += read
        for k in THRESHOLDS:
            thresholds[k] += [float(run.get(f"metrics.threshold/{k}", math.nan))] * len(read)
    ids = [v.case_id for v in volumes]
    if len(set(ids)) < len(ids):
        raise LeaderboardError(f"{sample.label} (seed {sample.seed}) on {sample.dataset}: the folds' test volumes overlap "
                               f"({', '.join(sorted({c for c in ids if ids.count(c) > 1}))}); a cross-validation tests each case once")
    order = np.argsort(ids, kind="stable")
    volumes = [volumes[i] for i in order]
    thresholds = {k: np.asarray(v, np.float64)[order] for k, v in thresholds.items()}
    run_id = ",".join(r["run_id"] for r in sample.runs)
    return RunScores.of(run_id, volumes, thresholds), volumes


def build_leaderboard(runs: pd.DataFrame, metrics=DEFAULT_METRICS, datasets=None, n_resamples: int = 1000,
                      bootstrap_seed: int = 0, statistics: bool = True) -> Leaderboard:
    """The table and its statistics. ``statistics=False`` skips reading the stored maps (no intervals, tests
    or per-volume values) except for cross-validation rows, whose values come from them; ``n_resamples=0`` keeps
    the Wilcoxon tests of per-volume columns but draws no bootstrap (no interval, no test of pooled columns)."""
    metrics = tuple(metrics)
    runs = _select(runs, metrics, datasets)
    samples, notes = _samples(runs, metrics)
    loaded = _load(samples, runs, metrics, n_resamples if statistics else 0, bootstrap_seed, statistics)
    long = pd.DataFrame([(s.label, s.method, s.dataset, s.seed, m, v) for s in samples for m, v in s.values.items()],
                        columns=["label", "method", "dataset", "seed", "metric", "value"])
    means, stds, counts = _aggregate(long, metrics, sorted(runs["tags.label"].unique()), sorted(runs["tags.dataset"].unique()))
    labels, columns = list(means.index), list(means.columns)
    empty = lambda: pd.DataFrame(math.nan, index=labels, columns=pd.MultiIndex.from_tuples(columns))  # noqa: E731
    ci_low, ci_high, p_holm = empty(), empty(), empty()
    best = {}
    for col in columns:
        quality = col[1] in QUALITY and len(labels) > 1 and means[col].notna().any()
        best[col] = means[col].idxmax() if quality else None
    data = {}
    cv = {s.dataset: s.folds for s in samples if s.folds}
    for dataset, group in runs.groupby("tags.dataset"):
        first = group.iloc[0]
        data[dataset] = {k: first.get(f"metrics.test/{k}", math.nan) for k in ("n_volumes", "n_lesion_volumes", "prevalence")}
        data[dataset] |= loaded.data.get(dataset, {}) | {"folds": cv.get(dataset), "power": None}
    used = runs[runs.get("tags.uses_val_voxel_labels", pd.Series("false", index=runs.index)) == "true"]
    ranked = [c for c in columns if c[1] in QUALITY]
    mean_rank = (S.mean_ranks(means[ranked], {c: True for c in ranked}) if ranked
                 else pd.Series(math.nan, index=labels))
    lb = Leaderboard(metrics, runs, means, stds, counts, ci_low, ci_high, p_holm, best, mean_rank, data,
                     sorted(used["tags.label"].unique()), _seed_order(s.seed for s in samples), n_resamples if statistics else 0,
                     bootstrap_seed, notes=notes + loaded.notes, samples=long)
    lb.reused = reused_parts(runs)
    lb.seed_spread = _seed_spread(lb)
    if statistics:
        lb.per_volume, lb.lesions = loaded.per_volume_frame, loaded.lesions_frame
        _add_statistics(lb, loaded)
    return lb


def _aggregate(long: pd.DataFrame, metrics, labels, datasets) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Mean, std (ddof=1) and count over seeds of each (label, dataset, metric); NaN values are not counted."""
    columns = pd.MultiIndex.from_tuples([(d, m) for d in datasets for m in metrics])
    means = pd.DataFrame(math.nan, index=labels, columns=columns)
    stds, counts = means.copy(), pd.DataFrame(0, index=labels, columns=columns)
    present = long.dropna(subset=["value"])
    for (label, dataset, metric), values in present.groupby(["label", "dataset", "metric"])["value"]:
        means.at[label, (dataset, metric)] = values.mean()
        stds.at[label, (dataset, metric)] = values.std(ddof=1) if len(values) > 1 else math.nan
        counts.at[label, (dataset, metric)] = len(values)
    return means, stds, counts


def _seed_spread(lb: Leaderboard) -> set:
    """(label, column) where both the row and the column's best have >= 3 seeds and the gap between their means is
    smaller than sqrt(sd_row^2 + sd_best^2): the order of the two may be seed noise."""
    marked = set()
    for col, best in lb.best.items():
        if best is None or lb.counts.at[best, col] < MIN_SEEDS_FOR_SPREAD:
            continue
        for label in lb.means.index:
            if label == best or lb.counts.at[label, col] < MIN_SEEDS_FOR_SPREAD:
                continue
            gap = abs(lb.means.at[best, col] - lb.means.at[label, col])
            if gap < math.hypot(lb.stds.at[label, col], lb.stds.at[best, col]):
                marked.add((label, col))
    return marked


def reused_parts(runs: pd.DataFrame) -> dict:
    """(label, dataset) -> the cached trained parts (design §3) its runs loaded instead of training (the
    runner's ``reused.<part>`` tags): their fit time leaves out that training, so it is not the method's cost."""
    reused = {}
    tags = [c for c in runs.columns if c.startswith("tags.reused.")]
    for _, r in runs.iterrows():
        parts = [c.removeprefix("tags.reused.") for c in tags if isinstance(r[c], str) and r[c]]
        if parts:
            reused.setdefault((r["tags.label"], r["tags.dataset"]), set()).update(parts)
    return {k: sorted(v) for k, v in reused.items()}


@dataclass
class Loaded:
    """What the stored maps gave, per dataset: bootstrap values of each row (seed means per resample), per-volume
    values (seed means), the dataset's test volumes, and for cross-validations n and prevalence of the union."""

    resampled: dict = field(default_factory=dict)  # dataset -> label -> metric -> [resamples]
    per_volume: dict = field(default_factory=dict)  # dataset -> label -> per-volume key -> [volumes]
    n_volumes: dict = field(default_factory=dict)  # dataset -> number of test volumes
    data: dict = field(default_factory=dict)  # dataset -> n_volumes, n_lesion_volumes, prevalence (cross-validation)
    notes: list = field(default_factory=list)
    per_volume_frame: pd.DataFrame | None = None
    lesions_frame: pd.DataFrame | None = None


def _load(samples: list[Sample], runs: pd.DataFrame, metrics, n_resamples: int, bootstrap_seed: int,
          statistics: bool) -> Loaded:
    """Read the stored maps where needed: every sample for the statistics, cross-validation samples always (their
    values are recomputed from the union of the folds' volumes). Fills ``Sample.values`` for those."""
    uri = runs.attrs.get("tracking_uri")
    rescorable = [m for m in metrics if m in RESCORABLE]
    per_volume_keys = tuple(dict.fromkeys(rescorable + ["auprc_vol_mean"]))  # per-volume AP: the power line's default
    wolleb = [m for m in metrics if m in WOLLEB]
    out = Loaded()
    long_rows, lesion_frames, missing = [], [], []
    by_dataset: dict[str, list[Sample]] = {}
    for s in samples:
        by_dataset.setdefault(s.dataset, []).append(s)
    with tempfile.TemporaryDirectory(prefix="lesionbench-lb-") as tmp:
        for dataset, group in by_dataset.items():
            cv = any(s.folds for s in group)
            if not (statistics or cv):
                continue
            case_ids, weights = None, None
            per_label: dict[str, list] = {}
            for s in group:
                read = _read_sample(s, Path(tmp), uri)
                if read is None:
                    missing.append(f"{s.label} on {dataset}")
                    per_label.setdefault(s.label, []).append(None)
                    continue
                scores, volumes = read
                if case_ids is None:
                    case_ids = scores.case_ids
                    out.n_volumes[dataset] = len(case_ids)
                    if cv:
                        lesion, total = scores.voxels.pos.sum(), scores.voxels.pos.sum() + scores.voxels.neg.sum()
                        out.data[dataset] = {"n_volumes": len(case_ids), "n_lesion_volumes": int(scores.lesioned.sum()),
                                             "prevalence": float(lesion / total)}
                elif scores.case_ids != case_ids:
                    raise LeaderboardError(
                        f"dataset {dataset}: runs were scored on different test volumes ({s.label!r}, run {scores.run_id}); "
                        "they cannot share one table")
                if s.folds or any(math.isnan(s.values.get(m, math.nan)) for m in rescorable):
                    # cross-validation: from the union; a single run: fills metrics logged before they existed
                    pooled = scores.metrics(np.ones((1, len(case_ids))), rescorable)
                    for m in rescorable:
                        if s.folds or math.isnan(s.values.get(m, math.nan)):
                            s.values[m] = float(pooled[m][0])
                if s.folds and wolleb:
                    from lesionbench.metrics import wolleb_protocol

                    protocol = wolleb_protocol(volumes)
                    s.values.update({m: float(protocol[WOLLEB[m]]) for m in wolleb})
                if not statistics:
                    continue
                entry = {"per_volume": scores.per_volume(per_volume_keys)}
                if n_resamples and rescorable and len(case_ids) > 1:  # one volume: every resample is that volume
                    if weights is None:
                        weights = S.resample_weights(len(case_ids), n_resamples, bootstrap_seed, dataset)
                    entry["resampled"] = scores.metrics(weights, rescorable)
                per_label.setdefault(s.label, []).append(entry)
                for key, vals in entry["per_volume"].items():
                    long_rows += [(s.label, s.method, dataset, s.seed, case, key, float(v))
                                  for case, v in zip(case_ids, vals) if not math.isnan(v)]
                lesion_frames.append(scores.lesions.assign(label=s.label, dataset=dataset, seed=s.seed))
            for label, entries in per_label.items():
                if not statistics or any(e is None for e in entries):
                    continue  # a seed without maps: no interval or test for the row
                pv = {k: np.mean([e["per_volume"][k] for e in entries], axis=0) for k in entries[0]["per_volume"]}
                out.per_volume.setdefault(dataset, {})[label] = pv
                if "resampled" in entries[0]:
                    out.resampled.setdefault(dataset, {})[label] = {
                        m: np.mean([e["resampled"][m] for e in entries], axis=0) for m in rescorable}
    if missing:
        out.notes.append("No stored test maps (scores.npz) for " + "; ".join(dict.fromkeys(missing))
                         + ": no interval or test for these (and no value for a cross-validation row).")
    out.per_volume_frame = pd.DataFrame(long_rows, columns=["label", "method", "dataset", "seed", "volume", "metric", "value"])
    out.lesions_frame = (pd.concat(lesion_frames, ignore_index=True) if lesion_frames
                         else pd.DataFrame(columns=["case_id", "size", "detected", "dice", "label", "dataset", "seed"]))
    return out


def _add_statistics(lb: Leaderboard, loaded: Loaded) -> None:
    """Intervals, the test of each row against its column's best (the kind recorded in ``lb.tests``), power."""
    few_pairs, no_bootstrap = {}, []
    for dataset in lb.data:
        resampled, per_volume = loaded.resampled.get(dataset, {}), loaded.per_volume.get(dataset, {})
        n_volumes = loaded.n_volumes.get(dataset, 0)
        for m in lb.metrics:
            col = (dataset, m)
            if m not in RESCORABLE or col not in lb.means.columns:
                continue
            for label, values in resampled.items():
                lb.ci_low.at[label, col], lb.ci_high.at[label, col] = S.percentile_interval(values[m])
            best = lb.best.get(col)
            if best is None:
                continue
            others = [label for label in lb.means.index if label != best and not math.isnan(lb.means.at[label, col])]
            if m in PER_VOLUME_COLUMNS:
                if best not in per_volume:
                    continue
                key = PER_VOLUME_KEY[m]
                tested = [label for label in others if label in per_volume]
                tests = [S.paired_wilcoxon(per_volume[label][key], per_volume[best][key]) for label in tested]
                pvalues = [p for p, _ in tests]
                short = sorted({n for p, n in tests if math.isnan(p)})
                kind = "wilcoxon"
            else:
                if n_volumes < S.MIN_WILCOXON_PAIRS:
                    few_pairs.setdefault((dataset, (n_volumes,), "bootstrap"), []).append(HEADERS.get(m, m))
                    continue
                if best not in resampled:
                    if not lb.n_resamples and n_volumes > 1:
                        no_bootstrap.append(f"{dataset} {HEADERS.get(m, m)}")
                    continue
                tested = [label for label in others if label in resampled]
                pvalues = [S.paired_bootstrap_p(resampled[label][m], resampled[best][m]) for label in tested]
                short, kind = [], "bootstrap"
            for label, p in zip(tested, S.holm(pvalues)):
                lb.p_holm.at[label, col] = p
            if tested:
                lb.tests[col] = kind
            if short:
                few_pairs.setdefault((dataset, tuple(short), "wilcoxon"), []).append(HEADERS.get(m, m))
        if lb.n_resamples and n_volumes == 1:
            lb.notes.append(f"{dataset}: 1 test volume, so a bootstrap over test volumes has nothing to resample: "
                            "no interval is shown.")
        lb.data[dataset]["power"] = _power(lb, dataset, per_volume)
    for (dataset, ns, kind), names in few_pairs.items():
        if kind == "wilcoxon":
            lb.notes.append(
                f"{dataset} ({', '.join(names)}): only {' or '.join(map(str, ns))} test volume(s) pair up with the best row "
                f"(fewer than {S.MIN_WILCOXON_PAIRS}): a two-sided Wilcoxon signed-rank test cannot reach p < 0.05 there, "
                "so no test was run and no row is marked.")
        else:
            lb.notes.append(
                f"{dataset} ({', '.join(names)}): only {ns[0]} test volume(s) (fewer than {S.MIN_WILCOXON_PAIRS}): a paired "
                "bootstrap over so few volumes is anti-conservative, so no test was run and no row is marked.")
    if no_bootstrap:
        lb.notes.append("No bootstrap resamples (--bootstrap 0), so the pooled columns were not tested: "
                        + ", ".join(no_bootstrap) + ".")


def _power(lb: Leaderboard, dataset: str, per_volume: dict) -> str | None:
    """The power sentence of a dataset: n lesioned test volumes and, per per-volume column (AP per volume when the
    table shows none), the median over the tested rows of their minimum detectable difference (statistics)."""
    if not per_volume:
        return None
    shown = [m for m in lb.metrics if m in PER_VOLUME_COLUMNS] or ["auprc_vol_mean"]
    parts, n_lesioned, rows_tested = [], None, None
    for m in shown:
        key = PER_VOLUME_KEY[m]
        col = (dataset, m)
        if col in lb.means.columns:
            best = lb.best.get(col)
        else:  # not a column of the table: the row with the best mean per-volume value
            means = {label: np.nanmean(v[key]) for label, v in per_volume.items() if np.isfinite(v[key]).any()}
            best = max(means, key=means.get) if len(means) > 1 else None
        if best is None or best not in per_volume:
            continue
        rows = [label for label in per_volume if label != best and np.isfinite(per_volume[label][key]).any()]
        if not rows:
            continue
        m_rows = len(rows)
        mdd, ns = [], []
        for label in rows:
            diff = per_volume[label][key] - per_volume[best][key]
            diff = diff[~np.isnan(diff)]
            ns.append(diff.size)
            sd = float(np.std(diff, ddof=1)) if diff.size > 1 else math.nan
            mdd.append(S.minimum_detectable_difference(diff.size, sd, m_rows))
        n_lesioned, rows_tested = max(ns), m_rows
        name = HEADERS.get(m, m)
        if n_lesioned < S.min_pairs(m_rows):
            parts.append(f"{name}: no test possible (an exact signed-rank test at 0.05/{m_rows} needs "
                         f"{S.min_pairs(m_rows)} pairs)")
        else:
            parts.append(f"{name} {float(np.nanmedian(mdd)):.3f}")
    if n_lesioned is None:
        return None
    return (f"{n_lesioned} lesioned test volumes; minimum detectable difference (80 % power, {rows_tested} "
            f"row{'s' if rows_tested > 1 else ''} against the best): " + ", ".join(parts))


# -- text ----------------------------------------------------------------------------------------------


def _digits(metric: str) -> int:
    return 1 if metric in ("fit_s", "predict_ms") else 3


@dataclass
class Cell:
    """A table cell's parts: the value (mean ± std, bolded when best), the interval and the marker."""

    value: str
    interval: str
    marker: str
    bold: bool
    mean: str = ""
    std: str = ""


def cell(lb: Leaderboard, label: str, col) -> Cell:
    mean, std = lb.means.at[label, col], lb.stds.at[label, col]
    if math.isnan(mean):
        return Cell("–", "", "", False, "–")
    d = _digits(col[1])
    mean_text, std_text = f"{mean:.{d}f}", ("" if math.isnan(std) else f"{std:.{d}f}")
    value = mean_text + (f" ± {std_text}" if std_text else "")
    low, high = lb.ci_low.at[label, col], lb.ci_high.at[label, col]
    interval = "" if math.isnan(low) else f"[{low:.{d}f}, {high:.{d}f}]"
    p = lb.p_holm.at[label, col]
    marker = SIGNIFICANT if not math.isnan(p) and p < S.ALPHA else ""
    if (label, col) in lb.seed_spread:
        marker += SEED_SPREAD
    if col[1] == "fit_s" and (label, col[0]) in lb.reused:
        marker += REUSED_PARTS
    return Cell(value, interval, marker, lb.best.get(col) == label, mean_text, std_text)


def rank_text(lb: Leaderboard, label: str) -> tuple[str, bool]:
    r = lb.mean_rank.get(label, math.nan)
    if math.isnan(r):
        return "–", False
    return f"{r:.1f}", len(lb.mean_rank) > 1 and r == lb.mean_rank.min()


def row_name(lb: Leaderboard, label: str) -> str:
    return (label + (VAL_VOXEL_LABELS if label in lb.val_voxel_rows else "")
            + (UNTUNED if label in lb.untuned_rows else ""))


def header(col) -> str:
    return f"{col[0]} {HEADERS.get(col[1], col[1])}"


def data_line(lb: Leaderboard, dataset: str) -> str:
    """n, lesioned volumes, prevalence and (with the statistics) the power of the tests, in words."""
    d = lb.data[dataset]
    n, k, prev, folds = d["n_volumes"], d["n_lesion_volumes"], d["prevalence"], d.get("folds")
    text = f"{dataset}: n = {int(n)} test volumes" if not math.isnan(n) else f"{dataset}: n unknown"
    if not math.isnan(k):
        text += f" ({int(k)} with lesions)"
    if folds:
        text += f", the test volumes of {folds}-fold cross-validation pooled"
    if not math.isnan(prev):
        text += f", lesion prevalence {100 * prev:.2f} % of brain voxels"
    if d.get("power"):
        text += ". Power: " + d["power"]
    return text


def data_lines(lb: Leaderboard) -> list[str]:
    return [data_line(lb, dataset) for dataset in sorted(lb.data)]


def _names(metrics) -> str:
    return ", ".join(HEADERS.get(m, m) for m in metrics)


def footnotes(lb: Leaderboard, intervals: bool = True) -> list[str]:
    """Definitions and markers, one sentence group each. ``intervals=False``: a rendering that leaves the bootstrap
    intervals out (the compact terminal table) says where they are."""
    seeds = ", ".join(lb.seeds)
    seen, defs = set(), []
    for m in lb.metrics:
        if DEFINITIONS[m] not in seen:
            seen.add(DEFINITIONS[m])
            defs.append(DEFINITIONS[m])
    notes = ["; ".join(defs) + f". Mean ± std over seeds ({seeds}); bold: the best mean of a column (timings are not ranked)."]
    if lb.n_resamples and lb.ci_low.notna().any().any():  # none when every dataset has one test volume
        if intervals:
            notes.append(f"[a, b]: 95 % percentile bootstrap interval over test volumes ({lb.n_resamples} resamples of the "
                         "volumes, the same for every row of a dataset; pooled metrics recomputed from the stored float16 "
                         "maps, averaged over seeds).")
        else:
            notes.append("95 % bootstrap intervals over test volumes are left out of this terminal table: --wide, or "
                         "--format md / latex / csv / html, shows them.")
    kinds = {kind: sorted({c[1] for c, k in lb.tests.items() if k == kind}, key=lb.metrics.index)
             for kind in ("wilcoxon", "bootstrap")}
    if lb.per_volume is not None:
        tests = []
        if kinds["wilcoxon"] or any(m in PER_VOLUME_COLUMNS for m in lb.metrics):
            tests.append(f"per-volume columns ({_names(kinds['wilcoxon'] or [m for m in lb.metrics if m in PER_VOLUME_COLUMNS])}) "
                         "by a two-sided paired Wilcoxon signed-rank test over the lesioned test volumes (each volume's "
                         "own value, averaged over seeds)")
        pooled = kinds["bootstrap"] or [m for m in lb.metrics if m in POOLED_COLUMNS]
        if pooled and lb.n_resamples:
            tests.append(f"pooled columns ({_names(pooled)}) by a paired bootstrap over test volumes (the same "
                         f"{lb.n_resamples} resamples for both rows, the difference row − best of the pooled metric "
                         "recomputed on each; p = 2 min(P(diff ≤ 0), P(diff ≥ 0)), add-one corrected)")
        if tests:
            notes.append(f"{SIGNIFICANT}: differs from the column's best row, Holm-corrected across the rows of the column, "
                         f"p < {S.ALPHA}: " + "; ".join(tests) + ".")
    if any(d.get("power") for d in lb.data.values()):
        notes.append("Power: the smallest mean paired difference d (in the metric's units) that an exact two-sided "
                     "signed-rank test at 0.05/m (m rows tested against the best: Holm's first step) rejects with 80 % "
                     "probability when the per-volume differences are N(d, s²), s the observed sd of each row's "
                     "differences to the best (simulated); the median over the rows. Below ceil(log2(40 m)) pairs no "
                     "test can reject. It applies to the per-volume columns; a pooled column's bootstrap has its own power.")
    if lb.seed_spread:
        notes.append(f"{SEED_SPREAD}: within seed spread: with ≥ {MIN_SEEDS_FOR_SPREAD} seeds, the gap to the column's best "
                     "is smaller than sqrt(sd_row² + sd_best²) of the seed values, so the two rows' order may be seed noise.")
    if lb.val_voxel_rows:
        notes.append(f"{VAL_VOXEL_LABELS}: model selection used validation voxel labels (log.evaluate with a voxel "
                     "objective, or a study on a voxel objective chose the configuration, `tuned_on`): "
                     f"{', '.join(lb.val_voxel_rows)}.")
    else:
        notes.append("No row used validation voxel labels for model selection (dice_val's threshold always does).")
    if lb.untuned_rows:
        notes.append(f"{UNTUNED}: untuned, no study of its own: the profile's defaults or the settings its label names "
                     f"(context beside the tuned rows, whose label holds '{TUNED_MARK}': a study's best configuration on "
                     f"validation): {', '.join(lb.untuned_rows)}.")
    if any(c[1] in QUALITY for c in lb.columns):
        notes.append(f"{MEAN_RANK}: each row's rank (1 = best) averaged over the quality columns shown.")
    cv = sorted(d for d, info in lb.data.items() if info.get("folds"))
    if cv:
        notes.append(f"Cross-validation ({', '.join(cv)}): each row pools the test volumes of its K folds, each volume "
                     "scored by its own fold's model; pooled metrics are recomputed from the stored float16 maps of all "
                     "folds together (dice_val and dice_fpr5 at each fold's own threshold), per-volume values "
                     "concatenated; fit s and ms/slice are the mean over the folds (each fold trains its own model).")
    shown = {d for d, m in lb.columns if m == "fit_s"}
    reused = [f"{label} on {dataset} ({', '.join(parts)})" for (label, dataset), parts in sorted(lb.reused.items())
              if dataset in shown]
    if reused:
        notes.append(f"{REUSED_PARTS}: fit s leaves out the training of cached parts that an earlier run trained and this "
                     "one loaded (same data, split and seed), so it is not the method's whole training cost: "
                     + ", ".join(reused) + ".")
    per_cell = lb.counts.T.groupby(level=0).max().T  # seeds per (label, dataset)
    fewer = [f"{label} on {dataset} ({int(n)})" for label in per_cell.index for dataset, n in per_cell.loc[label].items()
             if 0 < n < len(lb.seeds)]
    if fewer:
        notes.append("Fewer seeds than the others: " + ", ".join(fewer) + ".")
    return notes + lb.notes


def render_markdown(lb: Leaderboard) -> str:
    heads = [header(c) for c in lb.columns] + [MEAN_RANK]
    lines = ["| label | " + " | ".join(heads) + " |", "|---|" + "---:|" * len(heads)]
    for label in lb.means.index:
        cells = []
        for col in lb.columns:
            c = cell(lb, label, col)
            text = f"**{c.value}**" if c.bold else c.value
            cells.append(" ".join(t for t in (text + c.marker, c.interval) if t))
        rank, bold = rank_text(lb, label)
        cells.append(f"**{rank}**" if bold else rank)
        lines.append(f"| {row_name(lb, label).replace('|', '&#124;')} | " + " | ".join(cells) + " |")
    body = "\n".join(lines)
    return body + "\n\n" + "\n".join(f"- {d}" for d in data_lines(lb)) + "\n\n" + "\n\n".join(footnotes(lb)) + "\n"


LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                 "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
LATEX_UNICODE = {"⌈": r"$\lceil$", "⌉": r"$\rceil$", "±": r"$\pm$", "–": "--", "—": "---", "≥": r"$\geq$",
                 "≤": r"$\leq$", "−": r"$-$", "²": r"$^2$", "≈": r"$^\approx$",
                 "†": r"$^\dagger$", "‡": r"$^\ddagger$", "§": r"$^\S$", "×": r"$\times$",
                 "°": r"$^\circ$"}


def latex_text(text: str) -> str:
    out = "".join(LATEX_SPECIAL.get(ch, ch) for ch in str(text))
    return "".join(LATEX_UNICODE.get(ch, ch) for ch in out)


def render_latex(lb: Leaderboard) -> str:
    """A ``table`` with a ``booktabs`` tabular: datasets as spanning headers (with n and prevalence), the notes
    as the caption."""
    datasets = list(dict.fromkeys(c[0] for c in lb.columns))
    spans = {d: [c for c in lb.columns if c[0] == d] for d in datasets}
    lines = ["% lesionbench leaderboard; needs \\usepackage{booktabs,graphicx}", r"\begin{table}[t]", r"\centering", r"\small",
             r"\resizebox{\linewidth}{!}{%", r"\begin{tabular}{l" + "c" * len(lb.columns) + "c}", r"\toprule"]
    top, rules, start = [""], [], 2
    for d in datasets:
        info = lb.data.get(d, {})
        n, k, prev = (info.get(key, math.nan) for key in ("n_volumes", "n_lesion_volumes", "prevalence"))
        extra = []
        if not math.isnan(n):
            extra.append(f"$n={int(n)}$" + (f", {int(k)} with lesions" if not math.isnan(k) else ""))
        if not math.isnan(prev):
            extra.append(f"{100 * prev:.2f}\\,\\% lesion")
        title = latex_text(d) + (f" ({', '.join(extra)})" if extra else "")
        top.append(rf"\multicolumn{{{len(spans[d])}}}{{c}}{{{title}}}")
        rules.append(rf"\cmidrule(lr){{{start}-{start + len(spans[d]) - 1}}}")
        start += len(spans[d])
    lines += [" & ".join(top) + r" & \\", " ".join(rules)]
    lines.append(" & ".join(["label"] + [latex_text(HEADERS.get(c[1], c[1])) for c in lb.columns] + [MEAN_RANK]) + r" \\")
    lines.append(r"\midrule")
    for label in lb.means.index:
        cells = [latex_text(row_name(lb, label))]
        for col in lb.columns:
            c = cell(lb, label, col)
            value = latex_text(c.value)
            text = (rf"\textbf{{{value}}}" if c.bold else value) + latex_text(c.marker)
            if c.interval:
                text += rf" {{\scriptsize {c.interval}}}"
            cells.append(text)
        rank, bold = rank_text(lb, label)
        cells.append(rf"\textbf{{{rank}}}" if bold else latex_text(rank))
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}}",
              r"\caption{" + latex_text(" ".join([line + "." for line in data_lines(lb)] + footnotes(lb))) + "}",
              r"\end{table}"]
    return "\n".join(lines) + "\n"


def render_csv(lb: Leaderboard) -> str:
    """Long format: label, method, dataset, seed, volume, metric, value. Each sample's pooled metrics with
    ``volume = pooled`` (a run's logged metrics; for a cross-validation, those of its folds' union), then each test
    volume's own values (re-scored from the stored maps)."""
    pooled = lb.samples.dropna(subset=["value"]).assign(volume="pooled")
    pooled = pooled[["label", "method", "dataset", "seed", "volume", "metric", "value"]]
    frames = [pooled] + ([lb.per_volume] if lb.per_volume is not None and len(lb.per_volume) else [])
    return pd.concat(frames, ignore_index=True).to_csv(index=False)


def rich_table(runs: pd.DataFrame, metrics=DEFAULT_METRICS, datasets=None, n_resamples: int = 1000, bootstrap_seed: int = 0,
               wide: bool = False):
    """The terminal leaderboard (a rich renderable): compact by default, ``wide`` for every part of every cell."""
    lb = build_leaderboard(runs, metrics, datasets, n_resamples, bootstrap_seed)
    return rich_wide(lb) if wide else rich_compact(lb)


def rich_wide(lb: Leaderboard):
    """One table, datasets x metrics as columns, each cell mean ± std, marker and interval: as wide as it needs."""
    from rich.markup import escape
    from rich.table import Table

    caption = "\n".join(data_lines(lb) + footnotes(lb))
    rt = Table(title="lesionbench leaderboard", caption=escape(caption), caption_justify="left")
    rt.add_column("label", style="bold", overflow="fold")  # a variant's label folds onto more lines, never "…"
    for col in lb.columns:
        rt.add_column(f"{col[0]}\n{HEADERS.get(col[1], col[1])}", justify="right")
    rt.add_column(MEAN_RANK, justify="right")
    for label in lb.means.index:
        cells = []
        for col in lb.columns:
            c = cell(lb, label, col)
            text = escape(c.value + c.marker + (f"\n{c.interval}" if c.interval else ""))
            cells.append(f"[bold green]{text}[/]" if c.bold else text)
        rank, bold = rank_text(lb, label)
        rt.add_row(escape(row_name(lb, label)), *cells, f"[bold green]{rank}[/]" if bold else rank)
    return rt


def rich_compact(lb: Leaderboard):
    """The default terminal leaderboard, made to fit 120 columns (the main job: 8 rows, 2 datasets, 7 metrics):
    one table per dataset with its n and power line beneath it, each cell the mean and marker over the seeds' std,
    no intervals (a note says where they are), then the mean ranks and the notes as text."""
    from rich.console import Group
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    parts = []
    for dataset in dict.fromkeys(c[0] for c in lb.columns):
        cols = [c for c in lb.columns if c[0] == dataset]
        labels = [label for label in lb.means.index if lb.counts.loc[label, cols].max() > 0]
        rt = Table(title=f"{dataset}", caption=escape(data_line(lb, dataset)), caption_justify="left",
                   title_justify="left", pad_edge=False)
        rt.add_column("label", style="bold", overflow="fold")  # a variant's label folds onto more lines, never "…"
        for col in cols:
            rt.add_column(HEADERS.get(col[1], col[1]), justify="right", overflow="fold")
        for label in labels:
            cells = []
            for col in cols:
                c = cell(lb, label, col)
                text = escape(c.mean + c.marker)
                text = f"[bold green]{text}[/]" if c.bold else text
                cells.append(text + (f"\n[dim]± {escape(c.std)}[/]" if c.std else ""))
            rt.add_row(escape(row_name(lb, label)), *cells)
        parts.append(rt)
    ranked = lb.mean_rank.dropna().sort_values()
    if len(ranked):
        parts.append(Text(f"{MEAN_RANK} (1 = best, over the quality columns of all datasets shown): "
                          + ", ".join(f"{row_name(lb, label)} {r:.1f}" for label, r in ranked.items())))
    parts.append(Text("\n".join(footnotes(lb, intervals=False))))
    return Group(*parts)
