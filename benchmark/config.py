"""Hyperparameter resolution: class defaults -> profile -> ``--config`` TOML -> ``--set`` (design §6-7).

Keys are namespaced: ``data.<key>`` for preprocessing and data generation, ``<method>.<key>`` for a
method's Config. ``--set key=a,b`` sweeps values (each value its own cell and label). For list-valued
keys (``data.modalities=flair,t2``) the comma separates items and ``;`` separates sweep values.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import tomllib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROFILES = ("smoke", "demo", "quick", "paper")


class ConfigError(ValueError):
    """A bad configuration value, key or file; the message names it."""


#: The smallest slice size and synthetic depth (the synthetic generators' limits; smaller grids lose the anatomy).
MIN_SIZE, MIN_DEPTH = 16, 8


@dataclass
class DataConfig:
    """Preprocessing and data generation settings (``data.*``)."""

    modalities: tuple[str, ...] = ()  # canonical names to use, in order; empty = all the dataset has
    size: int = 64  # in-plane slice size after the dataset's crop and scale
    min_lesion_voxels: int = 5  # a slice with 0 < lesion voxels < this is ambiguous (left out of training)
    min_brain_fraction: float = 0.05  # training slices need at least this fraction of brain pixels
    # per-volume percentile clip inside the brain, then scaled to [0, 1]; real-data adapters default to
    # 0.1-99.9 % (data_defaults): small MS loads are ~0.1 % of the brain and a 99 % clip ties them with normal tissue
    clip_low: float = 1.0
    clip_high: float = 99.0
    val_fraction: float = 0.15  # subject-level split fractions (ignored with --split FILE)
    test_fraction: float = 0.25
    subjects: int = 40  # synthetic sets: number of subjects
    healthy_fraction: float = 0.3  # synthetic sets: share of subjects without lesions
    depth: int = 32  # synthetic sets: axial slices per subject
    seed: int = 0  # synthetic sets: generator seed (independent of run seeds and of the split seed)
    predict_batch: int = 64  # slices per predict call
    # how the prepared-case cache stores images: "float16" (default: half the bytes, 27.6 MB per BraTS case at
    # 192 px; values in [0, 1] within 2^-11) or "float32" (exact). Every trained method's quick results on
    # synth-tumor stay within float32's seed range with float16 (docs/calibration.md#the-case-store-float16-by-default)
    cache_dtype: str = "float16"

    def __post_init__(self):
        """Every ``data.*`` value in its range: an inverted clip or a fraction above 1 would run and mislead."""
        problems = []

        def need(ok: bool, text: str):
            if not ok:
                problems.append(text)

        repeated = sorted({m for m in self.modalities if list(self.modalities).count(m) > 1})
        need(not repeated, f"data.modalities names {repeated} more than once")
        need(self.size >= MIN_SIZE, f"data.size={self.size}: the smallest slice size is {MIN_SIZE}")
        need(self.min_lesion_voxels >= 1, f"data.min_lesion_voxels={self.min_lesion_voxels}: give 1 or more")
        need(0.0 <= self.min_brain_fraction <= 1.0, f"data.min_brain_fraction={self.min_brain_fraction}: give a fraction in [0, 1]")
        need(0.0 <= self.clip_low < self.clip_high <= 100.0,
             f"data.clip_low={self.clip_low}, data.clip_high={self.clip_high}: percentiles with 0 <= clip_low < clip_high <= 100")
        need(0.0 <= self.val_fraction < 1.0, f"data.val_fraction={self.val_fraction}: give a fraction in [0, 1)")
        need(0.0 < self.test_fraction < 1.0, f"data.test_fraction={self.test_fraction}: give a fraction in (0, 1)")
        need(self.val_fraction + self.test_fraction < 1.0,
             f"data.val_fraction + data.test_fraction = {self.val_fraction + self.test_fraction:g} leaves no training case")
        need(self.subjects >= 1, f"data.subjects={self.subjects}: give 1 or more")
        need(self.depth >= MIN_DEPTH, f"data.depth={self.depth}: the synthetic sets need {MIN_DEPTH} slices or more")
        need(self.seed >= 0, f"data.seed={self.seed}: give 0 or more")
        need(self.cache_dtype in ("float32", "float16"), f"data.cache_dtype={self.cache_dtype!r}: give float32 or float16")
        need(self.predict_batch >= 1, f"data.predict_batch={self.predict_batch}: give 1 or more")
        if problems:
            raise ConfigError("; ".join(problems))


#: Data settings per profile (the smoke profile keeps the test suite fast on 2 cores).
DATA_PROFILES: dict[str, dict[str, Any]] = {
    "smoke": {"size": 32, "subjects": 14, "depth": 12},
    # the README's main job, every method on both sets within 5 minutes on 2 cores: 32 px slices keep the test
    # split powered (12 lesioned and 4 healthy volumes) at a quarter of the 64 px cost per slice
    "demo": {"subjects": 32, "depth": 16, "size": 32},
    "quick": {"subjects": 64},
    "paper": {"size": 128},
}


def _field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_sequence(tp) -> bool:
    return typing.get_origin(tp) in (tuple, list)


def parse_value(text: str, tp, key: str, source: str = "--set"):
    """Parse one ``--set`` value for a field of type ``tp``; ``source`` names where a file's string value came
    from (``config file X: ``), so its error does not blame ``--set``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if text.lower() in ("none", "null", ""):
            return None
        return parse_value(text, args[0], key, source)
    if _is_sequence(tp):
        (inner, *_) = typing.get_args(tp) or (str,)
        items = [t.strip() for t in text.split(",") if t.strip()]
        return tuple(parse_value(t, inner, key, source) for t in items)
    try:
        if tp is bool:
            low = text.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if tp is int:
            return int(text)
        if tp is float:
            return float(text)
        if tp is str:
            return text
    except ValueError:
        if source != "--set":
            raise ConfigError(f"{source}{key}: expected {getattr(tp, '__name__', tp)}, got {text!r}") from None
        raise ConfigError(f"--set {key}={text}: expected {getattr(tp, '__name__', tp)}") from None
    raise ConfigError(f"{source} {key}: values of type {tp} cannot be set from the command line".lstrip())


def coerce(value, tp, key: str, source: str = ""):
    """Check/convert a TOML value against a field type; ``source`` prefixes errors (``config file X: ``)."""
    if isinstance(value, str) and tp is not str:
        return parse_value(value, tp, key, source)
    if _is_sequence(tp):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}{key}: expected a list, got {value!r}")
        (inner, *_) = typing.get_args(tp) or (str,)
        return tuple(coerce(v, inner, key, source) for v in value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    base = typing.get_args(tp)[0] if typing.get_origin(tp) in (typing.Union, types.UnionType) else tp
    if value is not None and isinstance(base, type) and (not isinstance(value, base) or (isinstance(value, bool) and base is not bool)):
        raise ConfigError(f"{source}{key}: expected {base.__name__}, got {value!r}")
    return value


@dataclass
class SetOption:
    namespace: str  # "data" or a method name
    key: str
    values: list[str]  # more than one = a sweep


def parse_set(options: list[str]) -> list[SetOption]:
    parsed = []
    for opt in options:
        if "=" not in opt or "." not in opt.split("=", 1)[0]:
            raise ConfigError(f"--set {opt!r}: expected NAMESPACE.KEY=VALUE (e.g. vae.lr=1e-4, data.modalities=flair,t2)")
        lhs, rhs = opt.split("=", 1)
        namespace, key = lhs.strip().split(".", 1)
        parsed.append(SetOption(namespace, key, rhs.strip()))
    return parsed


def split_sweep(opt: SetOption, tp) -> list[str]:
    if _is_sequence(tp):
        return [v for v in opt.values.split(";")]
    return opt.values.split(",")


def load_config_file(path: str | Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    path = Path(path)
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


def typed_overrides(cls, table: dict[str, Any], where: str, source: str = "") -> dict[str, Any]:
    types_ = _field_types(cls)
    out = {}
    for key, value in table.items():
        if key not in types_:
            raise ConfigError(f"{source}{where}: unknown key {key!r}; known keys: {', '.join(sorted(types_))}")
        out[key] = coerce(value, types_[key], f"{where}.{key}", source)
    return out


def sweep_overrides(cls, options: list[SetOption], where: str) -> list[dict[str, Any]]:
    """The cartesian product of ``--set`` values for one namespace, typed."""
    types_ = _field_types(cls)
    axes = []
    for opt in options:
        if opt.key not in types_:
            raise ConfigError(f"--set {where}.{opt.key}: unknown key; known keys: {', '.join(sorted(types_))}")
        tp = types_[opt.key]
        axes.append([(opt.key, parse_value(v, tp, f"{where}.{opt.key}")) for v in split_sweep(opt, tp)])
    return [dict(combo) for combo in itertools.product(*axes)] if axes else [{}]


def config_dict(config) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(config).items()}


def stable_hash(obj: Any, length: int = 12) -> str:
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def flatten(prefix: str, d: dict[str, Any]) -> dict[str, str]:
    return {f"{prefix}.{k}": (",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)) for k, v in d.items()}


def resolve_data_config(profile: str, file_table: dict[str, Any], set_options: list[SetOption], source: str = "") -> DataConfig:
    """``source`` names the file of ``file_table`` in errors (``config file X: ``)."""
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile {profile!r}; profiles: {', '.join(PROFILES)}")
    values = dict(DATA_PROFILES[profile])
    values.update(typed_overrides(DataConfig, file_table, "data", source))
    sweeps = sweep_overrides(DataConfig, set_options, "data")
    if len(sweeps) > 1:
        raise ConfigError("data.* keys cannot be swept (one preprocessing per run); run again with another --workdir")
    values.update(sweeps[0])
    return DataConfig(**values)
