"""Leaderboards from tracked runs (design §6)."""

from lesionbench.leaderboard.tables import LeaderboardError, build_table, load_runs, render

__all__ = ["LeaderboardError", "build_table", "load_runs", "render"]
