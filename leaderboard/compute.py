"""The compute a published table cost (#22): core-hours per row, its study's trials and its test runs, read from
the run stores.

Core-hours of a run are its wall time times its ``torch_threads`` tag. Every run that ended counts, failed,
killed and superseded ones included (they were spent), each once, in the store that holds it. A part trained
once and reused from the cache (a DDPM, a classifier: the ``reused.*`` tags) counts in the run that trained it
only, so a row whose runs reused another row's parts looks cheaper than it would alone: the total over the
table is the honest figure. Runs still going (no end time) are left out.
"""

from __future__ import annotations

import pandas as pd

COLUMNS = ("label", "trials", "trial_hours", "runs", "run_hours", "hours")


def ended_runs(tracking_uris, dataset: str, experiment: str = "lesionbench") -> pd.DataFrame:
    """Every ended trial and test run on ``dataset`` in the stores: label, kind, study, status, core-hours."""
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    rows = []
    for uri in tracking_uris:
        client = MlflowClient(tracking_uri=uri)
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            continue
        token = None
        while True:
            page = client.search_runs([exp.experiment_id], f"tags.dataset = '{_quoted(dataset)}'", max_results=1000,
                                      page_token=token, run_view_type=ViewType.ALL)  # superseded runs too
            for r in page:
                tags = r.data.tags
                if tags.get("run_kind") not in ("trial", "run") or r.info.end_time is None:
                    continue
                threads = float(tags.get("torch_threads") or 1)
                hours = (r.info.end_time - r.info.start_time) / 3.6e6 * threads
                rows.append({"label": tags.get("label", "?"), "kind": tags["run_kind"], "study": tags.get("optuna_study"),
                             "status": r.info.status, "hours": max(hours, 0.0)})
            token = page.token
            if not token:
                break
    return pd.DataFrame(rows, columns=["label", "kind", "study", "status", "hours"])


def _quoted(name: str) -> str:
    if "'" in name:
        raise ValueError(f"dataset name {name!r}: a quote cannot go into a run filter")
    return name


def compute_table(runs: pd.DataFrame, rows: dict[str, str | None]) -> tuple[pd.DataFrame, float, float]:
    """Per row (``rows``: label -> the study that tuned it, None for an untuned row): trials and their
    core-hours, test runs and theirs. Returns the table, the core-hours of the other runs in the stores on
    this dataset (other rows, other studies) and the total."""
    out, used = [], pd.Series(False, index=runs.index)
    for label, study in rows.items():
        trials = runs[(runs["kind"] == "trial") & (runs["study"] == study)] if study else runs.iloc[:0]
        tests = runs[(runs["kind"] == "run") & (runs["label"] == label)]
        used |= runs.index.isin(trials.index) | runs.index.isin(tests.index)
        out.append({"label": label, "trials": len(trials), "trial_hours": trials["hours"].sum(), "runs": len(tests),
                    "run_hours": tests["hours"].sum(), "hours": trials["hours"].sum() + tests["hours"].sum()})
    table = pd.DataFrame(out, columns=list(COLUMNS))
    return table, float(runs.loc[~used, "hours"].sum()), float(runs["hours"].sum())


def render_compute(table: pd.DataFrame, other: float, total: float, dataset: str) -> str:
    lines = [f"| {dataset}: row | study trials | trials, core-h | test runs | test runs, core-h | core-h |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in table.itertuples(index=False):
        lines.append(f"| {r.label} | {r.trials} | {r.trial_hours:.2f} | {r.runs} | {r.run_hours:.2f} | {r.hours:.2f} |")
    lines += ["", f"Rows above: {table['hours'].sum():.2f} core-h; other runs on {dataset} in these stores (other rows "
              f"and studies, controls): {other:.2f}; all: {total:.2f}.",
              "Core-hours: wall time × torch threads of every ended run, failed and superseded ones included. A part "
              "trained once and reused (DDPM, classifier) counts in the run that trained it only, so the total is the "
              "fair figure, not one row's share of it. A row tuned on another dataset has no trials here."]
    return "\n".join(lines) + "\n"
