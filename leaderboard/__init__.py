"""Leaderboards from tracked runs (design §6): tables with their statistics, and an HTML report."""

from lesionbench.leaderboard.tables import LeaderboardError, build_leaderboard, build_table, load_runs, render

__all__ = ["LeaderboardError", "build_leaderboard", "build_table", "load_runs", "render"]
