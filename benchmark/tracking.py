"""MLflow tracking (design §6): one run per cell, exact tag and metric keys.

The default store is ``sqlite:///<workdir>/mlflow.db`` with artifacts beside it (MLflow 3 refuses the
``./mlruns`` file store); ``--tracking-uri`` points at a server when many machines share one store.
"""

from __future__ import annotations

import logging
import math
import os
import subprocess
import time
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

EXPERIMENT = "lesionbench"

#: The tags every cell run carries (design §6).
RUN_TAGS = (
    "method", "label", "dataset", "seed", "split_seed", "profile", "run_kind", "cell", "eval_space",
    "uses_val_voxel_labels", "version", "git_commit", "device", "torch_threads", "torch_version",
)


#: The artifact with what is needed to recompute pooled metrics on any subset of test volumes (design §5).
SCORES_ARTIFACT = "scores.npz"


def score_arrays(volumes) -> dict:
    """The arrays of :data:`SCORES_ARTIFACT` for scored test volumes (evaluation space): per case, the map in
    float16, brain and lesion masks, slice scores and labels, under ``<case_id>/<field>``."""
    import numpy as np

    arrays = {}
    for sv in volumes:
        arrays[f"{sv.case_id}/map"] = sv.map.astype(np.float16)
        arrays[f"{sv.case_id}/brain"] = sv.brain
        arrays[f"{sv.case_id}/lesion"] = sv.lesion
        arrays[f"{sv.case_id}/slice_scores"] = sv.slice_scores.astype(np.float32)
        arrays[f"{sv.case_id}/slice_labels"] = sv.slice_labels
    return arrays


def read_scores(path) -> list:
    """The scored test volumes stored by :func:`score_arrays`, in case order (ScoredVolume; maps float16)."""
    import numpy as np

    from lesionbench.metrics import ScoredVolume

    with np.load(path) as z:
        cases = sorted({k.rsplit("/", 1)[0] for k in z.files})
        return [ScoredVolume(c, z[f"{c}/map"], z[f"{c}/brain"], z[f"{c}/lesion"], z[f"{c}/slice_scores"],
                             z[f"{c}/slice_labels"]) for c in cases]


def default_tracking_uri(workdir: Path) -> str:
    return f"sqlite:///{Path(workdir).resolve() / 'mlflow.db'}"


def git_commit() -> str:
    """The commit of the lesionbench source tree, when it is a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    commit = out.stdout.strip()
    if out.returncode != 0 or not commit:
        return os.environ.get("LESIONBENCH_GIT_COMMIT", "unknown")
    dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=5)
    return commit + ("-dirty" if dirty.stdout.strip() else "")


class Tracker:
    def __init__(self, tracking_uri: str, experiment: str = EXPERIMENT, artifact_root: Path | None = None):
        import mlflow  # slow import: only when tracking

        for name in ("mlflow", "alembic"):  # their INFO lines would drown the progress bars
            logging.getLogger(name).setLevel(logging.WARNING)
        from mlflow.tracking import MlflowClient

        self._mlflow = mlflow
        self.uri = tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri)
        exp = self.client.get_experiment_by_name(experiment)
        if exp is None:
            location = artifact_root.resolve().as_uri() if artifact_root is not None else None
            try:
                self.experiment_id = self.client.create_experiment(experiment, artifact_location=location)
            except mlflow.exceptions.MlflowException:  # another worker created it a moment ago
                exp = self.client.get_experiment_by_name(experiment)
                if exp is None:
                    raise
                self.experiment_id = exp.experiment_id
        else:
            self.experiment_id = exp.experiment_id

    def finished_run(self, cell: str):
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.cell = '{cell}' and attributes.status = 'FINISHED' and tags.run_kind = 'run'",
            max_results=1,
            order_by=["attributes.start_time DESC"],
        )
        return runs[0] if runs else None

    def start(self, name: str, tags: dict[str, str], params: dict[str, str], parent_run_id: str | None = None) -> "TrackedRun":
        from mlflow.entities import Param, RunTag

        all_tags = {"mlflow.runName": name, **{k: str(v) for k, v in tags.items()}}
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        run = self.client.create_run(self.experiment_id, tags=all_tags, run_name=name)
        items = [Param(k, str(v)) for k, v in sorted(params.items())]
        for i in range(0, len(items), 100):  # MLflow caps params per batch
            self.client.log_batch(run.info.run_id, params=items[i : i + 100])
        return TrackedRun(self.client, run.info.run_id)


class TrackedRun:
    def __init__(self, client, run_id: str):
        self.client = client
        self.run_id = run_id

    def metric(self, key: str, value: float, step: int | None = None) -> None:
        value = float(value)
        if math.isnan(value):
            return  # MLflow stores NaN poorly; an absent metric is the honest record
        self.client.log_metric(self.run_id, key, value, timestamp=int(time.time() * 1000), step=step or 0)

    def metrics(self, values: dict[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step or 0) for k, v in values.items() if not math.isnan(float(v))]
        for i in range(0, len(batch), 500):
            self.client.log_batch(self.run_id, metrics=batch[i : i + 500])

    def tag(self, key: str, value) -> None:
        self.client.set_tag(self.run_id, key, str(value))

    def artifact(self, path: Path, subdir: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), subdir)

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status)
