"""Leaderboards from tracked runs (design §6): tables with their statistics, and an HTML report.

The tables need pandas, which is imported when one of their names is first used (``lesionbench list``
starts without it)."""

import importlib


class LeaderboardError(ValueError):
    pass


_LAZY = {"build_leaderboard": "tables", "build_table": "tables", "load_runs": "tables", "render": "formats"}
__all__ = ["LeaderboardError", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"lesionbench.leaderboard.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
