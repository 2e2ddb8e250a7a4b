"""``lesionbench run``: a grid of methods x datasets x seeds, one tracked MLflow run per cell (design §6)."""

from __future__ import annotations

import dataclasses
import inspect
import os
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
from lesionbench.config import (
    ConfigError,
    DataConfig,
    config_dict,
    flatten,
    load_config_file,
    parse_set,
    resolve_data_config,
    stable_hash,
    sweep_overrides,
    typed_overrides,
)
from lesionbench.filenames import safe_name
from lesionbench.method import Method, SliceSet
from lesionbench.pipeline import PreparedDataset, lesion_loads
from lesionbench.plugins import Plugins
from lesionbench.preprocessing import PreparedCase, slice_labels
from lesionbench.seeding import restore_rng, rng_state, seed_everything
from lesionbench.splits import make_folds, make_split, read_split, split_hash, write_split
from lesionbench.volume import DataError

#: Objectives of log.evaluate that need validation voxel masks (tag uses_val_voxel_labels).
SLICE_LEVEL_OBJECTIVES = ("slice_auroc", "slice_ap")
DEFAULT_SCORE_PERCENTILE = 99.0


def resolve_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {spec}: CUDA is not available on this machine")
    return device


@dataclass
class Variant:
    """One method configuration of the grid; ``label`` is its row name in tables."""

    method: type[Method]
    label: str
    overrides: dict[str, Any]
    config: Any


def method_variants(method_cls: type[Method], profile: str, file_table: dict, set_options, source: str = "") -> list[Variant]:
    """``source`` names the file of ``file_table`` in errors (``config file X: ``)."""
    table = dict(file_table)
    label = table.pop("label", None)
    if label is not None and not isinstance(label, str):
        raise ConfigError(f"{source}{method_cls.name}.label: expected a string, got {label!r}")
    base = typed_overrides(method_cls.Config, table, method_cls.name, source)
    variants = []
    sweeps = sweep_overrides(method_cls.Config, set_options, method_cls.name)
    for sweep in sweeps:
        overrides = {**base, **sweep}
        try:
            config = method_cls.make_config(profile, overrides)
        except (KeyError, TypeError) as exc:
            raise ConfigError(str(exc).strip("'\"")) from None
        name = label or method_cls.name
        shown = {} if label else {k: getattr(config, k) for k in method_cls.label_keys}
        if len(sweeps) > 1:  # each swept value is its own row
            shown.update(sweep)
        if shown:
            name = variant_label(name, shown)
        variants.append(Variant(method_cls, name, overrides, config))
    return variants


def variant_label(name: str, values: dict) -> str:
    """A row label naming the values that make the variant: ``name[key=value,...]``."""
    return name + "[" + ",".join(f"{k}={_short(v)}" for k, v in values.items()) + "]"


def _short(v) -> str:
    return ",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)


def resolve_dataset(spec: str, plugins: Plugins) -> type:
    """A registered dataset name, or a layout TOML file (``--datasets my-data.toml``)."""
    if spec.endswith(".toml"):
        from lesionbench.datasets.layout import nifti_dataset

        return nifti_dataset(spec)
    return plugins.datasets.get(spec)


def data_for_dataset(cls, data: DataConfig, explicit: set[str]) -> DataConfig:
    """The adapter's ``data_defaults`` (real data: a slice size at which small lesions survive, a clip that
    keeps them above normal tissue) for the keys the user did not set in the config file or with --set."""
    defaults = {k: v for k, v in cls.data_defaults.items() if k not in explicit}
    return dataclasses.replace(data, **defaults) if defaults else data


def explicit_data_keys(request: "RunRequest") -> set[str]:
    keys = set(load_config_file(request.config_file).get("data", {}))
    return keys | {o.key for o in parse_set(request.set_options) if o.namespace == "data"}


def make_adapter(cls, root: str | None, data: DataConfig):
    """Instantiate an adapter, passing the ``data.*`` settings its constructor accepts."""
    params = inspect.signature(cls.__init__).parameters
    options = {k: v for k, v in config_dict(data).items() if k in params and k != "root"}
    if cls.needs_root and root is None:
        raise ConfigError(f"dataset {cls.name!r} reads files: give --root {cls.name}=PATH")
    try:
        return cls(root=root, **options)
    except (ConfigError, DataError):
        raise
    except ValueError as exc:  # an adapter refusing a data.* value: a clear error, not a traceback
        raise ConfigError(f"dataset {cls.name}: {exc}") from None


@dataclass(frozen=True)
class Fold:
    """A cross-validation cell's place: fold ``index`` of ``k``; ``cv_hash`` identifies the whole assignment."""

    index: int
    k: int
    cv_hash: str


def dataset_splits(adapter, data: DataConfig, split_seed: int, split_file: str | None, folds: int, cache_dir: Path
                   ) -> tuple[list[tuple[dict[str, str], Fold | None]], dict[str, int | None] | None]:
    """The dataset's split (a user's file, or a stratified one from the split seed), or its ``folds`` stratified
    cross-validation splits; and the case summaries (lesion voxel counts) they were stratified on."""
    cases = adapter.cases()
    if not cases:
        raise DataError(f"dataset {adapter.name}: no cases found" + (f" under {adapter.root}" if adapter.root else ""))
    if split_file and folds:
        raise ConfigError(f"dataset {adapter.name}: --split FILE and --folds exclude each other (a split file is one split)")
    if split_file:
        return [(read_split(split_file, cases), None)], None
    loads = lesion_loads(adapter, cases, cache_dir)  # masks only: no test image is read before fit
    if not folds:
        return [(make_split(loads, split_seed, data.val_fraction, data.test_fraction), None)], loads
    splits = make_folds(loads, folds, split_seed, data.val_fraction)
    cv = split_hash({"folds": splits})
    return [(split, Fold(i, folds, cv)) for i, split in enumerate(splits)], loads


# -- prediction and evaluation --------------------------------------------------------------------


def native_scored(dataset: PreparedDataset, case: PreparedCase, sv: M.ScoredVolume) -> M.ScoredVolume:
    """A scored volume moved to the case's source grid through the inverse of the dataset's crop and scale.

    Every slice with brain in the source grid is evaluated: slices that had no brain after resampling were
    not predicted and get the case's lowest map value and slice score. Slice labels come from the source
    masks (``min_lesion_voxels`` counted in source voxels).
    """
    native = case.native
    if native is None:
        raise DataError(f"case {case.case_id}: no source-grid masks in the cache; --eval-native needs them")
    full = native_map(dataset, case, sv)
    brain, lesion = native.brain, native.lesion
    idx = np.nonzero(brain.any(axis=(1, 2)))[0]
    scores = np.full(full.shape[0], float(sv.slice_scores.min()), np.float64)
    scores[case.brain_slices] = sv.slice_scores
    labels = slice_labels(lesion, brain, dataset.data.min_lesion_voxels)
    return M.ScoredVolume(case.case_id, full[idx], brain[idx], lesion[idx], scores[idx], labels[idx])


def native_map(dataset: PreparedDataset, case: PreparedCase, sv: M.ScoredVolume) -> np.ndarray:
    """The map of every slice in the source grid [D, H, W]; unpredicted slices and voxels outside the crop
    box hold the map's minimum."""
    fill = float(sv.map.min())
    resampled = np.full(case.brain.shape, fill, np.float32)
    resampled[case.brain_slices] = sv.map
    full = dataset.geometry.to_native(resampled, fill)
    if case.native is not None and full.shape != case.native.shape:
        raise DataError(f"case {case.case_id}: native map {full.shape} does not match the source grid {case.native.shape}")
    return full


def save_maps(dataset: PreparedDataset, cases: list[PreparedCase], scored: list[M.ScoredVolume], folder: Path) -> Path:
    """Write each map as NIfTI in its case's source space (shape and affine of the source file), so it
    overlays in ITK-SNAP or 3D Slicer; adapters without files get an identity affine in the D, H, W order."""
    from lesionbench.nifti import write_array, write_like

    source_file = getattr(dataset.adapter, "source_file", None)
    for case, sv in zip(cases, scored):
        full = native_map(dataset, case, sv)
        out = folder / f"{safe_name(case.case_id, f'dataset {dataset.name}: case id')}_map.nii.gz"
        if source_file is not None:
            write_like(full, source_file(case.case_id), out)
        else:
            write_array(full, out)
    return folder


def predict_cases(method: Method, cases: list[PreparedCase], batch: int) -> tuple[list[M.ScoredVolume], int]:
    """Predict every brain slice of each case, batched, and stack the maps back into volumes."""
    scored, n_slices = [], 0
    for case in cases:
        idx = case.brain_slices
        images = torch.from_numpy(np.ascontiguousarray(case.image[:, idx].transpose(1, 0, 2, 3)))
        maps, scores = [], []
        for start in range(0, len(idx), batch):
            chunk = images[start : start + batch].to(method.device)
            out = method.predict(chunk)
            m = out.maps.detach().float().cpu()
            if m.shape != (chunk.shape[0], *chunk.shape[2:]):
                raise RuntimeError(f"method {method.name!r} returned maps of shape {tuple(m.shape)} for input {tuple(chunk.shape)}; expected [B, H, W]")
            if not torch.isfinite(m).all():
                raise RuntimeError(f"method {method.name!r} returned NaN/Inf in its map for case {case.case_id}")
            maps.append(m.numpy())
            scores.append(None if out.scores is None else out.scores.detach().float().cpu().numpy())
        map_volume = np.concatenate(maps)
        brain = case.brain[idx]
        if any(s is None for s in scores):
            slice_scores = np.array([np.percentile(m[b], DEFAULT_SCORE_PERCENTILE) for m, b in zip(map_volume, brain)])
        else:
            slice_scores = np.concatenate(scores)
        scored.append(M.ScoredVolume(case.case_id, map_volume, brain, case.lesion[idx], slice_scores, case.labels[idx]))
        n_slices += len(idx)
    return scored, n_slices


class HarnessLog:
    """The FitLog handed to a method: training curves, and validation through the harness's masks."""

    def __init__(self, run, method: Method, val_cases: list[PreparedCase], batch: int, objective: str,
                 on_evaluate: Callable[[int, float], None] | None = None, on_step: Callable[[str], None] | None = None,
                 parts_dir: Path | None = None, parts_key: list | None = None):
        self.run, self.method, self.val_cases, self.batch = run, method, val_cases, batch
        self.parts_dir, self.parts_key = parts_dir, parts_key
        self.parts_reused: list[str] = []
        self.objective, self.on_evaluate, self.on_step = objective, on_evaluate, on_step
        self.evaluations: list[tuple[int, float]] = []
        self.warnings: list[str] = []  # the method's (log.warn), reported with the cell's
        self._last_step = -1

    def metric(self, name: str, value: float, step: int | None = None) -> None:
        if self.run is not None:
            self.run.metric(f"train/{name}", value, step)
        if self.on_step is not None:
            self.on_step(f"step {step}: {name} {float(value):.4g}")

    def warn(self, message: str) -> None:
        self.warnings.append(message)
        if self.run is not None:
            self.run.tag("warning." + stable_hash(message, 6), message[:500])

    def evaluate(self, step: int) -> float:
        scored, _ = predict_cases(self.method, self.val_cases, self.batch)
        value = M.evaluate_split(scored).get(self.objective, float("nan")) if scored else float("nan")
        self.evaluations.append((step, value))
        if self.run is not None:
            self.run.metric(f"fit/val_{self.objective}", value, step)
        if self.on_evaluate is not None:
            self.on_evaluate(step, value)  # the pruner may stop the trial here
        return value

    def artifact_image(self, name: str, image) -> None:
        if self.run is None:
            return
        from PIL import Image

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"{name}.png"
            Image.fromarray(np.asarray(image)).save(path)
            self.run.artifact(path, "fit")

    def cached(self, part: str, key: dict, train: Callable[[], dict]) -> dict:
        """Trained parts cached by a hash of (method, part, its key, data, split, seed) (design §3); the
        method is its ``parts_owner`` when it sets one (a method reusing another method's parts)."""
        if self.parts_dir is None:
            return train()
        owner = getattr(self.method, "parts_owner", None) or self.method.name
        digest = stable_hash([owner, part, key, self.parts_key], 20)
        path = self.parts_dir / f"{owner}-{part}-{digest}.pt"
        entry = self._load_part(path) if path.exists() else None
        if entry is not None:
            self.parts_reused.append(part)
            if self.run is not None:
                self.run.tag(f"reused.{part}", digest)
            if isinstance(entry, dict) and "part_state" in entry:  # older entries hold the bare state
                restore_rng(entry["rng_after"])  # the rest of fit draws what it would have drawn after training
                return entry["part_state"]
            return entry
        state = train()
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")  # workers sharing the workdir write their own temp file
        torch.save({"part_state": state, "rng_after": rng_state()}, tmp)
        tmp.replace(path)
        return state

    def _load_part(self, path: Path):
        """A cached part; None when the file is unreadable (truncated, corrupt), which is set aside as
        ``*.corrupt`` and reported, so the part is trained again. A file that torch's weights-only loader
        refuses (it holds more than tensors and plain values) is never opened otherwise: the cell fails naming it."""
        import pickle

        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            return None  # another worker set it aside a moment ago
        except pickle.UnpicklingError as exc:
            if str(exc).startswith("Weights only load failed"):
                raise RuntimeError(
                    f"trained part {path}: refused by torch.load(weights_only=True): it holds objects other than "
                    f"tensors and plain values, which lesionbench never writes; inspect or delete it (the part is "
                    f"then trained again)") from None
            error = exc
        except Exception as exc:  # torch reports truncation as RuntimeError or OSError, without the path
            error = exc
        aside = path.with_name(path.name + ".corrupt")
        try:
            path.replace(aside)
        except OSError:
            pass  # another worker set it aside first
        reason = (str(error).strip().splitlines() or [""])[0].split(". ")[0][:200]
        message = f"trained part {path} is unreadable ({type(error).__name__}: {reason}); set aside as {aside.name}, trained again"
        warnings.warn(message, stacklevel=3)
        if self.run is not None:
            self.run.tag("warning." + stable_hash(message, 6), message[:500])
        if self.on_step is not None:
            self.on_step(message)
        return None

    @property
    def used_val_voxel_labels(self) -> bool:
        """Validation voxel masks were read: log.evaluate ran on at least one validation case with a voxel
        objective (without a validation case, e.g. open-ms's split, every call returns NaN and reads nothing)."""
        return bool(self.evaluations) and bool(self.val_cases) and self.objective not in SLICE_LEVEL_OBJECTIVES


# -- the grid ---------------------------------------------------------------------------------------


@dataclass
class RunRequest:
    methods: list[str] | None = None
    datasets: list[str] = field(default_factory=lambda: ["synth-tumor", "synth-ms"])
    seeds: list[int] = field(default_factory=lambda: [0])
    profile: str | None = None
    workdir: Path = Path("lesionbench-runs")
    config_file: str | None = None
    set_options: list[str] = field(default_factory=list)
    device: str = "auto"
    force: bool = False
    split_seed: int = 0
    split_files: dict[str, str] = field(default_factory=dict)  # dataset -> file ("*" for all)
    roots: dict[str, str] = field(default_factory=dict)
    tracking_uri: str | None = None
    experiment: str = "lesionbench"
    objective: str = "auprc"
    eval_native: bool = False  # evaluate in the source voxel grid through the inverse transform
    save_maps: Path | None = None  # write test maps as NIfTI in the source space under this folder
    skip_bad: bool = False  # leave bad cases out (reported) instead of refusing the dataset
    folds: int = 0  # k-fold cross-validation over subjects (each fold its own cell); 0: one split
    storage: str | None = None  # an Optuna storage URL: workers share the grid's cells through it (cellqueue)
    study: str | None = None  # the shared queue's name (default: from the grid's cells)
    heartbeat: int = 60  # seconds between a running cell's heartbeats; a cell silent for twice that is retried


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


def check_workdir(workdir: Path) -> Path:
    workdir = Path(workdir)
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        # a probe of its own: workers sharing the workdir (run --storage) start together
        with tempfile.NamedTemporaryFile(dir=workdir, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise ConfigError(f"cannot write to workdir {workdir}: {exc.strerror or exc}") from None
    return workdir


def plan(request: RunRequest, plugins: Plugins):
    """Resolve and validate everything before any work starts: a bad name or value fails fast."""
    file_cfg = load_config_file(request.config_file)
    methods = request.methods
    if not methods:
        from_file = file_cfg.get("method")
        methods = [from_file] if isinstance(from_file, str) else list(from_file or plugins.methods.names())
    profile = request.profile or file_cfg.get("profile") or "quick"
    method_classes = [plugins.methods.get(m) for m in methods]
    dataset_classes = [resolve_dataset(d, plugins) for d in request.datasets]
    set_options = parse_set(request.set_options)
    known_ns = {"data", *methods}
    for opt in set_options:
        if opt.namespace not in known_ns:
            raise ConfigError(f"--set {opt.namespace}.{opt.key}: {opt.namespace!r} is neither 'data' nor a method of this run ({', '.join(methods)})")
    for key, value in file_cfg.items():
        if isinstance(value, dict) and key not in known_ns:
            raise ConfigError(f"config file {request.config_file}: table [{key}] is neither [data] nor a method of this run")
    source = f"config file {request.config_file}: " if request.config_file else ""
    data = resolve_data_config(profile, file_cfg.get("data", {}), [o for o in set_options if o.namespace == "data"], source)
    variants = []
    for cls in method_classes:
        variants += method_variants(cls, profile, file_cfg.get(cls.name, {}), [o for o in set_options if o.namespace == cls.name],
                                    source)
    labels = [v.label for v in variants]
    dupes = sorted({l for l in labels if labels.count(l) > 1})
    if dupes:
        raise ConfigError(f"two configurations share the label(s) {dupes}; give each its own `label`")
    for label in labels:  # a label names the row's --save-maps folder
        safe_name(label, "label")
    for dcls in dataset_classes:  # a dataset name names cache, split and map paths
        safe_name(dcls.name, "dataset name", forbid="=")
    names = {*request.datasets, *(d.name for d in dataset_classes)}
    for name in request.roots:  # a misspelt name would leave its data folder unused
        if name not in names:
            raise ConfigError(f"--root {name}=...: no dataset of this run is named {name!r} "
                              f"(datasets: {', '.join(d.name for d in dataset_classes)})")
    return profile, data, variants, dataset_classes


def prepare_datasets(spec: str, dcls, data: DataConfig, request: "RunRequest", workdir: Path, explicit: set[str],
                     console) -> list[tuple[PreparedDataset, dict[str, str], Path]]:
    """A dataset of the grid, once per split (one, or one per cross-validation fold): split, preprocessed (cached
    under the workdir; a fold's crop box is fitted on its own training cases), the split written to a file with
    its strata beside it. A fold's dataset carries its :class:`Fold` (``dataset.fold``)."""
    data = data_for_dataset(dcls, data, explicit)
    adapter = make_adapter(dcls, request.roots.get(dcls.name) or request.roots.get(spec), data)
    split_file = request.split_files.get(dcls.name) or request.split_files.get(spec) or request.split_files.get("*")
    splits, loads = dataset_splits(adapter, data, request.split_seed, split_file, request.folds, workdir / "cache")
    prepared = []
    for split, fold in splits:
        dataset = PreparedDataset(adapter, data, split, workdir / "cache", skip_bad=request.skip_bad)
        dataset.fold = fold
        if dataset.skipped:
            console.print(f"[yellow]dataset {dcls.name}: skipped {len(dataset.skipped)} bad case(s) (--skip-bad):[/yellow]")
            for case, why in dataset.skipped.items():
                console.print(f"[yellow]  {case}: {why}[/yellow]")
        prepared.append((dataset, dataset.split, write_split(dataset.split, workdir / "splits", dcls.name, loads)))
    return prepared


def prepare_dataset(spec: str, dcls, data: DataConfig, request: "RunRequest", workdir: Path, explicit: set[str],
                    console) -> tuple[PreparedDataset, dict[str, str], Path]:
    """A dataset with one split (``tune``: studies select on one validation part)."""
    if request.folds:
        raise ConfigError("cross-validation (--folds) is for `run`; a study tunes on one split's validation part")
    return prepare_datasets(spec, dcls, data, request, workdir, explicit, console)[0]


def cell_hash(variant: Variant, dataset: PreparedDataset, split: dict, seed: int, eval_space: str) -> str:
    return stable_hash([variant.method.name, config_dict(variant.config), dataset.preprocessing, split_hash(split), seed, eval_space], 16)


def run_grid(request: RunRequest, plugins: Plugins, console=None, on_cell: Callable[[CellResult], None] | None = None) -> list[CellResult]:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from lesionbench.tracking import Tracker, default_tracking_uri, git_commit

    console = console or Console(stderr=True)
    if request.storage:  # workers on several processes or machines share the cells
        from lesionbench.cellqueue import run_shared_grid

        return run_shared_grid(request, plugins, console, on_cell)
    profile, data, variants, dataset_classes = plan(request, plugins)
    workdir = check_workdir(request.workdir)
    device = resolve_device(request.device)
    uri = request.tracking_uri or default_tracking_uri(workdir)
    tracker = Tracker(uri, request.experiment, workdir / "artifacts")
    for line in tracker.fail_dead_runs():  # cells of killed runs on this workdir
        console.print(f"[yellow]{line}[/yellow]")
    commit = git_commit()
    results: list[CellResult] = []
    eval_space = "native" if request.eval_native else "resampled"
    explicit = explicit_data_keys(request)

    total = len(dataset_classes) * len(variants) * len(request.seeds) * max(request.folds, 1)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.fields[status]}"), console=console, transient=False) as progress:
        grid = progress.add_task("cells", total=total, status="")
        for spec, dcls in zip(request.datasets, dataset_classes):
            try:
                progress.update(grid, status=f"preparing {dcls.name}")
                prepared = prepare_datasets(spec, dcls, data, request, workdir, explicit, console)
            except (DataError, ConfigError) as exc:
                console.print(f"[red]dataset {dcls.name}: {exc}[/red]")
                for v in variants:
                    for seed in request.seeds:
                        for _ in range(max(request.folds, 1)):
                            results.append(CellResult(v.label, dcls.name, seed, "failed", error=str(exc)))
                            progress.advance(grid)
                continue
            for dataset, split, split_path in prepared:
                where = dcls.name + (f" fold {dataset.fold.index}" if dataset.fold else "")
                for variant in variants:
                    for seed in request.seeds:
                        cell = cell_hash(variant, dataset, split, seed, eval_space)
                        done = None if request.force else tracker.finished_run(cell)
                        if done is not None:
                            result = CellResult(variant.label, dcls.name, seed, "skipped", done.info.run_id)
                        else:
                            progress.update(grid, description=f"{variant.label} / {where} / seed {seed}", status="")
                            result = run_cell(
                                variant, dataset, split, split_path, seed, cell, tracker, device, profile, request,
                                commit, eval_space,
                                on_step=lambda s: progress.update(grid, status=s),
                            )
                            if result.status == "failed":
                                console.print(f"[red]cell {variant.label} / {where} / seed {seed} failed: {result.error}[/red]")
                            for message in result.warnings:
                                console.print(f"[yellow]{variant.label} / {where} / seed {seed}: {message}[/yellow]")
                        results.append(result)
                        if on_cell:
                            on_cell(result)
                        progress.advance(grid)
        progress.update(grid, description="cells", status="done")
    return results


def cell_tags(variant: Variant, dataset: PreparedDataset, seed: int, profile: str, request: RunRequest, commit: str,
              device: torch.device, run_kind: str, eval_space: str = "resampled") -> dict[str, Any]:
    """The tags of design §6 (``cell`` is the caller's); ``uses_val_voxel_labels`` is settled after fit."""
    split_file = request.split_files.get(dataset.name) or request.split_files.get("*")
    return {
        "method": variant.method.name, "label": variant.label, "dataset": dataset.name, "seed": seed,
        "split_seed": "file" if split_file else request.split_seed, "profile": profile, "run_kind": run_kind,
        "eval_space": eval_space, "uses_val_voxel_labels": "false", "version": lesionbench.__version__,
        "git_commit": commit, "device": str(device),
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


def run_cell(variant: Variant, dataset: PreparedDataset, split, split_path: Path, seed: int, cell: str, tracker,
             device: torch.device, profile: str, request: RunRequest, commit: str, eval_space: str,
             on_step=None, on_start: Callable[[str], None] | None = None) -> CellResult:
    cls = variant.method
    tags = cell_tags(variant, dataset, seed, profile, request, commit, device, "run", eval_space)
    tags["cell"] = cell
    params = cell_params(variant.method, variant.config, dataset, split, request.objective)
    run = tracker.start(f"{variant.label}/{dataset.name}/seed{seed}", tags, params)
    result = CellResult(variant.label, dataset.name, seed, "failed", run.run_id)
    if on_start is not None:
        on_start(run.run_id)
    try:
        seed_everything(seed)
        method = cls(variant.config, device=device, modalities=dataset.modalities)
        train = dataset.slice_set("train", cls.supervision)
        val = dataset.slice_set("val", cls.supervision)
        if len(train) == 0:
            raise DataError(f"dataset {dataset.name}: no training slices for a {cls.supervision.value}-supervised method")
        val_cases = dataset.val_cases()
        log = HarnessLog(run, method, val_cases, dataset.data.predict_batch, request.objective, on_step=on_step,
                         parts_dir=request.workdir / "parts",
                         parts_key=[dataset.preprocessing, split_hash(split), seed, str(device.type)])
        t0 = time.perf_counter()
        method.fit(train, val, log)
        fit_s = time.perf_counter() - t0
        run.tag("uses_val_voxel_labels", str(log.used_val_voxel_labels).lower())

        seed_everything(seed)  # stochastic inference (sampling) is seeded too
        val_scored, _ = predict_cases(method, val_cases, dataset.data.predict_batch)
        test_cases = dataset.test_cases()  # the only place the test split is opened
        if not test_cases:
            raise DataError(f"dataset {dataset.name}: no usable test case")
        if dataset.skipped:
            run.tag("skipped_cases", ", ".join(sorted(dataset.skipped))[:5000])
        t0 = time.perf_counter()
        test_scored, n_test_slices = predict_cases(method, test_cases, dataset.data.predict_batch)
        predict_s = time.perf_counter() - t0
        if eval_space == "native":
            val_eval = [native_scored(dataset, c, sv) for c, sv in zip(val_cases, val_scored)]
            test_eval = [native_scored(dataset, c, sv) for c, sv in zip(test_cases, test_scored)]
        else:
            val_eval, test_eval = val_scored, test_scored
        evaluation = M.evaluate(test_eval, val_eval)
        result.warnings = [*log.warnings, *evaluation.warnings]
        if request.save_maps is not None:
            written = save_maps(dataset, test_cases, test_scored, Path(request.save_maps) / dataset.name / variant.label / f"seed{seed}")
            run.tag("maps_dir", str(written))
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
        _log_artifacts(run, variant, dataset, split_path, seed, profile, evaluation, test_cases, test_scored, method, test_eval)
        run.finish("FINISHED")
        result.status, result.metrics = "finished", metrics
    except Exception as exc:  # one failing cell must not lose the others
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


def _log_artifacts(run, variant, dataset, split_path, seed, profile, evaluation, test_cases, test_scored, method, test_eval):
    import tomli_w
    from PIL import Image

    from lesionbench.figures import qualitative_grid
    from lesionbench.tracking import SCORES_ARTIFACT, score_arrays

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cfg = {
            "method": variant.method.name, "label": variant.label, "profile": profile, "seed": seed,
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
        run.artifact(split_path)
