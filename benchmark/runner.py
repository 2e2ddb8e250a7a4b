"""``lesionbench run``: a grid of methods x datasets x seeds, one tracked MLflow run per cell (design §6), run in
this process; with ``--storage`` the cells are shared with other workers (:mod:`lesionbench.cellqueue`)."""

from __future__ import annotations

from typing import Callable

from lesionbench.cell import CellResult, run_cell
from lesionbench.cellqueue import run_shared_grid
from lesionbench.grid import plan_grid
from lesionbench.planning import RunRequest
from lesionbench.plugins import Plugins


def run_grid(request: RunRequest, plugins: Plugins, console=None, on_cell: Callable[[CellResult], None] | None = None) -> list[CellResult]:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = console or Console(stderr=True)
    if request.storage:  # workers on several processes or machines share the cells
        return run_shared_grid(request, plugins, console, on_cell)
    grid = plan_grid(request, plugins)
    tracker = grid.tracker()
    for line in tracker.fail_dead_runs():  # cells of killed runs on this workdir
        console.print(f"[yellow]{line}[/yellow]")
    harness = grid.harness(tracker)
    results: list[CellResult] = []

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.fields[status]}"), console=console, transient=False) as progress:
        bar = progress.add_task("cells", total=grid.size, status="")
        for cells, failed in grid.datasets(console, on_prepare=lambda name: progress.update(bar, status=f"preparing {name}")):
            for result in failed:
                results.append(result)
                progress.advance(bar)
            for cell in cells:
                done = None if request.force else tracker.finished_run(cell.key)
                if done is not None:
                    result = CellResult(cell.variant.label, cell.dataset.name, cell.seed, "skipped", done.info.run_id)
                else:
                    progress.update(bar, description=cell.where, status="")
                    result = run_cell(cell, harness, on_step=lambda s: progress.update(bar, status=s))
                    if result.status == "failed":
                        console.print(f"[red]cell {cell.where} failed: {result.error}[/red]")
                    for message in result.warnings:
                        console.print(f"[yellow]{cell.where}: {message}[/yellow]")
                results.append(result)
                if on_cell:
                    on_cell(result)
                progress.advance(bar)
        progress.update(bar, description="cells", status="done")
    return results
