"""Subject-level splits (design §4): made from ``--split-seed`` (independent of run seeds) or read from a
user's file (case id -> train / val / test), written to a file and identified by its hash."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from lesionbench.config import ConfigError, stable_hash

PARTS = ("train", "val", "test")


def make_split(cases: list[str], split_seed: int, val_fraction: float, test_fraction: float) -> dict[str, str]:
    if len(cases) < 3:
        raise ConfigError(f"{len(cases)} cases cannot be split into train / val / test")
    order = np.random.default_rng(split_seed).permutation(sorted(cases))
    n = len(cases)
    n_test = max(1, round(n * test_fraction))
    n_val = max(1, round(n * val_fraction)) if val_fraction > 0 else 0
    if n_test + n_val >= n:
        raise ConfigError(f"split fractions val={val_fraction} test={test_fraction} leave no training case of {n}")
    parts = ["test"] * n_test + ["val"] * n_val + ["train"] * (n - n_test - n_val)
    return {str(c): p for c, p in sorted(zip(order, parts))}


def read_split(path: str | Path, cases: list[str]) -> dict[str, str]:
    """A user's split file, used as it is; cases the data has but the file omits are left out."""
    path = Path(path)
    try:
        split = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"split file {path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"split file {path} is not valid JSON: {exc}") from None
    if not isinstance(split, dict):
        raise ConfigError(f"split file {path}: expected an object case id -> train/val/test")
    bad = {k: v for k, v in split.items() if v not in PARTS}
    if bad:
        raise ConfigError(f"split file {path}: parts must be train/val/test, got {bad}")
    unknown = sorted(set(split) - set(cases))
    if unknown:
        raise ConfigError(f"split file {path} names cases the dataset does not have: {unknown}")
    if "train" not in split.values() or "test" not in split.values():
        raise ConfigError(f"split file {path} needs at least one train and one test case")
    return dict(sorted(split.items()))


def split_hash(split: dict[str, str]) -> str:
    return stable_hash(split)


def write_split(split: dict[str, str], directory: Path, dataset: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{dataset}-{split_hash(split)}.json"
    tmp = path.with_suffix(f".{os.getpid()}.tmp")  # workers sharing the workdir may write it at once
    tmp.write_text(json.dumps(split, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path


def cases_in(split: dict[str, str], part: str) -> list[str]:
    return [c for c, p in split.items() if p == part]
