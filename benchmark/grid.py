"""A grid of cells (methods x datasets x seeds, and folds) and what its two loops share — ``run`` in one
process (:mod:`lesionbench.runner`) and the grid shared by workers (:mod:`lesionbench.cellqueue`): the plan
resolved once, then each dataset prepared in turn with its cells."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch

from lesionbench.cell import Cell, CellResult, Harness
from lesionbench.config import ConfigError, DataConfig
from lesionbench.planning import RunRequest, Variant, check_workdir, explicit_data_keys, plan, resolve_device
from lesionbench.plugins import Plugins
from lesionbench.preparation import prepare_datasets
from lesionbench.volume import DataError


@dataclass
class Grid:
    request: RunRequest
    profile: str
    data: DataConfig
    variants: list[Variant]
    dataset_classes: list[type]
    workdir: Path
    device: torch.device
    tracking_uri: str
    commit: str

    @property
    def eval_space(self) -> str:
        return "native" if self.request.eval_native else "resampled"

    @property
    def size(self) -> int:
        return len(self.dataset_classes) * len(self.variants) * len(self.request.seeds) * max(self.request.folds, 1)

    def harness(self, tracker) -> Harness:
        return Harness(tracker, self.device, self.profile, self.request, self.commit)

    def tracker(self):
        from lesionbench.tracking import Tracker

        return Tracker(self.tracking_uri, self.request.experiment, self.workdir / "artifacts")

    def datasets(self, console, on_prepare: Callable[[str], None] | None = None
                 ) -> Iterator[tuple[list[Cell], list[CellResult]]]:
        """Each dataset prepared in turn (when the loop asks for it): its cells in grid order (split or fold,
        variant, seed), or, when it cannot be prepared, its cells as failed results (the error printed)."""
        explicit = explicit_data_keys(self.request)
        for spec, dcls in zip(self.request.datasets, self.dataset_classes):
            if on_prepare is not None:
                on_prepare(dcls.name)
            try:
                prepared = prepare_datasets(spec, dcls, self.data, self.request, self.workdir, explicit, console)
            except (DataError, ConfigError) as exc:
                console.print(f"[red]dataset {dcls.name}: {exc}[/red]")
                yield [], [CellResult(v.label, dcls.name, seed, "failed", error=str(exc))
                           for v in self.variants for seed in self.request.seeds for _ in range(max(self.request.folds, 1))]
                continue
            yield [Cell(variant, dataset, split, split_path, seed, self.eval_space, self.request.objective)
                   for dataset, split, split_path in prepared for variant in self.variants
                   for seed in self.request.seeds], []


def plan_grid(request: RunRequest, plugins: Plugins) -> Grid:
    """The grid resolved and checked before any work starts (a bad name or value fails fast)."""
    from lesionbench.tracking import default_tracking_uri, git_commit

    profile, data, variants, dataset_classes = plan(request, plugins)
    workdir = check_workdir(request.workdir)
    device = resolve_device(request.device)
    uri = request.tracking_uri or default_tracking_uri(workdir)
    return Grid(request, profile, data, variants, dataset_classes, workdir, device, uri, git_commit())
