"""The ``lesionbench`` command line (design §7): list, run, tune, leaderboard, check-data."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def _pairs(values: list[str], flag: str, default_key: str | None = None) -> dict[str, str]:
    """``NAME=PATH`` split at the first ``=`` (a PATH may hold ``=``; dataset names never do: they are refused
    where they are defined). A value whose part before ``=`` is empty or holds a path separator is a bare PATH."""
    out = {}
    for v in values or []:
        k, _, p = v.partition("=")
        if p and k and "/" not in k and os.sep not in k:
            out[k] = p
        elif default_key is not None:
            out[default_key] = v
        else:
            raise SystemExit(f"error: {flag} {v!r}: expected NAME=PATH")
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lesionbench", description="Weakly supervised anomaly detection in brain MRI, benchmarked.")
    p.add_argument("--strict-plugins", action="store_true", help="fail on a broken plugin instead of skipping it")
    sub = p.add_subparsers(dest="command", required=True)

    sub.add_parser("list", help="methods and datasets, one line each")

    r = sub.add_parser("run", help="run a grid of methods x datasets x seeds, then print the leaderboard")
    r.add_argument("--methods", nargs="+", help="method names (default: from --config, else all registered)")
    r.add_argument("--datasets", nargs="+", default=["synth-tumor", "synth-ms"],
                   help="dataset names (lesionbench list) or layout TOML files (the nifti adapter)")
    r.add_argument("--seeds", nargs="+", type=int, default=[0])
    r.add_argument("--profile", choices=("smoke", "demo", "quick", "paper"), help="default: from --config, else quick")
    r.add_argument("--workdir", type=Path, default=Path("lesionbench-runs"))
    r.add_argument("--config", help="TOML file: a [<method>] table per method, [data], optional method/profile keys")
    r.add_argument("--set", dest="set_options", action="append", default=[], metavar="NS.KEY=VALUE",
                   help="override (data.modalities=flair,t2 / vae.lr=1e-4); key=a,b sweeps")
    r.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:K")
    r.add_argument("--force", action="store_true", help="re-run cells that already have a finished run")
    r.add_argument("--split-seed", type=int, default=0, help="seed of the subject-level split (independent of --seeds)")
    r.add_argument("--split", action="append", default=[], metavar="[DATASET=]FILE", help="a split file: case id -> train/val/test")
    r.add_argument("--folds", type=int, default=0, metavar="K",
                   help="K-fold cross-validation over subjects (stratified; every case tested once, each fold its own "
                        "cell; the leaderboard pools the folds' test volumes)")
    r.add_argument("--root", action="append", default=[], metavar="DATASET=PATH", help="data folder of a file-based dataset")
    r.add_argument("--tracking-uri", help="MLflow tracking URI (default sqlite:///WORKDIR/mlflow.db)")
    r.add_argument("--experiment", default="lesionbench")
    r.add_argument("--objective", default="auprc", help="validation key that log.evaluate returns (slice_auroc: fully weakly supervised)")
    r.add_argument("--metrics", nargs="+", default=None, help="leaderboard columns")
    r.add_argument("--eval-native", action="store_true",
                   help="evaluate in the source voxel grid through the inverse of crop and scale (eval_space=native)")
    r.add_argument("--save-maps", type=Path, metavar="DIR",
                   help="write the test maps as NIfTI in the source space (shape and affine of the source files)")
    r.add_argument("--skip-bad", action="store_true", help="leave bad cases out (and report them) instead of refusing the dataset")
    r.add_argument("--storage", help="Optuna storage URL (sqlite:///FILE, postgresql://...): workers started with the same "
                                     "command share the grid's cells, each cell run once")
    r.add_argument("--study", help="name of the shared cell queue (default: from the grid's cells)")
    r.add_argument("--heartbeat", type=int, default=60, metavar="S",
                   help="with --storage: seconds between a cell's heartbeats; a cell silent for 2S is queued again")

    t = sub.add_parser("tune", help="Optuna search over a method's search space on the validation split; best config to TOML")
    t.add_argument("--method", required=True, help="a method name (lesionbench list)")
    t.add_argument("--dataset", required=True, help="a dataset name or a layout TOML file")
    t.add_argument("--trials", type=int, required=True, help="trials of the study in all, shared by all its workers")
    t.add_argument("--timeout", type=float, help="seconds after which this worker starts no new trial")
    t.add_argument("--profile", choices=("smoke", "demo", "quick", "paper"), help="default: from --config, else quick")
    t.add_argument("--workdir", type=Path, required=True)
    t.add_argument("--storage", help="Optuna storage URL: sqlite:///FILE (default WORKDIR/tune/optuna.db), "
                                     "postgresql://USER@HOST:PORT/DB (many machines), journal:FILE")
    t.add_argument("--study", help="study name (default LABEL-DATASET-PROFILE-OBJECTIVE); the same name shares the study")
    t.add_argument("--label", help="the tuned row's label in best.toml and the final runs (default LABEL-tuned); e.g. "
                                   "to tell two studies of one method apart (objectives)")
    t.add_argument("--objective", default="val/auprc",
                   help="validation metric to maximise: val/auprc (default), val/auroc, val/dice_best, "
                        "val/slice_auroc or val/slice_ap (these two: image labels only, fully weakly supervised)")
    t.add_argument("--seeds-final", type=int, default=0, metavar="K",
                   help="when the study is complete: run the best config on seeds 0..K-1 and evaluate on test")
    t.add_argument("--workers", type=int, default=1, help="worker processes on this machine (one per GPU with --device cuda)")
    t.add_argument("--pruner", choices=("median", "none"), default="median", help="stops trials whose log.evaluate values trail the median")
    t.add_argument("--heartbeat", type=int, default=60, metavar="S",
                   help="seconds between a trial's heartbeats (RDB storages); a trial silent for 2S is retried")
    t.add_argument("--seed", type=int, default=0, help="run seed of every trial")
    t.add_argument("--config", help="TOML file: fixed [<method>] keys and [data] (as for run)")
    t.add_argument("--set", dest="set_options", action="append", default=[], metavar="NS.KEY=VALUE",
                   help="fixed settings (data.size=64 / vae.max_steps=500); tuned keys come from the search space")
    t.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:K")
    t.add_argument("--split-seed", type=int, default=0)
    t.add_argument("--split", action="append", default=[], metavar="[DATASET=]FILE")
    t.add_argument("--root", action="append", default=[], metavar="DATASET=PATH")
    t.add_argument("--tracking-uri", help="MLflow tracking URI (default sqlite:///WORKDIR/mlflow.db; a server for many machines)")
    t.add_argument("--experiment", default="lesionbench")
    t.add_argument("--skip-bad", action="store_true")

    lb = sub.add_parser("leaderboard", help="the leaderboard from tracked runs")
    lb.add_argument("--workdir", type=Path, action="append", default=None,
                    help="the workdir whose runs to show (default lesionbench-runs); repeatable: one table of the "
                         "runs of several workdirs (the same split per dataset)")
    lb.add_argument("--tracking-uri", action="append", default=None,
                    help="MLflow tracking URI to read instead of WORKDIR/mlflow.db; repeatable, as --workdir")
    lb.add_argument("--experiment", default="lesionbench")
    lb.add_argument("--format", choices=("table", "md", "latex", "csv", "html"), default="table",
                    help="table (terminal), md, latex (booktabs), csv (long: one value per run, volume and metric), "
                         "html (a self-contained page with the qualitative grids; needs --out)")
    lb.add_argument("--out", type=Path, help="write to this file instead of printing")
    lb.add_argument("--metrics", nargs="+", default=None)
    lb.add_argument("--datasets", nargs="+", default=None)
    lb.add_argument("--rows", nargs="+", default=None, metavar="LABEL",
                    help="only the rows of these labels (exact; contrasts may still name any row)")
    lb.add_argument("--eval-space", choices=("resampled", "native"), help="only runs evaluated in this space")
    lb.add_argument("--bootstrap", type=int, default=1000, metavar="N",
                    help="bootstrap resamples of the test volumes for the 95%% intervals (0: none)")
    lb.add_argument("--bootstrap-seed", type=int, default=0, help="seed of the bootstrap resamples")
    lb.add_argument("--contrast", nargs=2, action="append", default=[], metavar=("ROW", "REFERENCE"),
                    help="a planned contrast, printed after the table: ROW - REFERENCE per test volume (Hodges-Lehmann "
                         "effect, bootstrap interval, Wilcoxon signed-rank, Holm over the contrasts given); repeatable")
    lb.add_argument("--contrast-metric", default="auprc_vol_mean",
                    help="the per-volume metric of the contrasts (default: AP per volume)")
    lb.add_argument("--wide", action="store_true",
                    help="--format table: one full-width table with the intervals (the default fits 120 columns: a "
                         "table per dataset, no intervals)")

    cd = sub.add_parser("check-data", help="load every case of a dataset and check it")
    cd.add_argument("--dataset", required=True, help="a dataset name or a layout TOML file")
    cd.add_argument("--root")
    cd.add_argument("--set", dest="set_options", action="append", default=[], metavar="data.KEY=VALUE")
    return p


def _plugins(args):
    from lesionbench.plugins import load_plugins

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plugins = load_plugins(strict=args.strict_plugins or None)
    for name, error in plugins.failures:
        print(f"warning: plugin {name!r} failed and was skipped: {error}", file=sys.stderr)
    return plugins


def cmd_list(args) -> int:
    from rich.console import Console
    from rich.table import Table

    plugins = _plugins(args)
    console = Console()
    t = Table(title="methods")
    for col in ("name", "supervision", "plugin", "description"):
        t.add_column(col)
    for name in plugins.methods.names():
        cls = plugins.methods.get(name)
        t.add_row(name, cls.supervision.value, plugins.methods.origin(name), cls.description)
    console.print(t)
    t = Table(title="datasets")
    for col in ("name", "needs --root", "plugin", "description"):
        t.add_column(col)
    for name in plugins.datasets.names():
        cls = plugins.datasets.get(name)
        t.add_row(name, "yes" if cls.needs_root else "no", plugins.datasets.origin(name), cls.description)
    console.print(t)
    return 0


#: The terminal table is made for this width when the output is not a terminal (a log, a pipe).
TABLE_WIDTH = 120


def selected_runs(uri: str | list[str], experiment: str, eval_space: str | None = None, rows=None):
    """The runs of a table: evaluated in one space (tables never mix them), of the labels ``rows`` when given
    (an unknown label is an error naming it and the labels there are)."""
    from lesionbench.leaderboard import LeaderboardError
    from lesionbench.leaderboard.tables import load_runs

    runs = load_runs(uri, experiment)
    if eval_space is not None:
        runs = runs[runs["tags.eval_space"] == eval_space]
        if runs.empty:
            raise LeaderboardError(f"no finished runs evaluated in the {eval_space} space")
    if rows:
        known = set(runs["tags.label"])
        unknown = [r for r in rows if r not in known]
        if unknown:
            raise LeaderboardError(f"--rows: no finished runs labelled {', '.join(map(repr, unknown))}; "
                                   f"labels: {', '.join(sorted(known))}")
        runs = runs[runs["tags.label"].isin(rows)]
    return runs


def print_leaderboard(uri: str | list[str], experiment: str, fmt: str, metrics, datasets, out: Path | None,
                      eval_space: str | None = None, n_resamples: int = 1000, bootstrap_seed: int = 0,
                      wide: bool = False, rows=None) -> None:
    from rich.console import Console

    from lesionbench.leaderboard import LeaderboardError
    from lesionbench.leaderboard.formats import render
    from lesionbench.leaderboard.tables import DEFAULT_METRICS, rich_table

    metrics = metrics or DEFAULT_METRICS
    runs = selected_runs(uri, experiment, eval_space, rows)
    if n_resamples < 0:
        raise LeaderboardError(f"--bootstrap {n_resamples}: give 0 (no intervals) or more resamples")
    if fmt == "html" and out is None:
        raise LeaderboardError("--format html writes a page: give --out FILE.html")
    if fmt == "table" and out is None:
        console = Console()
        if wide:  # as wide as the table needs; the terminal wraps what it cannot show
            console = Console(width=1000)
        elif not console.is_terminal:
            console = Console(width=TABLE_WIDTH)
        console.print(rich_table(runs, metrics, datasets, n_resamples, bootstrap_seed, wide=wide))
        return
    text = render(runs, "md" if fmt == "table" else fmt, metrics, datasets, n_resamples, bootstrap_seed)
    if out is not None:
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(text, encoding="utf-8")
        except OSError as exc:  # a folder, a read-only place: the runs are untouched, only the file is refused
            raise LeaderboardError(f"--out {out}: cannot write the leaderboard there ({exc.strerror or exc}); "
                                   "give a file path in a writable folder") from None
        print(f"leaderboard written to {out}", file=sys.stderr)
    else:
        print(text)


def cmd_run(args) -> int:
    from lesionbench.planning import RunRequest, parse_objective

    plugins = _plugins(args)
    request = RunRequest(
        methods=args.methods, datasets=args.datasets, seeds=args.seeds, profile=args.profile, workdir=args.workdir,
        config_file=args.config, set_options=args.set_options, device=args.device, force=args.force,
        split_seed=args.split_seed, split_files=_pairs(args.split, "--split", default_key="*"),
        roots=_pairs(args.root, "--root"), tracking_uri=args.tracking_uri, experiment=args.experiment,
        objective=parse_objective(args.objective), eval_native=args.eval_native, save_maps=args.save_maps,
        skip_bad=args.skip_bad, storage=args.storage, study=args.study, heartbeat=args.heartbeat, folds=args.folds,
    )
    return run_and_report(request, plugins, args.metrics)


def run_and_report(request, plugins, metrics=None) -> int:
    """Run a grid, print the leaderboard and where the results went; 1 when a cell failed."""
    from rich.console import Console

    from lesionbench.runner import run_grid
    from lesionbench.tracking import default_tracking_uri

    console = Console(stderr=True)
    results = run_grid(request, plugins, console)
    uri = request.tracking_uri or default_tracking_uri(request.workdir)
    failed = [r for r in results if r.status == "failed"]
    done = sum(r.status == "finished" for r in results)
    skipped = sum(r.status == "skipped" for r in results)
    console.print(f"{done} cells run, {skipped} skipped (already finished; --force re-runs), {len(failed)} failed")
    if done + skipped:
        from lesionbench.leaderboard import LeaderboardError

        names = sorted({r.dataset for r in results if r.status != "failed"})
        try:
            print_leaderboard(uri, request.experiment, "table", metrics, names, None, "native" if request.eval_native else "resampled")
        except LeaderboardError as exc:  # the cells ran and are recorded; only the table is refused
            console.print(f"[yellow]no leaderboard table: {exc}[/yellow]")
    console.print(f"results: MLflow {uri} (experiment {request.experiment!r}); splits and cache under {request.workdir}")
    if request.save_maps and done:
        console.print(f"maps: NIfTI in the source space under {request.save_maps}")
    for r in failed:
        console.print(f"[red]failed: {r.label} / {r.dataset} / seed {r.seed}: {r.error}[/red]")
    return 1 if failed else 0


def _tune_argv(args) -> list[str]:
    """The tune command line of the extra workers of --workers (device and final runs set per worker)."""
    argv = ["--method", args.method, "--dataset", args.dataset, "--trials", str(args.trials), "--workdir", str(args.workdir),
            "--objective", args.objective, "--pruner", args.pruner, "--heartbeat", str(args.heartbeat), "--seed", str(args.seed),
            "--split-seed", str(args.split_seed), "--experiment", args.experiment]
    for flag, value in (("--timeout", args.timeout), ("--profile", args.profile), ("--storage", args.storage),
                        ("--study", args.study), ("--label", args.label), ("--config", args.config),
                        ("--tracking-uri", args.tracking_uri)):
        if value is not None:
            argv += [flag, str(value)]
    for flag, values in (("--set", args.set_options), ("--split", args.split), ("--root", args.root)):
        for v in values:
            argv += [flag, v]
    if args.skip_bad:
        argv.append("--skip-bad")
    if args.strict_plugins:
        argv.insert(0, "--strict-plugins")
    return argv


def cmd_tune(args) -> int:
    from rich.console import Console

    from lesionbench.planning import RunRequest
    from lesionbench.storage import display_url
    from lesionbench.tuning import Tuner, TuneRequest, cpu_threads_per_worker, spawn_workers, summary_table, worker_devices

    if args.workers < 1:
        raise SystemExit(f"error: --workers {args.workers}: give at least 1")
    if args.seeds_final < 0:
        raise SystemExit(f"error: --seeds-final {args.seeds_final}: give 0 or more seeds")
    plugins = _plugins(args)
    console = Console(stderr=True)
    devices = worker_devices(args.device, args.workers)
    request = TuneRequest(
        method=args.method, dataset=args.dataset, trials=args.trials, workdir=args.workdir, timeout=args.timeout,
        profile=args.profile, storage=args.storage, study=args.study, label=args.label, objective=args.objective, seed=args.seed,
        config_file=args.config, set_options=args.set_options, device=devices[0], split_seed=args.split_seed,
        split_files=_pairs(args.split, "--split", default_key="*"), roots=_pairs(args.root, "--root"),
        tracking_uri=args.tracking_uri, experiment=args.experiment, skip_bad=args.skip_bad, pruner=args.pruner,
        heartbeat=args.heartbeat,
    )
    tuner = Tuner(request, plugins, console)
    study, created = tuner.open_study()
    console.print(f"study {tuner.study_name!r} ({'created' if created else 'joined'}) in {display_url(tuner.url)}; "
                  f"this worker: {tuner.worker} on {tuner.device}")
    spawn = None
    if args.workers > 1:
        threads = cpu_threads_per_worker(devices)
        if threads is not None:
            import torch

            torch.set_num_threads(threads)
        spawn = lambda: spawn_workers(_tune_argv(args), devices[1:], tuner.study_dir, threads)  # noqa: E731
        console.print(f"{args.workers - 1} more worker(s) on this machine; their logs: {tuner.study_dir}/worker-K.log"
                      + (f"; {threads} CPU thread(s) per worker" if threads else ""))
    summary = tuner.optimize(study, spawn)
    Console(width=200).print(summary_table(summary))
    uri = tuner.tracker.uri
    console.print(f"results: MLflow {uri} (experiment {args.experiment!r}, study run {summary.study_run_id}); "
                  f"study {summary.study!r} in {summary.storage}")
    if args.seeds_final and summary.best_file is not None:
        if not summary.complete:
            console.print("[yellow]--seeds-final waits for the study to complete: repeat this command when the other "
                          "workers are done (finished trials are not run again)[/yellow]")
            return 0
        console.print(f"final runs: {summary.best_file} on seeds 0..{args.seeds_final - 1}, evaluated on test")
        final = RunRequest(
            methods=None, datasets=[args.dataset], seeds=list(range(args.seeds_final)), profile=None,
            workdir=args.workdir, config_file=str(summary.best_file), device=args.device, split_seed=args.split_seed,
            split_files=request.split_files, roots=request.roots, tracking_uri=args.tracking_uri,
            experiment=args.experiment, objective=summary.objective, skip_bad=args.skip_bad,
        )
        return run_and_report(final, plugins)
    return 0


def cmd_leaderboard(args) -> int:
    from lesionbench.tracking import check_store_readable, default_tracking_uri

    workdirs = args.workdir or [Path("lesionbench-runs")]
    if args.tracking_uri is None:
        for workdir in workdirs:
            if not (workdir / "mlflow.db").exists():
                raise SystemExit(f"error: no runs in {workdir} (no mlflow.db); run `lesionbench run --workdir {workdir}` first")
    uris = args.tracking_uri or [default_tracking_uri(w) for w in workdirs]
    for one in uris:
        check_store_readable(one)  # a read command: never creates or migrates the store
    uri = uris[0] if len(uris) == 1 else uris
    print_leaderboard(uri, args.experiment, args.format, args.metrics, args.datasets, args.out, args.eval_space,
                      args.bootstrap, args.bootstrap_seed, args.wide, args.rows)
    if args.contrast:
        print(contrast_table(uri, args.experiment, [tuple(c) for c in args.contrast], args.contrast_metric, args.datasets,
                             args.eval_space, args.bootstrap, args.bootstrap_seed))
    return 0


def contrast_table(uri: str | list[str], experiment: str, pairs, metric: str, datasets, eval_space, n_resamples: int, seed: int) -> str:
    """The planned contrasts ``pairs`` as a Markdown table (``lesionbench.leaderboard.contrasts``)."""
    from lesionbench.leaderboard.contrasts import planned_contrasts, render_contrasts
    from lesionbench.leaderboard.tables import build_leaderboard

    runs = selected_runs(uri, experiment, eval_space)
    lb = build_leaderboard(runs, (metric,), datasets, n_resamples=0)
    return render_contrasts(planned_contrasts(lb.per_volume, pairs, metric, max(n_resamples, 1) * 2, seed))


def cmd_check_data(args) -> int:
    """Read every case in full and check it; a table per case, then the bad cases and a non-zero exit."""
    import dataclasses

    import numpy as np
    import scipy.ndimage as ndi
    from rich.console import Console
    from rich.table import Table

    from lesionbench.config import parse_set, resolve_data_config
    from lesionbench.planning import resolve_dataset
    from lesionbench.preparation import data_for_dataset, make_adapter
    from lesionbench.preprocessing import Geometry
    from lesionbench.volume import DataError

    plugins = _plugins(args)
    cls = resolve_dataset(args.dataset, plugins)
    set_options = parse_set(args.set_options)
    data = resolve_data_config("quick", {}, [o for o in set_options if o.namespace == "data"])
    data = data_for_dataset(cls, data, {o.key for o in set_options})
    adapter = make_adapter(cls, args.root, data)
    console = Console(width=200)
    cases = adapter.cases()
    if not cases:
        console.print(f"[red]dataset {cls.name}: no cases found" + (f" under {adapter.root}" if adapter.root else "") + "[/red]")
        return 1
    table = Table(title=f"{cls.name}" + (f" ({adapter.root})" if adapter.root else ""))
    for col in ("case", "modalities", "shape (DxHxW)", "spacing (mm)", "brain voxels", "lesion voxels", "lesion slices", "lesions"):
        table.add_column(col)
    bad, volumes = {}, {}
    with console.status("reading cases") as status:
        for case in cases:
            status.update(f"reading {case}")
            try:
                v = adapter.load(case)
                if v.lesion is not None and not (v.lesion & ~v.brain).sum() * 2 <= v.lesion.sum():
                    raise DataError(f"case {case}: most lesion voxels lie outside the brain mask")
            except DataError as exc:
                bad[case] = str(exc)
                table.add_row(case, "[red]bad[/]", "", "", "", "", "", "")
                continue
            lesion = v.lesion if v.lesion is not None else np.zeros_like(v.brain)
            volumes[case] = (v.brain, lesion)
            table.add_row(case, ",".join(v.modalities), "x".join(map(str, v.image.shape[1:])),
                          "x".join(f"{s:g}" for s in v.spacing), str(int(v.brain.sum())), str(int(lesion.sum())),
                          str(int(lesion.any(axis=(1, 2)).sum())), str(ndi.label(lesion)[1]))
    console.print(table)
    if volumes and len({b.shape[1:] for b, _ in volumes.values()}) == 1 and any(l.any() for _, l in volumes.values()):
        # what the default resampling keeps of the lesions (one box fitted on all cases listed here)
        geometry = Geometry.fit([b for b, _ in volumes.values()], data.size)
        kept = Table(title=f"lesions through resampling at data.size={data.size} (box {geometry.box[1] - geometry.box[0]} px, scale {geometry.scale:.3f}) and back")
        for col in ("case", "lesion voxels", "resampled voxels", "recovered voxels", "lesions", "lesions lost"):
            kept.add_column(col)
        for case, (brain, lesion) in volumes.items():
            if not lesion.any():
                continue
            small = geometry.resample_mask(lesion)
            back = geometry.mask_to_native(small) & lesion
            components, n = ndi.label(lesion)
            lost = n - len(set(np.unique(components[back]).tolist()) - {0})
            kept.add_row(case, str(int(lesion.sum())), str(int(small.sum())),
                         f"{int(back.sum())} ({back.sum() / lesion.sum():.1%})", str(n), str(lost))
        console.print(kept)
    console.print(f"{len(cases) - len(bad)} of {len(cases)} cases OK")
    for case, err in bad.items():
        console.print(f"[red]bad case {case}: {err}[/red]", soft_wrap=True)
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    from lesionbench.config import ConfigError
    from lesionbench.leaderboard import LeaderboardError
    from lesionbench.plugins import PluginError, UnknownNameError
    from lesionbench.volume import DataError

    from lesionbench.metrics import UndefinedMetricWarning

    args = build_parser().parse_args(argv)
    # the runner prints these with the cell they belong to, and MLflow tags them
    warnings.filterwarnings("ignore", category=UndefinedMetricWarning)
    commands = {"list": cmd_list, "run": cmd_run, "tune": cmd_tune, "leaderboard": cmd_leaderboard, "check-data": cmd_check_data}
    try:
        return commands[args.command](args)
    except (ConfigError, UnknownNameError, PluginError, LeaderboardError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
