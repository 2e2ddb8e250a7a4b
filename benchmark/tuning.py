"""``lesionbench tune``: an Optuna search over a method's ``search_space`` on the validation split (design §6).

Each trial trains the method on the training split and returns a validation metric (``val/auprc`` by
default; ``val/slice_auroc`` and ``val/slice_ap`` use image labels only). The test split is never opened:
the harness evaluates validation volumes only, and ``log.evaluate`` reports intermediate values to the
pruner. ``--trials N`` is the study's total, shared by all its workers: running the same command on N
processes or machines makes them share the study, and running it again resumes it.

MLflow: the study is a parent run (``run_kind=study``), each trial a nested run (``run_kind=trial``) that
records its trial number (tag ``optuna_trial_number``); the trial records its run id (user attribute
``mlflow_run_id``). At the end the best configuration is written to ``<workdir>/tune/<study>/best.toml``,
which ``lesionbench run --config`` accepts as it is.
"""

from __future__ import annotations

import inspect
import math
import os
import re
import socket
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from lesionbench.cell import Cell, Harness, cell_hash, cell_params, cell_tags, run_cell
from lesionbench.config import ConfigError, config_dict, stable_hash
from lesionbench.filenames import safe_name
from lesionbench.planning import parse_objective, uses_val_voxel_labels
from lesionbench.method import Method
from lesionbench.planning import RunRequest, Variant, check_workdir, explicit_data_keys, plan, resolve_device, variant_label
from lesionbench.plugins import Plugins
from lesionbench.preparation import prepare_dataset
from lesionbench.splits import split_hash
from lesionbench.storage import (
    check_study_spec,
    create_once,
    default_storage_url,
    display_url,
    fail_stale,
    open_storage,
    quiet_optuna,
    retried_from,
    retried_numbers,
)
from lesionbench.volume import DataError

PRUNERS = ("median", "none")
STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def default_study_name(label: str, dataset: str, profile: str, objective: str) -> str:
    """LABEL-DATASET-PROFILE-OBJECTIVE (objective without ``val/``); a variant's label,
    ``wolleb-wargnier[variant=masked]``, gives ``wolleb-wargnier.variant_masked-...``."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", label.replace("[", ".")).strip("_")
    return f"{name}-{dataset}-{profile}-{objective.removeprefix('val/')}"


def suggest(cls: type[Method], trial, fixed: dict[str, Any]) -> dict[str, Any]:
    """``cls.search_space(trial)``; told the study's fixed values when the method's hook takes ``fixed``
    (``Method.search_space``)."""
    if "fixed" in inspect.signature(cls.search_space).parameters:
        return cls.search_space(trial, fixed=dict(fixed))
    return cls.search_space(trial)


def search_keys(cls: type[Method], profile: str, fixed: dict[str, Any] | None = None) -> set[str]:
    """The config keys a method's search space sets, given the study's ``fixed`` values (from trials of a
    throwaway in-memory study: a conditional space sets different keys on different trials)."""
    import optuna

    quiet_optuna()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    keys: set[str] = set()
    for _ in range(8):
        overrides = suggest(cls, study.ask(), fixed or {})
        try:
            cls.make_config(profile, {**(fixed or {}), **overrides})
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"method {cls.name!r}: its search_space gives an invalid config: {str(exc).strip(chr(39))}") from None
        keys |= set(overrides)
    return keys


@dataclass
class TuneRequest:
    method: str
    dataset: str = "synth-ms"
    trials: int = 20
    workdir: Path = Path("lesionbench-runs")
    timeout: float | None = None  # seconds after which this worker starts no new trial
    profile: str | None = None  # default: from --config, else quick
    storage: str | None = None  # default: sqlite in <workdir>/tune
    study: str | None = None  # default: <label>-<dataset>-<profile>-<objective>
    label: str | None = None  # the tuned row's label in best.toml (default: <label>-tuned)
    objective: str = "val/auprc"
    seed: int = 0  # the run seed of every trial (initialisation and sampling)
    config_file: str | None = None
    set_options: list[str] = field(default_factory=list)
    device: str = "auto"
    split_seed: int = 0
    split_files: dict[str, str] = field(default_factory=dict)
    roots: dict[str, str] = field(default_factory=dict)
    tracking_uri: str | None = None
    experiment: str = "lesionbench"
    skip_bad: bool = False
    pruner: str = "median"
    pruner_startup_trials: int = 5  # trials completed before the median pruner stops any
    heartbeat: int = 60  # seconds between a running trial's heartbeats (RDB storages); grace: twice that

    def run_request(self, objective: str) -> RunRequest:
        return RunRequest(
            methods=[self.method], datasets=[self.dataset], seeds=[self.seed], profile=self.profile,
            workdir=self.workdir, config_file=self.config_file, set_options=list(self.set_options), device=self.device,
            split_seed=self.split_seed, split_files=dict(self.split_files), roots=dict(self.roots),
            tracking_uri=self.tracking_uri, experiment=self.experiment, objective=objective, skip_bad=self.skip_bad,
        )


@dataclass
class TuneSummary:
    study: str
    storage: str
    objective: str  # the metric key, e.g. "auprc"
    requested: int
    counts: dict[str, int]  # trial state -> number (retried crashes counted under "retried")
    ran_here: int
    complete: bool  # no trial running or queued, and the requested number done
    best_number: int | None = None
    best_value: float | None = None
    best_params: dict[str, Any] = field(default_factory=dict)
    best_config: dict[str, Any] = field(default_factory=dict)
    best_run_id: str | None = None
    best_file: Path | None = None
    study_run_id: str | None = None
    default_value: float | None = None  # the objective of a finished `run` of the untuned configuration
    default_run_id: str | None = None
    profile: str = "quick"
    label: str = ""
    dataset: str = ""
    uses_val_voxel_labels: bool = True


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def _finished_counts(trials) -> tuple[int, Counter]:
    """Trials that count towards --trials (finished, running, or failed and not queued again) and the states."""
    from optuna.trial import TrialState

    retried = retried_numbers(trials)
    states = Counter(t.state.name for t in trials)
    states["retried"] = sum(1 for t in trials if t.state == TrialState.FAIL and t.number in retried)
    states["FAIL"] -= states["retried"]
    counted = states["COMPLETE"] + states["PRUNED"] + states["RUNNING"] + states["FAIL"]
    return counted, states


class TrialRunCallback:
    """Our Optuna callback: closes each trial's nested MLflow run with the trial's outcome, keeps the study
    run's best value current, and prints one line per trial."""

    STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}

    def __init__(self, tracker, study_run_id: str, objective: str, print_line: Callable[[str], None]):
        self.tracker, self.study_run_id, self.objective, self.print_line = tracker, study_run_id, objective, print_line

    def __call__(self, study, trial) -> None:
        client = self.tracker.client
        run_id = trial.user_attrs.get("mlflow_run_id")
        state = trial.state.name
        if run_id is not None:
            client.set_tag(run_id, "optuna_state", state)
            if trial.intermediate_values:
                client.set_tag(run_id, "optuna_last_step", max(trial.intermediate_values))
            client.set_terminated(run_id, self.STATUS.get(state, "FAILED"))
        params = ", ".join(f"{k}={_short(v)}" for k, v in trial.params.items())
        if state == "COMPLETE":
            best = study.best_trial
            client.log_metric(self.study_run_id, f"best/val_{self.objective}", best.value,
                              timestamp=int(time.time() * 1000), step=trial.number)
            client.set_tag(self.study_run_id, "best_trial", best.number)
            self.print_line(f"trial {trial.number}: val/{self.objective} {trial.value:.4f} ({params}); "
                            f"best so far: trial {best.number}, {best.value:.4f}")
        elif state == "PRUNED":
            step = max(trial.intermediate_values) if trial.intermediate_values else None
            self.print_line(f"[yellow]trial {trial.number}: pruned at step {step} ({params})[/yellow]")
        else:
            why = trial.user_attrs.get("error", "the objective returned no number (NaN?)")
            self.print_line(f"[red]trial {trial.number} failed: {why}[/red]")


def _short(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


class Tuner:
    """One worker of a study: resolves and checks everything first, then runs trials until the study has
    its number."""

    def __init__(self, request: TuneRequest, plugins: Plugins, console=None):
        from rich.console import Console

        from lesionbench.tracking import git_commit

        self.request = request
        self.console = console or Console(stderr=True)
        self.objective = parse_objective(request.objective)
        if request.trials < 1:
            raise ConfigError(f"--trials {request.trials}: give at least 1")
        if request.pruner not in PRUNERS:
            raise ConfigError(f"--pruner {request.pruner!r}: choose one of {', '.join(PRUNERS)}")
        if request.timeout is not None and request.timeout <= 0:
            raise ConfigError(f"--timeout {request.timeout}: give a positive number of seconds")
        self.run_request = request.run_request(self.objective)
        self.profile, data, variants, [dcls] = plan(self.run_request, plugins)
        if len(variants) != 1:
            raise ConfigError(f"tune searches around one configuration: give each --set {request.method}.KEY one value (no sweeps)")
        self.variant: Variant = variants[0]
        self.cls = self.variant.method
        tuned = search_keys(self.cls, self.profile, self.variant.overrides)
        if not tuned:
            raise ConfigError(f"method {self.cls.name!r} declares no search_space: there is nothing to tune")
        fixed = sorted(set(self.variant.overrides) & tuned)
        if fixed:
            raise ConfigError(f"{', '.join(f'{self.cls.name}.{k}' for k in fixed)}: set in --set/--config but tuned by "
                              f"{self.cls.name}'s search space; leave it out")
        self.study_name = request.study or default_study_name(self.variant.label, dcls.name, self.profile, self.objective)
        if not STUDY_NAME.fullmatch(self.study_name):
            raise ConfigError(f"--study {self.study_name!r}: use letters, digits, '.', '_' and '-' (it names a folder)")
        if request.label is not None:
            safe_name(request.label, "--label")  # it names the row's --save-maps folder too
        self.url = request.storage or default_storage_url(request.workdir)
        from lesionbench.storage import check_url

        check_url(self.url)
        self.workdir = check_workdir(request.workdir)
        self.device = resolve_device(request.device)
        self.dataset, self.split, self.split_path = prepare_dataset(
            request.dataset, dcls, data, self.run_request, self.workdir, explicit_data_keys(self.run_request), self.console)
        if not self.dataset.val_cases():
            raise DataError(f"dataset {self.dataset.name}: no validation case; tuning needs a validation split (data.val_fraction)")
        self.commit = git_commit()
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self.voxel = uses_val_voxel_labels(self.objective)
        self.spec = {
            "method": self.cls.name, "label": self.variant.label, "dataset": self.dataset.name, "profile": self.profile,
            "objective": f"val/{self.objective}", "seed": request.seed,
            "config_hash": stable_hash([self.cls.name, config_dict(self.variant.config)]),
            "preprocessing_hash": stable_hash(self.dataset.preprocessing), "split_hash": split_hash(self.split),
        }
        self.tracker = None
        self.storage = open_storage(self.url, request.heartbeat, on_stale=self._close_stale_run)

    # -- set-up ---------------------------------------------------------------------------------
    def _tracker(self):
        from lesionbench.tracking import Tracker, default_tracking_uri

        if self.tracker is None:
            uri = self.request.tracking_uri or default_tracking_uri(self.workdir)
            self.tracker = Tracker(uri, self.request.experiment, self.workdir / "artifacts")
        return self.tracker

    def _harness(self) -> Harness:
        return Harness(self._tracker(), self.device, self.profile, self.run_request, self.commit)

    def _tags(self, run_kind: str) -> dict[str, Any]:
        tags = cell_tags(self.variant, self.dataset, self.request.seed, self.profile, self.run_request, self.commit,
                         self.device, run_kind)
        tags.update(uses_val_voxel_labels=str(self.voxel).lower(), objective=f"val/{self.objective}",
                    optuna_study=self.study_name, optuna_storage=display_url(self.url))
        return tags

    def _start_study_run(self, study) -> str:
        study.set_user_attr("spec", self.spec)
        params = cell_params(self.cls, self.variant.config, self.dataset, self.split, self.objective)
        params.update(trials=self.request.trials, pruner=self.request.pruner)
        run = self._tracker().start(f"study/{self.study_name}", self._tags("study"), params)
        return run.run_id

    def _close_stale_run(self, study, trial) -> None:
        """A crashed worker's trial: its MLflow run is closed as FAILED before the trial is queued again."""
        run_id = trial.user_attrs.get("mlflow_run_id")
        if run_id is None:
            return
        client = self._tracker().client
        client.set_tag(run_id, "optuna_state", "FAIL")
        client.set_tag(run_id, "error", f"the worker {trial.user_attrs.get('worker', '?')} stopped sending heartbeats; "
                                        "the trial is queued again with the same parameters")
        client.set_terminated(run_id, "FAILED")
        self.console.print(f"[yellow]trial {trial.number}: its worker stopped (no heartbeat); queued again[/yellow]")

    def open_study(self):
        import optuna

        startup = min(10, max(3, self.request.trials // 3))  # random trials before TPE models the results
        sampler = optuna.samplers.TPESampler(n_startup_trials=startup)
        pruner = (optuna.pruners.MedianPruner(n_startup_trials=self.request.pruner_startup_trials)
                  if self.request.pruner == "median" else optuna.pruners.NopPruner())
        study, created = create_once(self.storage, self.study_name, self._start_study_run, "mlflow_run_id",
                                     sampler=sampler, pruner=pruner)
        check_study_spec(study, self.spec)
        self.study_run_id = study.user_attrs["mlflow_run_id"]
        tracker = self._tracker()
        try:
            tracker.client.get_run(self.study_run_id)
        except Exception:  # another machine's MLflow store holds the study run
            self.console.print("[yellow]the study's MLflow run is in another tracking store: this worker's trials are "
                               "tracked under a study run of its own (give every worker the same --tracking-uri)[/yellow]")
            self.study_run_id = self._start_study_run(study)
        return study, created

    # -- one trial ------------------------------------------------------------------------------
    def objective_fn(self, trial, on_step=None) -> float:
        """One trial: the cell pipeline on the trial's config, validation only; the objective's value."""
        import optuna

        cls, request = self.cls, self.request
        params = suggest(cls, trial, self.variant.overrides)
        overrides = {**self.variant.overrides, **params}
        config = cls.make_config(self.profile, overrides)
        trial.set_user_attr("config", {k: _plain(v) for k, v in params.items()})
        trial.set_user_attr("worker", self.worker)
        tags = self._tags("trial")
        tags["optuna_trial_number"] = trial.number
        if retried_from(trial) is not None:
            tags["optuna_retry_of"] = retried_from(trial)
        cell = Cell(Variant(cls, self.variant.label, overrides, config), self.dataset, self.split, self.split_path,
                    request.seed, objective=self.objective)

        def report(step: int, value: float) -> None:  # log.evaluate's values feed the pruner
            if math.isnan(value):
                return
            trial.report(value, step)
            if trial.should_prune():
                raise optuna.TrialPruned(f"step {step}: val/{self.objective} {value:.4f}")

        started = []

        def on_start(run) -> None:
            started.append(run)
            trial.set_user_attr("mlflow_run_id", run.run_id)

        try:
            result = run_cell(cell, self._harness(), run_kind="trial", evaluate_test=False,
                              run_name=f"{self.variant.label}/{self.dataset.name}/trial{trial.number}", extra_tags=tags,
                              parent_run_id=self.study_run_id, on_evaluate=report, on_step=on_step, on_start=on_start,
                              raise_errors=True)
        except optuna.TrialPruned:
            raise
        except BaseException as exc:
            message = f"{type(exc).__name__}: {exc}"
            trial.set_user_attr("error", message[:1000])
            for run in started:
                run.tag("error", message[:5000])
                if not isinstance(exc, Exception):  # interrupted: Optuna calls no callback
                    run.tag("optuna_state", "FAIL")
                    run.finish("KILLED")
            raise
        value = float(result.metrics[f"val/{self.objective}"])
        if math.isnan(value):
            trial.set_user_attr("error", f"val/{self.objective} is undefined on this validation split "
                                         f"({'; '.join(result.warnings) or 'NaN'})"[:1000])
        return value

    # -- the worker loop ------------------------------------------------------------------------
    def optimize(self, study, spawn: Callable[[], list] | None = None) -> TuneSummary:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        children = spawn() if spawn is not None else []
        deadline = time.monotonic() + self.request.timeout if self.request.timeout else None
        ran = 0
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      TextColumn("{task.fields[status]}"), console=self.console, transient=False) as progress:
            bar = progress.add_task(f"study {self.study_name}", total=self.request.trials, status="")
            callback = TrialRunCallback(self._tracker(), self.study_run_id, self.objective, progress.console.print)

            def objective(trial):
                progress.update(bar, description=f"trial {trial.number}", status="")
                return self.objective_fn(trial, on_step=lambda s: progress.update(bar, status=s))

            while True:
                fail_stale(study)  # a crashed worker's trial is queued again (RDB storages)
                trials = study.get_trials(deepcopy=False)
                counted, states = _finished_counts(trials)
                progress.update(bar, completed=min(counted - states["RUNNING"], self.request.trials))
                if not states["WAITING"] and counted >= self.request.trials:
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    progress.console.print(f"--timeout {self.request.timeout:g} s reached: this worker starts no new trial")
                    break
                study.optimize(objective, n_trials=1, catch=(Exception,), callbacks=[callback], gc_after_trial=True)
                ran += 1
            progress.update(bar, description=f"study {self.study_name}", status="")
        failed_children = []
        for i, child in enumerate(children, 1):
            if child.wait() != 0:
                failed_children.append(i)
        if failed_children:
            self.console.print(f"[red]worker(s) {failed_children} exited with an error; see their logs under "
                               f"{self.study_dir}[/red]")
        return self.summarise(study, ran)

    @property
    def study_dir(self) -> Path:
        return self.workdir / "tune" / self.study_name

    # -- the end --------------------------------------------------------------------------------
    def summarise(self, study, ran: int) -> TuneSummary:
        from optuna.trial import TrialState

        trials = study.get_trials(deepcopy=False)
        counted, states = _finished_counts(trials)
        summary = TuneSummary(
            self.study_name, display_url(self.url), self.objective, self.request.trials,
            {k: v for k, v in states.items() if v}, ran,
            complete=counted >= self.request.trials and not states["RUNNING"] and not states["WAITING"],
            study_run_id=self.study_run_id, profile=self.profile, label=self.variant.label, dataset=self.dataset.name,
            uses_val_voxel_labels=self.voxel,
        )
        client = self._tracker().client
        done = [t for t in trials if t.state == TrialState.COMPLETE]
        if done:
            best = study.best_trial
            summary.best_number, summary.best_value, summary.best_params = best.number, best.value, dict(best.params)
            summary.best_config = self._config_of(best)
            summary.best_run_id = best.user_attrs.get("mlflow_run_id")
            summary.best_file = self.write_best(summary)
            # step = the study's trial count, which only grows: MLflow's latest value (highest step, then newest) is
            # then the summary of the worker that saw the most trials, not a callback's view from before a later best
            client.log_metric(self.study_run_id, f"best/val_{self.objective}", best.value,
                              timestamp=int(time.time() * 1000), step=len(trials))
            client.set_tag(self.study_run_id, "best_trial", best.number)
            if summary.best_run_id:
                client.set_tag(self.study_run_id, "best_run_id", summary.best_run_id)
        for state, n in states.items():
            client.log_metric(self.study_run_id, f"trials/{state.lower()}", n, timestamp=int(time.time() * 1000))
        if summary.complete:
            client.set_terminated(self.study_run_id, "FINISHED")
        default = self._tracker().finished_run(
            cell_hash(self.variant, self.dataset, self.split, self.request.seed, "resampled"))
        if default is not None:
            summary.default_run_id = default.info.run_id
            summary.default_value = default.data.metrics.get(f"val/{self.objective}")
        return summary

    def _config_of(self, trial) -> dict[str, Any]:
        """The config overrides a trial used (its user attribute; else its search space replayed)."""
        import optuna

        if "config" in trial.user_attrs:
            return dict(trial.user_attrs["config"])
        return {k: _plain(v) for k, v in suggest(self.cls, optuna.trial.FixedTrial(trial.params), self.variant.overrides).items()}

    def write_best(self, summary: TuneSummary) -> Path:
        """``best.toml``: ``method``, ``profile``, the ``[<method>]`` table (fixed and tuned keys, label
        ``<label>-tuned``) and the ``[data]`` keys the study set; ``lesionbench run --config`` takes it as it is."""
        import tomli_w

        data_keys = explicit_data_keys(self.run_request)
        data = {k: _plain(v) for k, v in config_dict(self.dataset.data).items() if k in data_keys}
        label = self.variant.label
        chosen = {k: summary.best_config[k] for k in self.cls.label_keys if k in summary.best_config}
        if chosen:  # a tuned variant names the row by the variant the study chose
            label = variant_label(self.cls.name, chosen)
        table = {"label": self.request.label or f"{label}-tuned",
                 **{k: _plain(v) for k, v in self.variant.overrides.items()}, **summary.best_config}
        # tuned_on: the objective that chose it; a run from this file is marked as using validation voxel labels
        # when that objective needs them (planning.Variant.tuned_on)
        body: dict[str, Any] = {"method": self.cls.name, "profile": self.profile, "tuned_on": f"val/{self.objective}",
                                self.cls.name: table}
        if data:
            body["data"] = data
        header = [
            f"# lesionbench tune: study {self.study_name!r} ({summary.storage})",
            f"# best trial {summary.best_number}: val/{self.objective} = {summary.best_value:.6g} on {self.dataset.name}, "
            f"seed {self.request.seed}, split seed {self.request.split_seed}; MLflow run {summary.best_run_id}",
            f"# use: lesionbench run --config best.toml --datasets {self.request.dataset} --seeds 0 1 2",
        ]
        self.study_dir.mkdir(parents=True, exist_ok=True)
        path = self.study_dir / "best.toml"
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text("\n".join(header) + "\n" + tomli_w.dumps(body))
        os.replace(tmp, path)
        return path


def worker_devices(device: str, workers: int) -> list[str]:
    """One device per worker: with several GPUs and --device cuda (or auto), worker K takes cuda:K mod count."""
    import torch

    if device in ("cuda", "auto") and torch.cuda.is_available() and torch.cuda.device_count() > 1:
        n = torch.cuda.device_count()
        return [f"cuda:{k % n}" for k in range(workers)]
    return [device] * workers


def cpu_threads_per_worker(devices: list[str]) -> int | None:
    """Local workers that all compute on the CPU share its cores (K workers of ``cores // K`` threads each,
    instead of K x cores threads fighting over them); None when a worker has a GPU or there is one worker."""
    import torch

    on_cpu = all(d == "cpu" or (d == "auto" and not torch.cuda.is_available()) for d in devices)
    if len(devices) < 2 or not on_cpu:
        return None
    return max(1, (os.cpu_count() or 1) // len(devices))


def spawn_workers(argv: list[str], devices: list[str], log_dir: Path, threads: int | None = None) -> list[subprocess.Popen]:
    """Start the extra local workers of ``--workers N`` (the same command, one worker each; logs in files);
    ``threads``: the CPU threads of each (OMP_NUM_THREADS), None to leave torch's default."""
    import sys

    log_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads)) if threads else None
    children = []
    for k, device in enumerate(devices, 1):
        log = open(log_dir / f"worker-{k}.log", "w")
        cmd = [sys.executable, "-m", "lesionbench", "tune", *argv, "--workers", "1", "--seeds-final", "0", "--device", device]
        children.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env))
        log.close()
    return children


def summary_table(summary: TuneSummary):
    """The study's outcome as a rich table."""
    from rich.table import Table

    t = Table(title=f"study {summary.study}", show_header=False)
    t.add_column("", style="bold")
    t.add_column("")
    t.add_row("method / dataset / profile", f"{summary.label} / {summary.dataset} / {summary.profile}")
    t.add_row("storage", summary.storage)
    note = " (uses validation voxel labels)" if summary.uses_val_voxel_labels else " (image labels only)"
    t.add_row("objective", f"val/{summary.objective}, maximised{note}")
    states = ", ".join(f"{n} {k.lower()}" for k, n in sorted(summary.counts.items()))
    t.add_row("trials", f"{states} (requested {summary.requested}; this worker ran {summary.ran_here})")
    if not summary.complete:
        busy = summary.counts.get("RUNNING", 0) + summary.counts.get("WAITING", 0)
        why = (f"{busy} trial(s) running or queued on other workers" if busy
               else "fewer trials than requested (--timeout?): the same command continues the study")
        t.add_row("status", f"[yellow]not complete: {why}[/yellow]")
    if summary.best_number is not None:
        t.add_row("best trial", f"{summary.best_number}: val/{summary.objective} = {summary.best_value:.4f}"
                                + (f" (MLflow run {summary.best_run_id})" if summary.best_run_id else ""))
        for k, v in summary.best_config.items():
            t.add_row(f"  {k}", _short(v))
    else:
        t.add_row("best trial", "none completed")
    if summary.default_value is not None:
        t.add_row("default config", f"val/{summary.objective} = {summary.default_value:.4f} (MLflow run {summary.default_run_id})")
    else:
        t.add_row("default config", "no finished `run` of the untuned configuration (same data, split and seed) to compare")
    if summary.best_file is not None:
        t.add_row("best.toml", str(summary.best_file))
    return t
