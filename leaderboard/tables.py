"""Read FINISHED ``run_kind=run`` runs (the latest per cell) and make the leaderboard (design §6): rows =
``label``, columns = datasets x metrics, mean ± std over seeds, a 95 % bootstrap interval over test volumes,
paired Wilcoxon tests against the best row (Holm-corrected), a mean rank; rendered as Markdown, LaTeX
(booktabs), long CSV, a rich terminal table or an HTML page (:mod:`lesionbench.leaderboard.report`).

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

from lesionbench.leaderboard import statistics as S
from lesionbench.leaderboard.rescoring import PER_VOLUME_KEY, RESCORABLE, THRESHOLDS, RunScores

DEFAULT_METRICS = ("auprc", "auroc", "dice_best", "dice_val", "fit_s", "predict_ms")
#: metric key in the table -> (MLflow metric, scale, higher is better)
COLUMNS = {
    "auprc": ("test/auprc", 1.0, True),
    "auroc": ("test/auroc", 1.0, True),
    "dice_best": ("test/dice_best", 1.0, True),
    "dice_val": ("test/dice_val", 1.0, True),
    "dice_val_vol_mean": ("test/dice_val_vol_mean", 1.0, True),
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
HEADERS = {"dice_best": "⌈Dice⌉", "fit_s": "fit s", "predict_ms": "ms/slice", "wolleb_dice": "Otsu Dice (Wolleb)",
           "wolleb_auroc": "AUROC per slice (Wolleb)"}
CONSISTENT_PER_DATASET = ("params.data.preprocessing_hash", "params.split_hash", "tags.eval_space")
SIGNIFICANT, VAL_VOXEL_LABELS, REUSED_PARTS = "†", "‡", "§"
MEAN_RANK = "mean rank"

WOLLEB_PROTOCOL = ("Otsu Dice / AUROC per slice (Wolleb): Wolleb et al. (2022)'s protocol on each diseased test slice, an Otsu "
                   "threshold for Dice and the slice's voxel AUROC, averaged over diseased slices only; comparable with that "
                   "paper's table, not with the pooled columns")
DEFINITIONS = {
    "auprc": "auprc: average precision over all test brain voxels pooled (primary)",
    "auroc": "auroc: voxel AUROC, pooled",
    "dice_best": "⌈Dice⌉: best pooled Dice over all thresholds chosen on the test set — an upper bound, not an achievable score",
    "dice_val": "dice_val: pooled test Dice at the threshold that maximises pooled Dice on the validation split (uses validation voxel labels)",
    "dice_val_vol_mean": "dice_val_vol_mean: the dice_val threshold, Dice per test volume with lesions, averaged (uses validation voxel labels)",
    "dice_fpr5": "dice_fpr5: pooled test Dice at the threshold that flags 5 % of the brain voxels of healthy validation slices (image labels only)",
    "slice_auroc": "slice_auroc / slice_ap: slice-level detection from the slice score",
    "slice_ap": "slice_auroc / slice_ap: slice-level detection from the slice score",
    "wolleb_dice": WOLLEB_PROTOCOL,
    "wolleb_auroc": WOLLEB_PROTOCOL,
    "fit_s": "fit s: training wall time; ms/slice: inference time per test slice (device-dependent, not ranked)",
    "predict_ms": "fit s: training wall time; ms/slice: inference time per test slice (device-dependent, not ranked)",
}


class LeaderboardError(ValueError):
    pass


def load_runs(tracking_uri: str, experiment: str = "lesionbench") -> pd.DataFrame:
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
        row = {"run_id": r.info.run_id, "start_time": r.info.start_time, "artifact_uri": r.info.artifact_uri}
        row.update({f"tags.{k}": v for k, v in r.data.tags.items()})
        row.update({f"params.{k}": v for k, v in r.data.params.items()})
        row.update({f"metrics.{k}": v for k, v in r.data.metrics.items()})
        rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        raise LeaderboardError(f"no finished runs in {tracking_uri} (experiment {experiment!r})")
    # the latest finished run of each cell
    df = df.sort_values("start_time", ascending=False).drop_duplicates("tags.cell").reset_index(drop=True)
    df.attrs["tracking_uri"] = tracking_uri
    return df


def artifact_path(run: pd.Series, name: str, scratch: Path, tracking_uri: str | None = None) -> Path | None:
    """A run's artifact as a local file: read in place from a local artifact store, else downloaded into
    ``scratch``; None when the run has no such artifact."""
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


def _check_consistent(runs: pd.DataFrame) -> None:
    for dataset, group in runs.groupby("tags.dataset"):
        for key in CONSISTENT_PER_DATASET:
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
    """(means, stds, seed counts), each indexed by label with (dataset, metric) columns."""
    runs = _select(runs, metrics, datasets)
    means, stds, counts = {}, {}, {}
    for (label, dataset), group in runs.groupby(["tags.label", "tags.dataset"]):
        for m in metrics:
            key, scale, _ = COLUMNS[m]
            values = group.get(f"metrics.{key}", pd.Series(dtype=float)).dropna() * scale
            means.setdefault((dataset, m), {})[label] = values.mean() if len(values) else math.nan
            stds.setdefault((dataset, m), {})[label] = values.std(ddof=1) if len(values) > 1 else math.nan
            counts.setdefault((dataset, m), {})[label] = len(values)
    order = lambda d: pd.DataFrame(d).sort_index(axis=1)  # noqa: E731
    return order(means), order(stds), order(counts)


# -- the leaderboard with its statistics -----------------------------------------------------------------


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
    data: dict  # dataset -> n_volumes, n_lesion_volumes, prevalence
    val_voxel_rows: list[str]
    seeds: list[str]
    n_resamples: int
    bootstrap_seed: int
    notes: list[str] = field(default_factory=list)
    per_volume: pd.DataFrame | None = None  # long: label, method, dataset, seed, volume, metric, value
    lesions: pd.DataFrame | None = None  # label, dataset, seed, case_id, size, detected, dice
    reused: dict = field(default_factory=dict)  # (label, dataset) -> cached trained parts its runs loaded

    @property
    def columns(self) -> list[tuple[str, str]]:
        return list(self.means.columns)


def seed_key(seed) -> tuple:
    s = str(seed)
    return (0, int(s), "") if s.lstrip("-").isdigit() else (1, 0, s)


def _seed_order(seeds) -> list[str]:
    return sorted({str(s) for s in seeds}, key=seed_key)


def build_leaderboard(runs: pd.DataFrame, metrics=DEFAULT_METRICS, datasets=None, n_resamples: int = 1000,
                      bootstrap_seed: int = 0, statistics: bool = True) -> Leaderboard:
    """The table and its statistics. ``statistics=False`` skips reading the stored maps (no intervals, tests
    or per-volume values); ``n_resamples=0`` keeps the tests but draws no bootstrap."""
    metrics = tuple(metrics)
    runs = _select(runs, metrics, datasets)
    means, stds, counts = build_table(runs, metrics)
    labels, columns = list(means.index), list(means.columns)
    empty = lambda: pd.DataFrame(math.nan, index=labels, columns=pd.MultiIndex.from_tuples(columns))  # noqa: E731
    ci_low, ci_high, p_holm = empty(), empty(), empty()
    best = {}
    for col in columns:
        quality = col[1] in QUALITY and len(labels) > 1 and means[col].notna().any()
        best[col] = means[col].idxmax() if quality else None
    data = {}
    for dataset, group in runs.groupby("tags.dataset"):
        first = group.iloc[0]
        data[dataset] = {k: first.get(f"metrics.test/{k}", math.nan) for k in ("n_volumes", "n_lesion_volumes", "prevalence")}
    used = runs[runs.get("tags.uses_val_voxel_labels", pd.Series("false", index=runs.index)) == "true"]
    ranked = [c for c in columns if c[1] in QUALITY]
    mean_rank = (S.mean_ranks(means[ranked], {c: True for c in ranked}) if ranked
                 else pd.Series(math.nan, index=labels))
    lb = Leaderboard(metrics, runs, means, stds, counts, ci_low, ci_high, p_holm, best, mean_rank, data,
                     sorted(used["tags.label"].unique()), _seed_order(runs["tags.seed"]), n_resamples if statistics else 0,
                     bootstrap_seed)
    lb.reused = reused_parts(runs)
    if statistics:
        _add_statistics(lb)
    return lb


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


def _add_statistics(lb: Leaderboard) -> None:
    from lesionbench.tracking import read_scores

    uri = lb.runs.attrs.get("tracking_uri")
    rescorable = [m for m in lb.metrics if m in RESCORABLE]
    long_rows, lesion_frames, few_pairs, missing = [], [], {}, []
    with tempfile.TemporaryDirectory(prefix="lesionbench-lb-") as tmp:
        for dataset, group in lb.runs.groupby("tags.dataset"):
            resampled, per_volume, case_ids = {}, {}, None
            for label, rows in group.groupby("tags.label"):
                loaded = []
                for _, run in sorted(rows.iterrows(), key=lambda item: seed_key(item[1]["tags.seed"])):
                    path = artifact_path(run, "scores.npz", Path(tmp), uri)
                    if path is None:
                        break
                    thresholds = {k: float(run.get(f"metrics.threshold/{k}", math.nan)) for k in THRESHOLDS}
                    scores = RunScores.of(run["run_id"], read_scores(path), thresholds)
                    if case_ids is None:
                        case_ids = scores.case_ids
                    elif scores.case_ids != case_ids:
                        raise LeaderboardError(
                            f"dataset {dataset}: runs were scored on different test volumes ({label!r}, run {run['run_id']}); "
                            "they cannot share one table")
                    loaded.append((run, scores))
                if len(loaded) < len(rows):
                    missing.append(f"{label} on {dataset}")
                    continue
                if lb.n_resamples and rescorable and len(case_ids) > 1:  # one volume: every resample is that volume
                    weights = S.resample_weights(len(case_ids), lb.n_resamples, lb.bootstrap_seed, dataset)
                    per_seed = [s.metrics(weights, rescorable) for _, s in loaded]
                    resampled[label] = {m: np.mean([v[m] for v in per_seed], axis=0) for m in rescorable}
                volume_values = []
                for run, scores in loaded:
                    values = scores.per_volume(rescorable)
                    volume_values.append(values)
                    for key, vals in values.items():
                        long_rows += [(label, run["tags.method"], dataset, str(run["tags.seed"]), case, key, float(v))
                                      for case, v in zip(scores.case_ids, vals) if not math.isnan(v)]
                    lesion_frames.append(scores.lesions.assign(label=label, dataset=dataset, seed=str(run["tags.seed"])))
                per_volume[label] = {k: np.mean([v[k] for v in volume_values], axis=0) for k in volume_values[0]}
            for m in rescorable:
                col = (dataset, m)
                if col not in lb.means.columns:
                    continue
                for label, values in resampled.items():
                    lb.ci_low.at[label, col], lb.ci_high.at[label, col] = S.percentile_interval(values[m])
                best = lb.best.get(col)
                if best is None or best not in per_volume:
                    continue
                key = PER_VOLUME_KEY[m]
                others = [label for label in per_volume if label != best and not math.isnan(lb.means.at[label, col])]
                tests = [S.paired_wilcoxon(per_volume[label][key], per_volume[best][key]) for label in others]
                for label, p in zip(others, S.holm([p for p, _ in tests])):
                    lb.p_holm.at[label, col] = p
                short = sorted({n for p, n in tests if math.isnan(p)})
                if short:
                    few_pairs.setdefault((dataset, tuple(short)), []).append(HEADERS.get(m, m))
            if lb.n_resamples and case_ids is not None and len(case_ids) == 1:
                lb.notes.append(f"{dataset}: 1 test volume, so a bootstrap over test volumes has nothing to resample: "
                                "no interval is shown.")
    for (dataset, ns), names in few_pairs.items():
        lb.notes.append(
            f"{dataset} ({', '.join(names)}): only {' or '.join(map(str, ns))} test volume(s) pair up with the best row "
            f"(fewer than {S.MIN_WILCOXON_PAIRS}): a two-sided Wilcoxon signed-rank test cannot reach p < 0.05 there, "
            "so no test was run and no row is marked.")
    if missing:
        lb.notes.append("No stored test maps (scores.npz) for " + "; ".join(missing) + ": no interval or test for these.")
    lb.per_volume = pd.DataFrame(long_rows, columns=["label", "method", "dataset", "seed", "volume", "metric", "value"])
    lb.lesions = (pd.concat(lesion_frames, ignore_index=True) if lesion_frames
                  else pd.DataFrame(columns=["case_id", "size", "detected", "dice", "label", "dataset", "seed"]))


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


def cell(lb: Leaderboard, label: str, col) -> Cell:
    mean, std = lb.means.at[label, col], lb.stds.at[label, col]
    if math.isnan(mean):
        return Cell("–", "", "", False)
    d = _digits(col[1])
    value = f"{mean:.{d}f}" + ("" if math.isnan(std) else f" ± {std:.{d}f}")
    low, high = lb.ci_low.at[label, col], lb.ci_high.at[label, col]
    interval = "" if math.isnan(low) else f"[{low:.{d}f}, {high:.{d}f}]"
    p = lb.p_holm.at[label, col]
    marker = SIGNIFICANT if not math.isnan(p) and p < S.ALPHA else ""
    if col[1] == "fit_s" and (label, col[0]) in lb.reused:
        marker += REUSED_PARTS
    return Cell(value, interval, marker, lb.best.get(col) == label)


def rank_text(lb: Leaderboard, label: str) -> tuple[str, bool]:
    r = lb.mean_rank.get(label, math.nan)
    if math.isnan(r):
        return "–", False
    return f"{r:.1f}", len(lb.mean_rank) > 1 and r == lb.mean_rank.min()


def row_name(lb: Leaderboard, label: str) -> str:
    return label + (VAL_VOXEL_LABELS if label in lb.val_voxel_rows else "")


def header(col) -> str:
    return f"{col[0]} {HEADERS.get(col[1], col[1])}"


def data_lines(lb: Leaderboard) -> list[str]:
    lines = []
    for dataset, d in sorted(lb.data.items()):
        n, k, prev = d["n_volumes"], d["n_lesion_volumes"], d["prevalence"]
        text = f"{dataset}: n = {int(n)} test volumes" if not math.isnan(n) else f"{dataset}: n unknown"
        if not math.isnan(k):
            text += f" ({int(k)} with lesions)"
        if not math.isnan(prev):
            text += f", lesion prevalence {100 * prev:.2f} % of brain voxels"
        lines.append(text)
    return lines


def footnotes(lb: Leaderboard) -> list[str]:
    """Definitions and markers, one sentence group each."""
    seeds = ", ".join(lb.seeds)
    seen, defs = set(), []
    for m in lb.metrics:
        if DEFINITIONS[m] not in seen:
            seen.add(DEFINITIONS[m])
            defs.append(DEFINITIONS[m])
    notes = ["; ".join(defs) + f". Mean ± std over seeds ({seeds}); bold: the best mean of a column (timings are not ranked)."]
    if lb.n_resamples and lb.ci_low.notna().any().any():  # none when every dataset has one test volume
        notes.append(f"[a, b]: 95 % percentile bootstrap interval over test volumes ({lb.n_resamples} resamples of the "
                     "volumes, the same for every row of a dataset; pooled metrics recomputed from the stored float16 "
                     "maps, averaged over seeds).")
    if lb.per_volume is not None:
        notes.append(f"{SIGNIFICANT}: differs from the column's best row in a two-sided paired Wilcoxon signed-rank test "
                     "over test volumes (each volume's own value of the metric, averaged over seeds), Holm-corrected "
                     f"across the rows of the column, p < {S.ALPHA}.")
    if lb.val_voxel_rows:
        notes.append(f"{VAL_VOXEL_LABELS}: model selection used validation voxel labels (log.evaluate with a voxel "
                     f"objective): {', '.join(lb.val_voxel_rows)}.")
    else:
        notes.append("No row used validation voxel labels for model selection (dice_val's threshold always does).")
    if any(c[1] in QUALITY for c in lb.columns):
        notes.append(f"{MEAN_RANK}: each row's rank (1 = best) averaged over the quality columns shown.")
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
                 "†": r"$^\dagger$", "‡": r"$^\ddagger$", "§": r"$^\S$", "×": r"$\times$"}


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
              r"\caption{" + latex_text(" ".join(footnotes(lb))) + "}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def render_csv(lb: Leaderboard) -> str:
    """Long format: label, method, dataset, seed, volume, metric, value. Each run's logged (pooled) metrics
    with ``volume = pooled``, then each test volume's own values (re-scored from the stored maps)."""
    long = []
    for _, r in lb.runs.iterrows():
        for m in lb.metrics:
            key, scale, _ = COLUMNS[m]
            v = r.get(f"metrics.{key}")
            if v is not None and not (isinstance(v, float) and math.isnan(v)):
                long.append((r["tags.label"], r["tags.method"], r["tags.dataset"], str(r["tags.seed"]), "pooled", m, v * scale))
    pooled = pd.DataFrame(long, columns=["label", "method", "dataset", "seed", "volume", "metric", "value"])
    frames = [pooled] + ([lb.per_volume] if lb.per_volume is not None and len(lb.per_volume) else [])
    return pd.concat(frames, ignore_index=True).to_csv(index=False)


FORMATS = ("table", "md", "latex", "csv", "html")


def render(runs: pd.DataFrame, fmt: str = "md", metrics=DEFAULT_METRICS, datasets=None, n_resamples: int = 1000,
           bootstrap_seed: int = 0) -> str:
    if fmt not in FORMATS:
        raise LeaderboardError(f"unknown format {fmt!r}; choose {', '.join(FORMATS)}")
    lb = build_leaderboard(runs, metrics, datasets, n_resamples, bootstrap_seed)
    if fmt == "csv":
        return render_csv(lb)
    if fmt == "latex":
        return render_latex(lb)
    if fmt == "html":
        from lesionbench.leaderboard.report import render_html

        return render_html(lb)
    return render_markdown(lb)


def rich_table(runs: pd.DataFrame, metrics=DEFAULT_METRICS, datasets=None, n_resamples: int = 1000, bootstrap_seed: int = 0):
    from rich.markup import escape
    from rich.table import Table

    lb = build_leaderboard(runs, metrics, datasets, n_resamples, bootstrap_seed)
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
