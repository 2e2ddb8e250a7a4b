"""leaderboard/compute.py (#22): the core-hours a published table cost, per row."""

import pandas as pd
import pytest

from lesionbench.leaderboard.compute import compute_table, render_compute


def test_each_row_gets_its_study_s_trials_and_its_own_runs_and_the_rest_is_other():
    runs = pd.DataFrame([
        ("w", "trial", "w-study", "FINISHED", 0.5), ("w", "trial", "w-study", "FAILED", 0.25),  # a failed trial was spent
        ("w-tuned", "run", None, "FINISHED", 1.0), ("w-tuned", "run", None, "FINISHED", 2.0),
        ("w", "trial", "other-study", "FINISHED", 4.0),  # another study of the same method: not this row's
        ("intensity", "run", None, "FINISHED", 0.0), ("vae", "run", None, "KILLED", 8.0),
    ], columns=["label", "kind", "study", "status", "hours"])
    table, other, total = compute_table(runs, {"w-tuned": "w-study", "intensity": None})
    assert table.to_dict("records") == [
        {"label": "w-tuned", "trials": 2, "trial_hours": 0.75, "runs": 2, "run_hours": 3.0, "hours": 3.75},
        {"label": "intensity", "trials": 0, "trial_hours": 0.0, "runs": 1, "run_hours": 0.0, "hours": 0.0}]
    assert other == pytest.approx(12.0) and total == pytest.approx(15.75)
    text = render_compute(table, other, total, "synth-ms")
    assert "| w-tuned | 2 | 0.75 | 2 | 3.00 | 3.75 |" in text and "other runs on synth-ms" in text and "all: 15.75" in text
