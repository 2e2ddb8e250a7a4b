"""What a command asks for, resolved before any work starts: the request, the method variants of the grid
(one row label each), the datasets, the device and the workdir. A bad name or value fails here, fast."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lesionbench.config import (
    ConfigError,
    load_config_file,
    parse_set,
    resolve_data_config,
    sweep_overrides,
    typed_overrides,
)
from lesionbench.filenames import safe_name
from lesionbench.method import Method
from lesionbench.plugins import Plugins


#: the validation key log.evaluate returns when a run names none (``run --objective``)
DEFAULT_OBJECTIVE = "auprc"

#: Objectives of log.evaluate that need no validation voxel masks (tag uses_val_voxel_labels).
SLICE_LEVEL_OBJECTIVES = ("slice_auroc", "slice_ap")
#: Validation metrics a study may maximise (keys of metrics.evaluate_split); a trial logs these.
VAL_OBJECTIVES = ("auprc", "auroc", "dice_best", "slice_auroc", "slice_ap")


def parse_objective(text: str, what: str = "--objective") -> str:
    """``val/auprc`` (or ``auprc``) -> ``auprc``; anything else is a ConfigError naming ``what`` and the value."""
    key = text[len("val/"):] if text.startswith("val/") else text
    if key.startswith("test/") or text.startswith("test/"):
        raise ConfigError(f"{what} {text!r}: the objective is a validation metric; the test split is never "
                          f"used for tuning (choose one of {', '.join('val/' + k for k in VAL_OBJECTIVES)})")
    if key not in VAL_OBJECTIVES:
        raise ConfigError(f"{what} {text!r}: not a validation metric; choose one of "
                          f"{', '.join('val/' + k for k in VAL_OBJECTIVES)} (val/slice_auroc: fully weakly supervised)")
    return key


def uses_val_voxel_labels(objective: str) -> bool:
    """Scoring validation on ``objective`` (a key of VAL_OBJECTIVES) reads validation voxel masks."""
    return objective not in SLICE_LEVEL_OBJECTIVES


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
    objective: str = DEFAULT_OBJECTIVE
    eval_native: bool = False  # evaluate in the source voxel grid through the inverse transform
    save_maps: Path | None = None  # write test maps as NIfTI in the source space under this folder
    skip_bad: bool = False  # leave bad cases out (reported) instead of refusing the dataset
    folds: int = 0  # k-fold cross-validation over subjects (each fold its own cell); 0: one split
    storage: str | None = None  # an Optuna storage URL: workers share the grid's cells through it (cellqueue)
    study: str | None = None  # the shared queue's name (default: from the grid's cells)
    heartbeat: int = 60  # seconds between a running cell's heartbeats; a cell silent for twice that is retried


@dataclass
class Variant:
    """One method configuration of the grid; ``label`` is its row name in tables."""

    method: type[Method]
    label: str
    overrides: dict[str, Any]
    config: Any
    #: the validation objective of the study that chose this configuration (``tuned_on`` of its config file,
    #: which ``lesionbench tune`` writes in best.toml), or None: a voxel objective means the row's configuration
    #: used validation voxel labels even where its own run reads none (tag ``uses_val_voxel_labels``)
    tuned_on: str | None = None

    @property
    def tuned_with_voxel_labels(self) -> bool:
        return self.tuned_on is not None and uses_val_voxel_labels(self.tuned_on.removeprefix("val/"))


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


def tuned_objective(value, source: str = "") -> str | None:
    """A config file's ``tuned_on`` (``val/<key>``, a key of VAL_OBJECTIVES), checked; None when absent."""
    if value is None:
        return None
    return "val/" + parse_objective(str(value), f"{source}tuned_on")


def variant_label(name: str, values: dict) -> str:
    """A row label naming the values that make the variant: ``name[key=value,...]``."""
    return name + "[" + ",".join(f"{k}={short_value(v)}" for k, v in values.items()) + "]"


def short_value(v) -> str:
    return ",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)


def resolve_dataset(spec: str, plugins: Plugins) -> type:
    """A registered dataset name, or a file a registered dataset loader reads (``--datasets my-data.toml``)."""
    return plugins.datasets.get_or_load(spec)


def resolve_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {spec}: CUDA is not available on this machine")
    return device


def explicit_data_keys(request: RunRequest) -> set[str]:
    """The ``data.*`` keys the user set (config file or --set); adapters' defaults fill the others."""
    keys = set(load_config_file(request.config_file).get("data", {}))
    return keys | {o.key for o in parse_set(request.set_options) if o.namespace == "data"}


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
    tuned_on = tuned_objective(file_cfg.get("tuned_on"), source)
    if parse_objective(request.objective) != request.objective:  # a key of VAL_OBJECTIVES, as cmd_run gives it
        raise ConfigError(f"objective {request.objective!r}: give the key without 'val/', e.g. 'auprc'")
    data = resolve_data_config(profile, file_cfg.get("data", {}), [o for o in set_options if o.namespace == "data"], source)
    variants = []
    for cls in method_classes:
        here = method_variants(cls, profile, file_cfg.get(cls.name, {}), [o for o in set_options if o.namespace == cls.name],
                               source)
        if tuned_on is not None and cls.name in file_cfg:  # the file's study tuned this method's table
            for v in here:
                v.tuned_on = tuned_on
        variants += here
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
