"""A ``lesionbench run`` grid shared by workers through an Optuna storage (``run --storage URL``, design §6).

The worker that creates the queue (an Optuna study named after the grid's cells) enqueues one trial per
method x dataset x seed cell; every worker started with the same command then takes queued cells one at
a time until none is left. Taking a cell is an atomic state change in the storage, so no cell runs
twice; a cell that already has a FINISHED MLflow run is skipped (unless ``--force``). On RDB storages a
running cell records heartbeats: when its worker dies, the next worker that looks queues the cell again.

Cells that failed stay failed in their queue: repeating the command finds it empty. To retry them, give
``--study NAME`` for a new queue (finished cells are skipped), or run without ``--storage``.
"""

from __future__ import annotations

from typing import Callable

from lesionbench.cell import Cell, CellResult, run_cell
from lesionbench.config import stable_hash
from lesionbench.grid import plan_grid
from lesionbench.planning import RunRequest
from lesionbench.plugins import Plugins
from lesionbench.storage import (
    check_study_spec,
    create_once,
    display_url,
    fail_stale,
    heartbeat,
    open_storage,
    pop_waiting_trial,
)


def run_shared_grid(request: RunRequest, plugins: Plugins, console,
                    on_cell: Callable[[CellResult], None] | None = None) -> list[CellResult]:
    """Run this worker's share of the grid's cells; the results of the cells it took (or could not prepare)."""
    from optuna.trial import TrialState
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    grid = plan_grid(request, plugins)
    results: list[CellResult] = []
    cells: dict[str, Cell] = {}  # cell hash -> the cell
    for prepared, failed in grid.datasets(console):  # a dataset that cannot be prepared has no cell queued
        results += failed
        cells.update((cell.key, cell) for cell in prepared)
    if not cells:
        return results

    grid_hash = stable_hash(sorted(cells), 12)
    name = request.study or f"grid-{grid_hash}"
    tracker_box: list = []

    def tracker():
        if not tracker_box:
            tracker_box.append(grid.tracker())
        return tracker_box[0]

    def close_stale_run(study, trial) -> None:
        run_id = trial.user_attrs.get("mlflow_run_id")
        if run_id is not None:
            tracker().client.set_tag(run_id, "error", "the worker stopped sending heartbeats; the cell is queued again")
            tracker().client.set_terminated(run_id, "FAILED")
        console.print(f"[yellow]cell {trial.user_attrs.get('label')} / {trial.user_attrs.get('dataset')} / seed "
                      f"{trial.user_attrs.get('seed')}: its worker stopped; queued again[/yellow]")

    def enqueue(study) -> int:
        study.set_user_attr("spec", {"grid": grid_hash})
        tracker()  # the MLflow store is created here, before the other workers open it
        for key, cell in cells.items():
            study.enqueue_trial({}, user_attrs={"cell": key, "label": cell.variant.label, "dataset": cell.dataset.name,
                                                "seed": cell.seed})
        return len(cells)

    storage = open_storage(request.storage, request.heartbeat, on_stale=close_stale_run)
    study, created = create_once(storage, name, enqueue, "queued_cells")
    check_study_spec(study, {"grid": grid_hash})
    console.print(f"cell queue {name!r} ({'created' if created else 'joined'}, {len(cells)} cells) in {display_url(request.storage)}")

    taken = 0
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.fields[status]}"), console=console, transient=False) as progress:
        bar = progress.add_task("cells", total=len(cells), status="")
        while True:
            fail_stale(study)  # a dead worker's cell goes back into the queue
            trial = pop_waiting_trial(study)
            done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL))
            progress.update(bar, completed=min(len(done), len(cells)))
            if trial is None:
                break
            taken += 1
            cell = cells[trial.user_attrs["cell"]]
            with heartbeat(storage, trial._trial_id):
                finished = None if request.force else tracker().finished_run(cell.key)
                if finished is not None:
                    result = CellResult(cell.variant.label, cell.dataset.name, cell.seed, "skipped", finished.info.run_id)
                else:
                    progress.update(bar, description=cell.where, status="")
                    result = run_cell(
                        cell, grid.harness(tracker()), on_step=lambda s: progress.update(bar, status=s),
                        on_start=lambda run: storage.set_trial_user_attr(trial._trial_id, "mlflow_run_id", run.run_id),
                    )
                    if result.status == "failed":
                        console.print(f"[red]cell {cell.where} failed: {result.error}[/red]")
                    for message in result.warnings:
                        console.print(f"[yellow]{cell.where}: {message}[/yellow]")
            storage.set_trial_user_attr(trial._trial_id, "status", result.status)
            if result.run_id:
                storage.set_trial_user_attr(trial._trial_id, "mlflow_run_id", result.run_id)
            if result.status == "failed":
                storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
            else:
                storage.set_trial_state_values(trial._trial_id, state=TrialState.COMPLETE, values=[1.0])
            results.append(result)
            if on_cell:
                on_cell(result)
        progress.update(bar, description="cells", status="done")
    trials = study.get_trials(deepcopy=False)
    running = sum(t.state == TrialState.RUNNING for t in trials)
    failed = sum(t.state == TrialState.FAIL and t.user_attrs.get("status") == "failed" for t in trials)
    console.print(f"this worker took {taken} of the {len(cells)} cells of queue {name!r}"
                  + (f"; {running} still running on other workers" if running else "")
                  + (f"; {failed} failed (a new --study NAME queues them again; finished cells are skipped)" if failed else ""))
    return results
