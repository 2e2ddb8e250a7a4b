"""MLflow tracking (design §6): one run per cell, exact tag and metric keys.

The default store is ``sqlite:///<workdir>/mlflow.db`` with artifacts beside it (MLflow 3 refuses the
``./mlruns`` file store); ``--tracking-uri`` points at a server when many machines share one store.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import logging
import math
import os
import socket
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

from lesionbench.config import ConfigError

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

EXPERIMENT = "lesionbench"

#: The tags every cell run carries (design §6).
RUN_TAGS = (
    "method", "label", "dataset", "seed", "split_seed", "profile", "run_kind", "cell", "eval_space",
    "uses_val_voxel_labels", "version", "git_commit", "source_digest", "device", "torch_threads", "torch_version",
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


def owner_tags() -> dict[str, str]:
    """Who runs a run (tags ``host``, ``pid``): a later process can tell that a RUNNING run's owner is dead."""
    return {"host": socket.gethostname(), "pid": str(os.getpid())}


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def sqlite_file(uri: str) -> Path | None:
    """The database file of a ``sqlite:///FILE`` tracking URI; None for servers and in-memory stores."""
    if not uri.startswith("sqlite:///"):
        return None
    file = uri[len("sqlite:///"):].split("?", 1)[0]
    return Path(file) if file and file != ":memory:" else None


@contextmanager
def _store_lock(db: Path):
    """An exclusive lock beside the database: processes sharing a workdir create and migrate it one at a time."""
    import fcntl

    with open(db.with_name(db.name + ".lock"), "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _store_error(db: Path, exc: BaseException) -> ConfigError:
    reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    return ConfigError(
        f"MLflow store {db} cannot be opened ({type(exc).__name__}: {reason}); it was left as it is. "
        f"If it is corrupt or half-created, move it aside (mv {db} {db}.bad) and run again, or use another --workdir; "
        f"if its schema is out of date, back it up and run `mlflow db upgrade sqlite:///{db}`"
    )


def open_store(uri: str) -> None:
    """Create or check a sqlite store once, under a file lock, before any client touches it: MLflow migrates a
    fresh database in many steps, and two processes doing so at once crash or leave it half-migrated."""
    db = sqlite_file(uri)
    if db is None:
        return
    from mlflow.tracking._tracking_service.utils import _get_store  # cached per URI: clients reuse this store

    try:
        db.parent.mkdir(parents=True, exist_ok=True)
        with _store_lock(db):
            _get_store(uri)
    except Exception as exc:
        raise _store_error(db, exc) from None


def check_store_readable(uri: str) -> None:
    """Refuse, without writing, a sqlite store that MLflow would have to create or migrate on opening: a read
    command (the leaderboard) must not change the file, and a corrupt one gets a clear error."""
    db = sqlite_file(uri)
    if db is None:
        return
    if not db.is_file():
        raise ConfigError(f"no runs: MLflow store {db} does not exist; run `lesionbench run` first")
    import sqlalchemy
    from mlflow.store.db.utils import _all_tables_exist, _get_latest_schema_revision, _get_schema_version

    engine = sqlalchemy.create_engine(f"sqlite:///file:{db}?mode=ro&uri=true")
    try:
        if not sqlalchemy.inspect(engine).get_table_names():
            raise ConfigError(f"no runs: MLflow store {db} holds no tables (nothing was tracked there); "
                              "run `lesionbench run` first")
        if not _all_tables_exist(engine):
            raise _store_error(db, RuntimeError("some MLflow tables are missing"))
        current, head = _get_schema_version(engine), _get_latest_schema_revision()
        if current != head:
            raise _store_error(db, RuntimeError(f"schema version {current}, this MLflow expects {head}"))
    except ConfigError:
        raise
    except Exception as exc:  # sqlite's "file is not a database" and the like
        raise _store_error(db, exc) from None
    finally:
        engine.dispose()


#: The packages whose sources name the code of a run; in a checkout they are four folders (pyproject's package-dir),
#: in a wheel one tree.
SOURCE_PACKAGES = ("lesionbench", "lesionbench.methods", "lesionbench.datasets", "lesionbench.leaderboard")


def source_files(roots: tuple[tuple[str, Path], ...] | None = None) -> dict[str, Path]:
    """Module-qualified name (``lesionbench/methods/wargnier/method.py``) -> file, for every ``*.py`` under each
    (package, folder) of ``roots`` (default: where :data:`SOURCE_PACKAGES` are found, without importing them); the
    same names whether the package is a checkout or a wheel."""
    if roots is None:
        roots = tuple((name, Path(importlib.util.find_spec(name).submodule_search_locations[0])) for name in SOURCE_PACKAGES)
    files = {}
    for package, root in roots:
        for path in Path(root).rglob("*.py"):
            if "__pycache__" not in path.parts:
                files.setdefault(package.replace(".", "/") + "/" + path.relative_to(root).as_posix(), path)
    return files


@functools.lru_cache(maxsize=None)
def source_digest(roots: tuple[tuple[str, Path], ...] | None = None) -> str:
    """SHA-256 (16 hex digits) of the package's Python sources (qualified names and bytes, in name order): names the
    code a run used also where ``git_commit`` cannot, e.g. a wheel installed without its checkout (tox, ``pip install .``)."""
    digest = hashlib.sha256()
    for name, path in sorted(source_files(roots).items()):
        digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


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
        open_store(tracking_uri)
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

    def fail_dead_runs(self, run_kind: str = "run") -> list[str]:
        """Mark FAILED the RUNNING runs whose process is known to be dead (started on this host by a pid that no
        longer exists): a killed cell's run would otherwise stay RUNNING. Runs of live or unknown owners (another
        host, no owner tags) are left alone: processes sharing the workdir may still be running them."""
        host, lines = socket.gethostname(), []
        runs = self.client.search_runs([self.experiment_id], f"attributes.status = 'RUNNING' and tags.run_kind = '{run_kind}'",
                                       max_results=5000)
        for run in runs:
            tags = run.data.tags
            if tags.get("host") != host or not tags.get("pid", "").isdigit() or pid_alive(int(tags["pid"])):
                continue
            reason = (f"its process (pid {tags['pid']} on {host}) ended without closing the run: killed or crashed; "
                      f"marked FAILED by pid {os.getpid()}")
            self.client.set_tag(run.info.run_id, "error", reason)
            self.client.set_terminated(run.info.run_id, "FAILED")
            lines.append(f"run {run.info.run_id} ({tags.get('mlflow.runName', '?')}): {reason}")
        return lines

    def start(self, name: str, tags: dict[str, str], params: dict[str, str], parent_run_id: str | None = None) -> "TrackedRun":
        from mlflow.entities import Param, RunTag

        all_tags = {"mlflow.runName": name, **owner_tags(), **{k: str(v) for k, v in tags.items()}}
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
