"""One cell (design §6): a method configuration on one dataset split with one seed, tracked as one MLflow run.

Its steps are written here once — seed, build the method, hand it the train/val slices and a
:class:`~lesionbench.fitlog.HarnessLog`, fit, predict, evaluate, track (tags, params, metrics, artifacts) —
and ``run`` (the grid), the shared grid (``run --storage``) and ``tune`` (each trial) call :func:`run_cell`.
What differs is an argument: the run kind, the FitLog's callbacks (the pruner's ``on_evaluate``), and whether
the test split is evaluated (a trial never opens it: it scores the validation split only).
"""

from __future__ import annotations

import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

import lesionbench
from lesionbench import metrics as M
from lesionbench.config import config_dict, flatten, stable_hash
from lesionbench.fitlog import HarnessLog
from lesionbench.method import Method
from lesionbench.pipeline import PreparedDataset
from lesionbench.planning import DEFAULT_OBJECTIVE, VAL_OBJECTIVES, RunRequest, Variant
from lesionbench.prediction import native_scored, predict_cases, save_maps
from lesionbench.preparation import Fold
from lesionbench.seeding import seed_everything
from lesionbench.splits import split_hash
from lesionbench.tracking import source_digest
from lesionbench.volume import DataError


@dataclass
class CellResult:
    label: str
    dataset: str
    seed: int
    status: str  # "finished", "skipped", "failed"
    run_id: str | None = None
    error: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # e.g. metrics that could not be computed, and why


@dataclass
class Cell:
    """What makes a cell: a variant, a prepared dataset with its split (written to ``split_path``), a seed and the
    evaluation space."""

    variant: Variant
    dataset: PreparedDataset
    split: dict[str, str]
    split_path: Path | None
    seed: int
    eval_space: str = "resampled"
    objective: str = DEFAULT_OBJECTIVE  # what log.evaluate returns: it picks the checkpoints of methods that keep the best

    @property
    def key(self) -> str:
        """The ``cell`` tag: a finished run with this key is the cell done."""
        return cell_hash(self.variant, self.dataset, self.split, self.seed, self.eval_space, self.objective)

    @property
    def where(self) -> str:
        fold = getattr(self.dataset, "fold", None)
        return f"{self.variant.label} / {self.dataset.name}" + (f" fold {fold.index}" if fold else "") + f" / seed {self.seed}"


@dataclass
class Harness:
    """What the cells of one command share: where runs are tracked, the device, the profile, the request."""

    tracker: Any
    device: torch.device
    profile: str
    request: RunRequest
    commit: str


def cell_hash(variant: Variant, dataset: PreparedDataset, split: dict, seed: int, eval_space: str,
              objective: str = DEFAULT_OBJECTIVE) -> str:
    """The cell's identity. The validation objective is part of it (a method that keeps its best checkpoint on
    ``log.evaluate`` keeps another one under another objective), but only when it is not the default, so cells run
    before it entered keep their keys."""
    parts = [variant.method.name, config_dict(variant.config), dataset.preprocessing, split_hash(split), seed, eval_space]
    return stable_hash(parts + ([objective] if objective != DEFAULT_OBJECTIVE else []), 16)


def cell_tags(variant: Variant, dataset: PreparedDataset, seed: int, profile: str, request: RunRequest, commit: str,
              device: torch.device, run_kind: str, eval_space: str = "resampled") -> dict[str, Any]:
    """The tags of design §6 (``cell`` is the caller's); ``uses_val_voxel_labels`` is settled after fit."""
    split_file = request.split_files.get(dataset.name) or request.split_files.get("*")
    return {
        "method": variant.method.name, "label": variant.label, "dataset": dataset.name, "seed": seed,
        "split_seed": "file" if split_file else request.split_seed, "profile": profile, "run_kind": run_kind,
        "eval_space": eval_space, "uses_val_voxel_labels": "false", "version": lesionbench.__version__,
        "git_commit": commit, "source_digest": source_digest(), "device": str(device),
        # CPU results are reproducible for one thread count: reductions (and the guided sampler with them) change with it
        "torch_threads": torch.get_num_threads(), "torch_version": torch.__version__,
        **(_fold_tags(dataset.fold) if getattr(dataset, "fold", None) else {}),
    }


def _fold_tags(fold: Fold) -> dict[str, str]:
    return {"fold": str(fold.index), "folds": str(fold.k)}


def cell_params(cls: type[Method], config, dataset: PreparedDataset, split: dict, objective: str) -> dict[str, str]:
    """The params of design §6: the flattened config, preprocessing and split hash."""
    values = config_dict(config)
    fold = getattr(dataset, "fold", None)
    settings = {k: v for k, v in dataset.preprocessing.items() if k != "geometry"}
    return {
        **flatten(cls.name, values),
        **flatten("data", settings),
        "data.geometry": str(dataset.preprocessing["geometry"]),
        # a fold's crop box is fitted on that fold's training cases: the folds of one cross-validation share
        # their preprocessing settings, which is what the leaderboard compares (their geometry is data.geometry)
        "data.preprocessing_hash": stable_hash(settings if fold else dataset.preprocessing),
        **({"cv_hash": fold.cv_hash} if fold else {}),
        "split_hash": split_hash(split),
        "config_hash": stable_hash([cls.name, values]),
        "supervision": cls.supervision.value,
        "objective": f"val/{objective}",
    }


def run_cell(cell: Cell, harness: Harness, *, run_kind: str = "run", evaluate_test: bool = True,
             run_name: str | None = None, extra_tags: dict[str, Any] | None = None, parent_run_id: str | None = None,
             on_evaluate: Callable[[int, float], None] | None = None, on_step: Callable[[str], None] | None = None,
             on_start: Callable[[Any], None] | None = None, raise_errors: bool = False) -> CellResult:
    """Run one cell as a tracked run of kind ``run_kind``.

    ``evaluate_test=False`` (a trial): the test split is never opened; the validation split is scored and its
    ``val/*`` objectives logged. ``on_evaluate`` sees each ``log.evaluate`` value (the pruner may raise there),
    ``on_step`` the progress lines, ``on_start`` the tracked run once it exists. A failure is recorded on the run
    (tag ``error``, the traceback as an artifact, status FAILED) and returned, unless ``raise_errors``: then the
    caller, which owns the run's end (Optuna's callback for a trial), gets the exception.
    """
    variant, dataset, seed, request = cell.variant, cell.dataset, cell.seed, harness.request
    cls = variant.method
    tags = cell_tags(variant, dataset, seed, harness.profile, request, harness.commit, harness.device, run_kind, cell.eval_space)
    tags["cell"] = cell.key
    tags.update(extra_tags or {})
    params = cell_params(cls, variant.config, dataset, cell.split, request.objective)
    run = harness.tracker.start(run_name or f"{variant.label}/{dataset.name}/seed{seed}", tags, params,
                                parent_run_id=parent_run_id)
    result = CellResult(variant.label, dataset.name, seed, "failed", run.run_id)
    if on_start is not None:
        on_start(run)
    try:
        seed_everything(seed)
        method = cls(variant.config, device=harness.device, modalities=dataset.modalities, seed=seed)
        train = dataset.slice_set("train", cls.supervision)
        val = dataset.slice_set("val", cls.supervision)
        if len(train) == 0:
            raise DataError(f"dataset {dataset.name}: no training slices for a {cls.supervision.value}-supervised method")
        val_cases = dataset.val_cases()
        log = HarnessLog(run, method, val_cases, dataset.data.predict_batch, request.objective,
                         on_evaluate=on_evaluate, on_step=on_step, parts_dir=Path(request.workdir) / "parts",
                         parts_key=[dataset.preprocessing, split_hash(cell.split), seed, str(harness.device.type)])
        t0 = time.perf_counter()
        method.fit(train, val, log)
        fit_s = time.perf_counter() - t0
        if evaluate_test:  # a trial's tag was set from its objective, which is itself scored with validation masks
            # its own model selection read validation voxel masks, or the study that chose its configuration did
            used = log.used_val_voxel_labels or variant.tuned_with_voxel_labels
            run.tag("uses_val_voxel_labels", str(used).lower())
            if variant.tuned_on is not None:
                run.tag("tuned_on", variant.tuned_on)

        seed_everything(seed)  # stochastic inference (sampling) is seeded too
        val_scored, _ = predict_cases(method, val_cases, dataset.data.predict_batch)
        if evaluate_test:
            metrics, warned = _evaluate_test(cell, harness, run, method, val_cases, val_scored, fit_s, on_step)
            run.finish("FINISHED")
        else:
            metrics, warned = _evaluate_validation(run, val_scored, fit_s)  # its run is closed with the trial's state
        result.warnings = [*log.warnings, *warned]
        result.status, result.metrics = "finished", metrics
    except Exception as exc:  # one failing cell must not lose the others
        if raise_errors:
            raise
        result.error = f"{type(exc).__name__}: {exc}"
        try:
            run.tag("error", result.error[:5000])
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "traceback.txt"
                path.write_text(traceback.format_exc())
                run.artifact(path)
        finally:
            run.finish("FAILED")
    return result


def _evaluate_validation(run, val_scored: list[M.ScoredVolume], fit_s: float) -> tuple[dict[str, float], list[str]]:
    """A trial's scores: the validation objectives (the test split stays closed)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        values = M.evaluate_split(val_scored)
    for w in caught:
        run.tag("warning." + stable_hash(str(w.message), 6), f"validation: {w.message}"[:500])
    metrics = {**{f"val/{k}": v for k, v in values.items() if k in VAL_OBJECTIVES}, "time/fit_s": fit_s}
    run.metrics(metrics)
    return metrics, [str(w.message) for w in caught]


def _evaluate_test(cell: Cell, harness: Harness, run, method: Method, val_cases, val_scored, fit_s: float, on_step
                   ) -> tuple[dict[str, float], list[str]]:
    """A run's scores: the test split predicted and evaluated in the cell's evaluation space (thresholds from the
    validation split); metrics, the maps for re-scoring and the artifacts logged."""
    dataset, variant, seed = cell.dataset, cell.variant, cell.seed
    test_cases = dataset.test_cases()  # the only place the test split is opened
    if not test_cases:
        raise DataError(f"dataset {dataset.name}: no usable test case")
    if dataset.skipped:
        run.tag("skipped_cases", ", ".join(sorted(dataset.skipped))[:5000])
    t0 = time.perf_counter()
    test_scored, n_test_slices = predict_cases(method, test_cases, dataset.data.predict_batch)
    predict_s = time.perf_counter() - t0
    if cell.eval_space == "native":
        val_eval = [native_scored(dataset, c, sv) for c, sv in zip(val_cases, val_scored)]
        test_eval = [native_scored(dataset, c, sv) for c, sv in zip(test_cases, test_scored)]
    else:
        val_eval, test_eval = val_scored, test_scored
    evaluation = M.evaluate(test_eval, val_eval)
    if harness.request.save_maps is not None:
        folder = Path(harness.request.save_maps) / dataset.name / variant.label / f"seed{seed}"
        run.tag("maps_dir", str(save_maps(dataset, test_cases, test_scored, folder)))
    metrics = {f"test/{k}": v for k, v in evaluation.test.items()}
    metrics.update({f"val/{k}": v for k, v in evaluation.val.items()})
    # test inference is timed apart from fit: the quick budget covers fit and validation
    metrics.update({"time/fit_s": fit_s, "time/predict_s_per_slice": predict_s / max(n_test_slices, 1),
                    "time/test_predict_s": predict_s})
    metrics.update({f"threshold/{k}": v for k, v in evaluation.thresholds.items()})
    # Wolleb et al.'s per-slice protocol, under its own prefix: never pooled with the metrics above
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", M.UndefinedMetricWarning)  # no lesion: already said by evaluate
        metrics.update({f"wolleb_protocol/{k}": v for k, v in M.wolleb_protocol(test_eval).items()})
    run.metrics(metrics)
    for message in evaluation.warnings:
        run.tag("warning." + stable_hash(message, 6), message[:500])
        if on_step:
            on_step(message)
    _log_artifacts(run, cell, harness.profile, evaluation, test_cases, test_scored, test_eval)
    return metrics, list(evaluation.warnings)


def _log_artifacts(run, cell: Cell, profile: str, evaluation, test_cases, test_scored, test_eval) -> None:
    import tomli_w
    from PIL import Image

    from lesionbench.figures import qualitative_grid
    from lesionbench.tracking import SCORES_ARTIFACT, score_arrays

    variant, dataset = cell.variant, cell.dataset
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cfg = {
            "method": variant.method.name, "label": variant.label, "profile": profile, "seed": cell.seed,
            "dataset": dataset.name, variant.method.name: config_dict(variant.config),
            "data": {k: (list(v) if isinstance(v, tuple) else v) for k, v in config_dict(dataset.data).items()},
        }
        (tmp / "config.toml").write_text(tomli_w.dumps(cfg))
        evaluation.per_volume.to_csv(tmp / "per_volume.csv", index=False)
        # what is needed to recompute pooled metrics on any subset of volumes (evaluation space)
        np.savez_compressed(tmp / SCORES_ARTIFACT, **score_arrays(test_eval))
        channel = dataset.modalities.index("flair") if "flair" in dataset.modalities else 0
        Image.fromarray(qualitative_grid(test_cases, test_scored, channel)).save(tmp / "grid.png")
        for name in ("config.toml", "per_volume.csv", SCORES_ARTIFACT, "grid.png"):
            run.artifact(tmp / name)
        run.artifact(cell.split_path)
