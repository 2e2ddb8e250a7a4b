"""Read FINISHED ``run_kind=run`` runs (the latest per cell) and make the table: rows = ``label``,
columns = datasets x metrics, mean ± std over seeds."""

from __future__ import annotations

import math

import pandas as pd

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
HEADERS = {"dice_best": "⌈Dice⌉", "fit_s": "fit s", "predict_ms": "ms/slice", "wolleb_dice": "Otsu Dice (Wolleb)",
           "wolleb_auroc": "slice AUROC (Wolleb)"}
CONSISTENT_PER_DATASET = ("params.data.preprocessing_hash", "params.split_hash", "tags.eval_space")

FOOTNOTE = (
    "auprc: average precision over all test brain voxels pooled (primary); ⌈Dice⌉: best pooled Dice over all "
    "thresholds chosen on the test set — an upper bound, not an achievable score; dice_val: pooled test Dice at "
    "the threshold that maximises pooled Dice on the validation split (uses validation voxel labels); "
    "mean ± std over seeds ({seeds})."
)


WOLLEB_NOTE = (
    " Otsu Dice / slice AUROC (Wolleb): Wolleb et al. (2022)'s protocol, a threshold per test slice (Otsu) and means over "
    "diseased slices only; comparable with that paper's table, not with the pooled columns."
)


def footnote(seeds, metrics) -> str:
    note = FOOTNOTE.format(seeds=", ".join(map(str, seeds)))
    return note + (WOLLEB_NOTE if any(m.startswith("wolleb_") for m in metrics) else "")


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
        row = {"run_id": r.info.run_id, "start_time": r.info.start_time}
        row.update({f"tags.{k}": v for k, v in r.data.tags.items()})
        row.update({f"params.{k}": v for k, v in r.data.params.items()})
        row.update({f"metrics.{k}": v for k, v in r.data.metrics.items()})
        rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        raise LeaderboardError(f"no finished runs in {tracking_uri} (experiment {experiment!r})")
    # the latest finished run of each cell
    return df.sort_values("start_time", ascending=False).drop_duplicates("tags.cell").reset_index(drop=True)


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


def build_table(runs: pd.DataFrame, metrics=DEFAULT_METRICS, datasets=None) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(means, stds, seed counts), each indexed by label with (dataset, metric) columns."""
    unknown = [m for m in metrics if m not in COLUMNS]
    if unknown:
        raise LeaderboardError(f"unknown metric(s) {unknown}; choose from {', '.join(COLUMNS)}")
    if datasets:
        runs = runs[runs["tags.dataset"].isin(datasets)]
    _check_consistent(runs)
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


def _fmt(mean: float, std: float, metric: str) -> str:
    if math.isnan(mean):
        return "–"
    digits = 1 if metric in ("fit_s", "predict_ms") else 3
    text = f"{mean:.{digits}f}"
    return text if math.isnan(std) else f"{text} ± {std:.{digits}f}"


def formatted(means, stds, bold: str = "**") -> pd.DataFrame:
    out = pd.DataFrame(index=means.index, columns=means.columns, dtype=object)
    for col in means.columns:
        metric = col[1]
        higher = COLUMNS[metric][2]
        best = means[col].max() if higher else None
        for label in means.index:
            cell = _fmt(means.at[label, col], stds.at[label, col], metric)
            if higher and not math.isnan(means.at[label, col]) and means.at[label, col] == best and len(means) > 1:
                cell = f"{bold}{cell}{bold}"
            out.at[label, col] = cell
    return out


def render(runs: pd.DataFrame, fmt: str = "md", metrics=DEFAULT_METRICS, datasets=None) -> str:
    means, stds, counts = build_table(runs, metrics, datasets)
    seeds = sorted(runs["tags.seed"].unique(), key=lambda s: int(s) if str(s).isdigit() else str(s))
    note = footnote(seeds, metrics)
    header = [f"{d} {HEADERS.get(m, m)}" for d, m in means.columns]
    if fmt == "csv":
        long = []
        for _, r in runs.iterrows():
            for m in metrics:
                key, scale, _ = COLUMNS[m]
                v = r.get(f"metrics.{key}")
                if v is not None and not (isinstance(v, float) and math.isnan(v)):
                    long.append({"label": r["tags.label"], "method": r["tags.method"], "dataset": r["tags.dataset"],
                                 "seed": r["tags.seed"], "metric": m, "value": v * scale})
        return pd.DataFrame(long).to_csv(index=False)
    if fmt == "latex":
        table = formatted(means, stds, bold="")
        body = table.copy()
        body.columns = header
        return body.to_latex(escape=True) + f"% {note}\n"
    if fmt == "md":
        table = formatted(means, stds)
        lines = ["| label | " + " | ".join(header) + " |", "|---" * (len(header) + 1) + "|"]
        for label in table.index:
            lines.append(f"| {label} | " + " | ".join(table.loc[label]) + " |")
        return "\n".join(lines) + f"\n\n{note}\n"
    raise LeaderboardError(f"unknown format {fmt!r}; choose table, md, latex or csv")


def rich_table(runs: pd.DataFrame, metrics=DEFAULT_METRICS, datasets=None):
    from rich.table import Table

    means, stds, _ = build_table(runs, metrics, datasets)
    table = formatted(means, stds, bold="")
    seeds = sorted(runs["tags.seed"].unique())
    rt = Table(title="lesionbench leaderboard", caption=footnote(seeds, metrics), caption_justify="left")
    rt.add_column("label", style="bold")
    for d, m in means.columns:
        rt.add_column(f"{d}\n{HEADERS.get(m, m)}", justify="right")
    for label in table.index:
        cells = []
        for col in table.columns:
            text = table.at[label, col]
            higher = COLUMNS[col[1]][2]
            best = higher and len(table) > 1 and means.at[label, col] == means[col].max()
            cells.append(f"[bold green]{text}[/]" if best else text)
        rt.add_row(label, *cells)
    return rt
