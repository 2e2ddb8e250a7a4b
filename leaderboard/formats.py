"""The leaderboard in each output format: Markdown, LaTeX and CSV (:mod:`.tables`), and the HTML page
(:mod:`.report`); ``table`` (the terminal) is rendered by :func:`lesionbench.leaderboard.tables.rich_table`."""

from __future__ import annotations

import pandas as pd

from lesionbench.leaderboard import LeaderboardError
from lesionbench.leaderboard.report import render_html
from lesionbench.leaderboard.tables import DEFAULT_METRICS, build_leaderboard, render_csv, render_latex, render_markdown

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
        return render_html(lb)
    return render_markdown(lb)
