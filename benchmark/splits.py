"""Subject-level splits (design §4): made from ``--split-seed`` (independent of run seeds) or read from a
user's file (case id -> train / val / test), written to a file and identified by its hash.

Splits the suite makes are **stratified**: cases are grouped by lesion load (healthy, then lesioned cases below
and above the median lesion load), each group is shuffled by the split seed, and the groups, one after the
other, are dealt out to the parts by a largest-deficit rule, so every part gets each stratum in proportion
(within one case) and the part sizes are exact. Lesion loads come from case summaries (lesion voxel counts read
from the masks, never the images; :func:`lesionbench.pipeline.lesion_loads`). The strata are written beside the
split file (``<split>.strata.json``), never into it, so split files and their hashes keep their format.

k-fold cross-validation (:func:`make_folds`) deals the same ordered cases round-robin to k folds: every case is
tested once, each fold's validation part is drawn, stratified, from its training part.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from lesionbench.config import ConfigError, stable_hash

PARTS = ("train", "val", "test")
#: Strata, in the order they are dealt out (lesion load unknown: one stratum).
STRATA = ("healthy", "small", "large", "unknown")


def strata(loads: dict[str, int | None]) -> dict[str, str]:
    """case -> stratum: ``healthy`` (no lesion voxel), ``small`` / ``large`` (lesion load below / at or above the
    lesioned cases' median), ``unknown`` (the adapter gives no lesion summary)."""
    lesioned = [v for v in loads.values() if v]
    median = float(np.median(lesioned)) if lesioned else 0.0
    out = {}
    for case, load in loads.items():
        if load is None:
            out[case] = "unknown"
        elif load == 0:
            out[case] = "healthy"
        else:
            out[case] = "small" if load < median else "large"
    return out


def _ordered(loads: dict[str, int | None], split_seed: int) -> tuple[list[str], dict[str, str]]:
    """The cases stratum by stratum, each stratum shuffled by the split seed."""
    by_case = strata(loads)
    rng = np.random.default_rng(split_seed)
    order = []
    for name in STRATA:
        members = sorted(c for c, s in by_case.items() if s == name)
        order += [str(c) for c in rng.permutation(members)] if members else []
    return order, by_case


def _deal(order: list[str], targets: dict[str, int]) -> dict[str, str]:
    """Each case in turn to the part furthest behind its quota (quota of part p after i cases: targets[p] * i / n).

    The deficit of every part stays below one case, so each stretch of ``order`` (a stratum) is shared in
    proportion and the final counts equal ``targets``; ties go to the parts in the order ``targets`` lists them."""
    n = len(order)
    assigned = dict.fromkeys(targets, 0)
    out = {}
    for i, case in enumerate(order, start=1):
        part = max(targets, key=lambda p: targets[p] * i / n - assigned[p])
        assigned[part] += 1
        out[case] = part
    return out


def _sizes(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    n_test = max(1, round(n * test_fraction))
    n_val = max(1, round(n * val_fraction)) if val_fraction > 0 else 0
    if n_test + n_val >= n:
        raise ConfigError(f"split fractions val={val_fraction} test={test_fraction} leave no training case of {n}")
    return n_val, n_test


def make_split(cases: list[str] | dict[str, int | None], split_seed: int, val_fraction: float,
               test_fraction: float) -> dict[str, str]:
    """A stratified train / val / test split. ``cases``: ids, or id -> lesion voxel count (None: unknown)."""
    loads = cases if isinstance(cases, dict) else dict.fromkeys(cases)
    if len(loads) < 3:
        raise ConfigError(f"{len(loads)} cases cannot be split into train / val / test")
    n_val, n_test = _sizes(len(loads), val_fraction, test_fraction)
    order, _ = _ordered(loads, split_seed)
    split = _deal(order, {"test": n_test, "val": n_val, "train": len(order) - n_test - n_val})
    return dict(sorted(split.items()))


def make_folds(cases: dict[str, int | None], k: int, split_seed: int, val_fraction: float) -> list[dict[str, str]]:
    """k stratified folds: fold i tests the i-th share of the cases; its validation part (``val_fraction`` of all
    cases, at least one) is dealt, stratified, from the other cases; the rest train."""
    n = len(cases)
    if k < 2:
        raise ConfigError(f"--folds {k}: cross-validation needs at least 2 folds")
    if n < k:
        raise ConfigError(f"--folds {k}: the dataset has only {n} cases")
    order, _ = _ordered(cases, split_seed)
    fold_of = {case: i % k for i, case in enumerate(order)}
    splits = []
    for fold in range(k):
        rest = [c for c in order if fold_of[c] != fold]
        n_val = max(1, round(n * val_fraction)) if val_fraction > 0 else 0
        if n_val >= len(rest):
            raise ConfigError(f"--folds {k}: {n} cases leave no training case after the test fold and {n_val} validation cases")
        split = _deal(rest, {"val": n_val, "train": len(rest) - n_val})
        split.update({c: "test" for c in order if fold_of[c] == fold})
        splits.append(dict(sorted(split.items())))
    return splits


def read_split(path: str | Path, cases: list[str]) -> dict[str, str]:
    """A user's split file, used as it is; cases the data has but the file omits are left out."""
    path = Path(path)

    def unique_keys(pairs):  # json keeps the last of repeated keys: a case named twice would be silently moved
        from collections import Counter

        repeated = sorted(k for k, n in Counter(k for k, _ in pairs).items() if n > 1)
        if repeated:
            raise ConfigError(f"split file {path} names case(s) {repeated} more than once; give each case one part")
        return dict(pairs)

    try:
        split = json.loads(path.read_text(), object_pairs_hook=unique_keys)
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


def write_split(split: dict[str, str], directory: Path, dataset: str, loads: dict[str, int | None] | None = None) -> Path:
    """``<dataset>-<hash>.json``; with ``loads``, the strata beside it (``.strata.json``: case -> stratum, lesion
    voxels, part, and per part the count of each stratum)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{dataset}-{split_hash(split)}.json"
    _atomic_write(path, json.dumps(split, indent=1, sort_keys=True) + "\n")
    if loads is not None:
        by_case = strata({c: loads.get(c) for c in split})
        counts = {p: {s: sum(1 for c in split if split[c] == p and by_case[c] == s) for s in STRATA} for p in PARTS}
        record = {"split": path.name, "strata_rule": "healthy: 0 lesion voxels; small / large: below / at or above "
                  "the lesioned cases' median lesion load; unknown: no lesion summary",
                  "counts": {p: {s: n for s, n in c.items() if n} for p, c in counts.items()},
                  "cases": {c: {"part": split[c], "stratum": by_case[c], "lesion_voxels": loads.get(c)} for c in sorted(split)}}
        _atomic_write(path.with_suffix(".strata.json"), json.dumps(record, indent=1) + "\n")
    return path


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(f".{os.getpid()}.tmp")  # workers sharing the workdir may write it at once
    tmp.write_text(text)
    os.replace(tmp, path)


def cases_in(split: dict[str, str], part: str) -> list[str]:
    return [c for c, p in split.items() if p == part]
