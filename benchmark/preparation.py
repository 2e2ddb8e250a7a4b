"""A dataset of the grid made ready for its cells: the adapter, its split (a user's file, a stratified split or
cross-validation folds), the split written to a file, and the cases preprocessed into the cache."""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass
from pathlib import Path

from lesionbench.config import ConfigError, DataConfig, config_dict
from lesionbench.pipeline import PreparedDataset, lesion_loads
from lesionbench.planning import RunRequest
from lesionbench.splits import make_folds, make_split, read_split, split_hash, write_split
from lesionbench.volume import DataError


def data_for_dataset(cls, data: DataConfig, explicit: set[str]) -> DataConfig:
    """The adapter's ``data_defaults`` (real data: a slice size at which small lesions survive, a clip that
    keeps them above normal tissue) for the keys the user did not set in the config file or with --set."""
    defaults = {k: v for k, v in cls.data_defaults.items() if k not in explicit}
    return dataclasses.replace(data, **defaults) if defaults else data


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


def prepare_datasets(spec: str, dcls, data: DataConfig, request: RunRequest, workdir: Path, explicit: set[str],
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


def prepare_dataset(spec: str, dcls, data: DataConfig, request: RunRequest, workdir: Path, explicit: set[str],
                    console) -> tuple[PreparedDataset, dict[str, str], Path]:
    """A dataset with one split (``tune``: studies select on one validation part)."""
    if request.folds:
        raise ConfigError("cross-validation (--folds) is for `run`; a study tunes on one split's validation part")
    return prepare_datasets(spec, dcls, data, request, workdir, explicit, console)[0]
