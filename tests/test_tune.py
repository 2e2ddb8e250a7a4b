"""``lesionbench tune`` and the shared ``run`` grid: workers sharing a study, resume after a crash, the test
split never read while tuning, best.toml into ``run``, pruning, PostgreSQL, errors.

Worker processes run the real command line (``python -m lesionbench`` for the built-in methods,
tests/tune_worker.py for the test plugins). One workdir (one MLflow store) serves the whole module.
"""

import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

import lesionbench.cli as cli
from conftest import ToyAdapter
from lesionbench.cli import main
from lesionbench.method import AnomalyOutput
from lesionbench.pipeline import PreparedDataset
from lesionbench.config import ConfigError
from lesionbench.storage import check_url, display_url, with_installed_driver
from lesionbench.tuning import Tuner, TuneRequest
from tune_worker import KnobMethod

HERE = Path(__file__).resolve().parent
WORKER = HERE / "tune_worker.py"
TOY = ["--dataset", "toy", "--profile", "smoke", "--set", "data.size=16", "--set", "data.val_fraction=0.2",
       "--set", "data.test_fraction=0.3"]
TOY_SET = ["data.size=16", "data.val_fraction=0.2", "data.test_fraction=0.3"]
ENV = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("tune")


@pytest.fixture
def toy(workdir, toy_plugins, monkeypatch):
    toy_plugins.methods.add(KnobMethod)
    monkeypatch.setattr(cli, "_plugins", lambda args: toy_plugins)
    return toy_plugins


def _client(workdir):
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    return client, client.get_experiment_by_name("lesionbench").experiment_id


def _runs(workdir, study, kind=None):
    client, exp = _client(workdir)
    where = f"tags.optuna_study = '{study}'" + (f" and tags.run_kind = '{kind}'" if kind else "")
    return client.search_runs([exp], where, max_results=1000)


def _study(workdir, name, url=None):
    return optuna.load_study(study_name=name, storage=url or f"sqlite:///{workdir / 'tune' / 'optuna.db'}")


def _wait(procs, timeout=240):
    outs = []
    for p in procs:
        out, _ = p.communicate(timeout=timeout)
        outs.append(out)
        assert p.returncode == 0, out[-3000:]
    return outs


def _check_cross_references(workdir, study):
    """Every trial names its MLflow run and the run names the trial; trial runs nest in the one study run."""
    [parent] = _runs(workdir, study.study_name, "study")
    assert study.user_attrs["mlflow_run_id"] == parent.info.run_id
    runs = {r.info.run_id: r for r in _runs(workdir, study.study_name, "trial")}
    for t in study.get_trials():
        run = runs[t.user_attrs["mlflow_run_id"]]
        assert run.data.tags["optuna_trial_number"] == str(t.number)
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
    return parent, runs


# -- two worker processes on one study (vae, synthetic data) ----------------------------------------


@pytest.fixture(scope="module")
def vae_study(workdir):
    cmd = [sys.executable, "-m", "lesionbench", "tune", "--method", "vae", "--dataset", "synth-ms", "--profile", "smoke",
           "--trials", "4", "--workdir", str(workdir), "--device", "cpu", "--study", "vae-two",
           "--set", "vae.max_steps=4", "--set", "vae.batch_size=8", "--set", "vae.eval_every=2"]
    procs = [subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    return _wait(procs)


def test_two_worker_processes_share_one_study(workdir, vae_study):
    study = _study(workdir, "vae-two")
    trials = study.get_trials()
    assert len(trials) == 4 and all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    assert len({t.user_attrs["worker"] for t in trials}) == 2  # both processes ran trials
    assert sum("(created)" in out for out in vae_study) == 1  # the study was created once, then joined
    parent, runs = _check_cross_references(workdir, study)
    assert parent.info.status == "FINISHED" and parent.data.tags["uses_val_voxel_labels"] == "true"
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    for t in done:
        run = runs[t.user_attrs["mlflow_run_id"]]
        assert run.info.status == "FINISHED" and run.data.metrics["val/auprc"] == pytest.approx(t.value)
        assert run.data.tags["uses_val_voxel_labels"] == "true"
        assert float(run.data.params["vae.lr"]) == pytest.approx(t.params["lr"])
        assert not any(k.startswith("test/") for k in run.data.metrics)
    assert parent.data.metrics["best/val_auprc"] == pytest.approx(study.best_value)


def test_best_toml_runs_as_it_is(workdir, vae_study, capsys):
    best_file = workdir / "tune" / "vae-two" / "best.toml"
    best = tomllib.loads(best_file.read_text())
    study = _study(workdir, "vae-two")
    assert best["method"] == "vae" and best["profile"] == "smoke" and best["tuned_on"] == "val/auprc"
    assert best["vae"]["lr"] == pytest.approx(study.best_params["lr"]) and best["vae"]["max_steps"] == 4
    assert best["vae"]["label"] == "vae-tuned"
    assert main(["run", "--config", str(best_file), "--datasets", "synth-ms", "--workdir", str(workdir), "--device", "cpu"]) == 0
    client, exp = _client(workdir)
    [run] = client.search_runs([exp], "tags.label = 'vae-tuned' and tags.run_kind = 'run'")
    assert run.data.params["vae.latent_size"] == str(study.best_params["latent_size"])
    assert run.data.tags["tuned_on"] == "val/auprc" and run.data.tags["uses_val_voxel_labels"] == "true"
    # the same config, seed, data and split as the best trial: the same validation score
    assert run.data.metrics["val/auprc"] == pytest.approx(study.best_value, abs=1e-3)
    assert "vae-tuned" in capsys.readouterr().out


def test_workers_flag_starts_local_workers_that_share_the_cores(workdir):
    """``--workers 2``: one command, two processes on one study, each with half the CPU threads."""
    cmd = [sys.executable, "-m", "lesionbench", "tune", "--method", "vae", "--dataset", "synth-ms", "--profile", "smoke",
           "--trials", "4", "--workdir", str(workdir), "--device", "cpu", "--study", "vae-flag", "--workers", "2",
           "--set", "vae.max_steps=4", "--set", "vae.batch_size=8", "--set", "vae.eval_every=2"]
    env = {**ENV, "OMP_NUM_THREADS": "2"}
    [out] = _wait([subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)])
    trials = _study(workdir, "vae-flag").get_trials()
    assert len(trials) == 4 and all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    assert len({t.user_attrs["worker"] for t in trials}) == 2, out[-2000:]
    assert (workdir / "tune" / "vae-flag" / "worker-1.log").is_file()
    threads = max(1, (os.cpu_count() or 1) // 2)
    assert f"{threads} CPU thread(s) per worker" in " ".join(out.split())  # rich wraps long lines


def test_cpu_threads_per_worker(monkeypatch):
    from lesionbench.tuning import cpu_threads_per_worker

    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert cpu_threads_per_worker(["cpu", "cpu"]) == 4
    assert cpu_threads_per_worker(["cpu"] * 3) == 2
    assert cpu_threads_per_worker(["cpu"] * 16) == 1
    assert cpu_threads_per_worker(["cpu"]) is None  # one worker keeps torch's default
    assert cpu_threads_per_worker(["cuda:0", "cuda:1"]) is None  # GPU workers are not limited


# -- in-process studies on the toy data -------------------------------------------------------------


def test_the_test_split_is_never_read_while_tuning(workdir, toy, monkeypatch):
    events = ToyAdapter.events
    test_calls = []
    real_test_cases, real_summarise = PreparedDataset.test_cases, Tuner.summarise

    def test_cases(self):
        test_calls.append(len(events))
        return real_test_cases(self)

    def summarise(self, study, ran):
        events.append(("study done", None))
        return real_summarise(self, study, ran)

    monkeypatch.setattr(PreparedDataset, "test_cases", test_cases)
    monkeypatch.setattr(Tuner, "summarise", summarise)
    assert main(["tune", "--method", "knob", *TOY, "--trials", "3", "--workdir", str(workdir), "--device", "cpu",
                 "--study", "toy-split", "--seeds-final", "1"]) == 0
    split = next(p for p in (workdir / "splits").glob("toy-*.json") if not p.name.endswith(".strata.json")).read_text()
    test_cases_ids = {c for c in ToyAdapter(subjects=10).cases() if f'"{c}": "test"' in split}
    done_at = events.index(("study done", None))
    assert test_cases_ids and not test_cases_ids & {case for kind, case in events[:done_at] if kind != "summary"}
    assert test_calls and min(test_calls) > done_at  # only the final run (after the study) opens the test split
    assert test_cases_ids <= {case for _, case in events[done_at:]}
    _check_cross_references(workdir, _study(workdir, "toy-split"))
    client, exp = _client(workdir)
    [final] = client.search_runs([exp], "tags.label = 'knob-tuned' and tags.run_kind = 'run'")
    assert "test/auprc" in final.data.metrics and final.info.status == "FINISHED"


def test_slice_level_objective_is_weakly_supervised(workdir, toy):
    request = TuneRequest(method="knob", dataset="toy", trials=2, workdir=workdir, profile="smoke", device="cpu",
                          set_options=TOY_SET, objective="val/slice_auroc", study="toy-slice",
                          storage=f"journal:{workdir / 'journal.log'}")  # Optuna's journal file works too
    tuner = Tuner(request, toy)
    summary = tuner.optimize(tuner.open_study()[0])
    assert summary.counts == {"COMPLETE": 2} and not summary.uses_val_voxel_labels
    assert {r.data.tags["uses_val_voxel_labels"] for r in _runs(workdir, "toy-slice")} == {"false"}
    best = tomllib.loads(summary.best_file.read_text())
    assert best["knob"]["weight"] == pytest.approx(summary.best_params["weight"]) and best["data"]["size"] == 16


def test_pruning_through_log_evaluate(workdir, toy):
    request = TuneRequest(method="knob", dataset="toy", trials=5, workdir=workdir, profile="smoke", device="cpu",
                          set_options=TOY_SET, study="toy-prune", pruner_startup_trials=2)
    tuner = Tuner(request, toy)
    study, _ = tuner.open_study()
    for weight in (0.5, 0.3, 0.1, 0.9, 0.05):  # validation AUPRC rises with the weight up to 0.9
        study.enqueue_trial({"weight": weight})
    summary = tuner.optimize(study)
    states = [t.state for t in study.get_trials()]
    assert states == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.PRUNED, TrialState.COMPLETE, TrialState.PRUNED]
    assert summary.best_number == 3 and summary.counts == {"COMPLETE": 3, "PRUNED": 2}
    _, runs = _check_cross_references(workdir, study)
    pruned = [runs[t.user_attrs["mlflow_run_id"]] for t in study.get_trials() if t.state == TrialState.PRUNED]
    assert all(r.info.status == "KILLED" and r.data.tags["optuna_state"] == "PRUNED" for r in pruned)
    assert all(r.data.tags["optuna_last_step"] == "0" for r in pruned)  # stopped at the first evaluation of 3


def test_study_run_ends_with_the_best_value_whatever_order_workers_report(workdir, toy):
    """Two workers: trial 2 ends (its callback logs the best it sees: trial 0's) before the better trial 1 does.
    The summary of the last worker to finish must leave the study run's best/val_auprc at the study's best."""
    request = TuneRequest(method="knob", dataset="toy", trials=3, workdir=workdir, profile="smoke", device="cpu",
                          set_options=TOY_SET, study="toy-order", pruner="none")
    tuner = Tuner(request, toy)
    study, _ = tuner.open_study()
    for weight in (0.1, 0.9, 0.5):
        study.enqueue_trial({"weight": weight})
    tuner.optimize(study)
    trials = study.get_trials()
    assert study.best_trial.number == 1 and trials[0].value < study.best_value
    client, _ = _client(workdir)
    client.log_metric(tuner.study_run_id, "best/val_auprc", trials[0].value, step=2)  # the stale view of trial 2's worker
    tuner.summarise(study, 0)  # the last worker's summary
    assert client.get_run(tuner.study_run_id).data.metrics["best/val_auprc"] == pytest.approx(study.best_value)


# -- a crashed worker and resume --------------------------------------------------------------------


def test_resume_after_a_killed_worker(workdir):
    cmd = [sys.executable, str(WORKER), "tune", "--method", "knob", *TOY, "--trials", "2", "--workdir", str(workdir),
           "--device", "cpu", "--study", "toy-resume", "--pruner", "none", "--heartbeat", "1",
           "--set", "knob.steps=3", "--set", "knob.step_seconds=0.3"]
    first = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    storage = f"sqlite:///{workdir / 'tune' / 'optuna.db'}"
    deadline = time.monotonic() + 120
    killed = None
    while killed is None and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.2)
        try:
            trials = optuna.load_study(study_name="toy-resume", storage=storage).get_trials()
        except KeyError:  # not created yet
            continue
        running = [t for t in trials if t.state == TrialState.RUNNING and t.number >= 1 and "mlflow_run_id" in t.user_attrs]
        if running:
            first.send_signal(signal.SIGKILL)
            killed = running[0]
    first.communicate()
    assert killed is not None, "the worker finished before it could be killed"
    [out] = _wait([subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)])
    study = _study(workdir, "toy-resume")
    trials = study.get_trials()
    assert [t.number for t in trials if t.state == TrialState.FAIL] == [killed.number]
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 2 and len(trials) == 3  # trial 0 was not run again
    [retry] = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]
    assert retry.state == TrialState.COMPLETE and retry.params == killed.params
    client, _ = _client(workdir)
    dead = client.get_run(killed.user_attrs["mlflow_run_id"])
    assert dead.info.status == "FAILED" and "heartbeats" in dead.data.tags["error"]
    assert client.get_run(retry.user_attrs["mlflow_run_id"]).data.tags["optuna_retry_of"] == str(killed.number)
    assert "queued again" in out


# -- PostgreSQL ---------------------------------------------------------------------------------------


def _pg_program(name):
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    return str(candidates[-1]) if candidates else None


def _unprivileged_user():
    """postgres refuses to run as root: the server runs as `postgres` (Debian's package makes it) or a user we add."""
    for name in ("postgres", "lesionbench-pg"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            pass
    made = subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "lesionbench-pg"],
                          capture_output=True, text=True)
    return pwd.getpwnam("lesionbench-pg") if made.returncode == 0 else None


@pytest.fixture(scope="module")
def postgres_url():
    initdb, pg_ctl = _pg_program("initdb"), _pg_program("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip("PostgreSQL server programs (initdb, pg_ctl) not found; .ci/run installs Debian's postgresql")
    if not any(importlib.util.find_spec(m) for m in ("psycopg", "psycopg2")):
        pytest.skip("no PostgreSQL driver for Python (psycopg or psycopg2): pip install 'lesionbench[postgres]'")
    run_as = []
    base = Path(tempfile.mkdtemp(prefix="lesionbench-pg-"))
    if os.geteuid() == 0:
        user = _unprivileged_user()
        if user is None or shutil.which("runuser") is None:
            shutil.rmtree(base)
            pytest.skip("running as root, and no unprivileged user (postgres) to run the PostgreSQL server as")
        os.chown(base, user.pw_uid, user.pw_gid)
        run_as = ["runuser", "-u", user.pw_name, "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data, log = base / "data", base / "server.log"
    steps = [
        [initdb, "-D", str(data), "-U", "lb", "--auth=trust", "-E", "UTF8", "--no-sync"],
        [pg_ctl, "-D", str(data), "-l", str(log), "-w", "-t", "60", "-o", f"-p {port} -h 127.0.0.1 -k {base} -F", "start"],
    ]
    for step in steps:
        done = subprocess.run(run_as + step, capture_output=True, text=True)
        if done.returncode != 0:
            reason = (done.stderr or done.stdout).strip()[-500:] + (log.read_text()[-500:] if log.exists() else "")
            shutil.rmtree(base, ignore_errors=True)
            pytest.skip(f"the PostgreSQL server did not start: {reason}")
    yield f"postgresql://lb@127.0.0.1:{port}/postgres"
    subprocess.run(run_as + [pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
    shutil.rmtree(base, ignore_errors=True)


def test_two_workers_on_one_study_in_postgresql(workdir, postgres_url):
    cmd = [sys.executable, str(WORKER), "tune", "--method", "knob", *TOY, "--trials", "4", "--workdir", str(workdir),
           "--device", "cpu", "--storage", postgres_url, "--study", "toy-pg", "--pruner", "none",
           "--set", "knob.steps=3", "--set", "knob.step_seconds=0.3"]
    outs = _wait([subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)])
    study = _study(workdir, "toy-pg", with_installed_driver(postgres_url))
    trials = study.get_trials()
    assert len(trials) == 4 and all(t.state == TrialState.COMPLETE for t in trials)
    assert len({t.user_attrs["worker"] for t in trials}) == 2
    assert sum("(created)" in out for out in outs) == 1
    parent, _ = _check_cross_references(workdir, study)
    assert parent.data.tags["optuna_storage"] == postgres_url  # no password here to hide
    assert (workdir / "tune" / "toy-pg" / "best.toml").exists()


# -- the run grid through a shared storage --------------------------------------------------------------


def test_run_grid_cells_are_shared_by_workers(workdir, capsys):
    queue = f"sqlite:///{workdir / 'grid.db'}"
    cmd = [sys.executable, "-m", "lesionbench", "run", "--methods", "intensity", "--datasets", "synth-ms", "--profile",
           "smoke", "--seeds", "0", "1", "2", "--workdir", str(workdir), "--device", "cpu", "--experiment", "grid",
           "--storage", queue]
    outs = _wait([subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)])
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    exp = client.get_experiment_by_name("grid").experiment_id
    runs = client.search_runs([exp], "tags.run_kind = 'run'")
    assert sorted(r.data.tags["seed"] for r in runs) == ["0", "1", "2"]  # each cell once
    assert all(r.info.status == "FINISHED" for r in runs)
    taken = [int(out.split("this worker took ")[1].split()[0]) for out in outs]
    assert sum(taken) == 3
    [name] = {out.split("cell queue '")[1].split("'")[0] for out in outs}
    study = optuna.load_study(study_name=name, storage=queue)
    assert [t.user_attrs["status"] for t in study.get_trials()] == ["finished"] * 3
    # a new queue for the same grid: every cell already has a finished run
    assert main(cmd[3:] + ["--study", "again"]) == 0
    assert "0 cells run, 3 skipped" in capsys.readouterr().err


# -- errors ---------------------------------------------------------------------------------------------


def test_storage_urls():
    assert check_url("sqlite:////tmp/a.db") == check_url("postgresql+psycopg2://u:p@h:5432/db") == "rdb"
    assert check_url("journal:///tmp/study.log") == "journal"
    assert display_url("postgresql://lb:secret@db.example:5432/studies") == "postgresql://lb:***@db.example:5432/studies"
    for bad in ("optuna.db", "http://host/x", "journal:"):
        with pytest.raises(ConfigError, match="--storage"):
            check_url(bad)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--method", "nope"], "unknown method 'nope'; known:"),
        (["--storage", "redis://localhost/0"], "--storage 'redis://localhost/0': not a storage URL"),
        (["--objective", "test/auprc"], "the test split is never used for tuning"),
        (["--objective", "val/nope"], "--objective 'val/nope': not a validation metric"),
        (["--method", "intensity"], "method 'intensity' declares no search_space"),
        (["--set", "vae.lr=1e-3"], "vae.lr: set in --set/--config but tuned by vae's search space"),
        (["--set", "vae.lr=1e-3,1e-4"], "tune searches around one configuration"),
        (["--study", "a/b"], "--study 'a/b'"),
    ],
)
def test_bad_input_is_a_clear_error(tmp_path, capsys, args, message):
    base = {"--method": "vae", "--dataset": "synth-ms", "--trials": "2", "--workdir": str(tmp_path / "w")}
    for flag, value in zip(args[::2], args[1::2]):
        base[flag] = value
    argv = ["tune", "--profile", "smoke", "--device", "cpu"]
    for flag, value in base.items():
        argv += [flag, value]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


@dataclass
class VariantConfig:
    weight: float = 0.5
    steps: int = 1
    step_seconds: float = 0.0
    variant: str = "noisy"


def test_a_tuned_variant_is_labelled_by_the_variant_the_study_chose(workdir, toy):
    """Methods with ``label_keys`` name rows by their variant, in runs and in best.toml (not the start value's)."""

    class Variants(KnobMethod):
        name, label_keys, Config = "knobv", ("variant",), VariantConfig

        @classmethod
        def search_space(cls, trial):
            return {"variant": trial.suggest_categorical("variant", ["noisy", "clean"])}

        def predict(self, images):
            if self.config.variant == "clean":
                return AnomalyOutput(images[:, -1].clone())
            return super().predict(images)

    toy.methods.add(Variants)
    request = TuneRequest(method="knobv", dataset="toy", trials=2, workdir=workdir, profile="smoke", device="cpu",
                          set_options=TOY_SET, study="toy-variant")
    tuner = Tuner(request, toy)
    study, _ = tuner.open_study()
    for variant in ("noisy", "clean"):
        study.enqueue_trial({"variant": variant})
    summary = tuner.optimize(study)
    assert tuner.variant.label == "knobv[variant=noisy]"  # the untuned configuration's row
    assert summary.best_params == {"variant": "clean"}
    assert tomllib.loads(summary.best_file.read_text())["knobv"]["label"] == "knobv[variant=clean]-tuned"


def test_a_study_that_fixes_the_variant_tunes_only_that_variant_and_keeps_its_row(workdir, toy):
    """#22: ``--set knobf.variant=clean`` is not a clash when the space takes ``fixed``; the space leaves the
    variant out, tunes what that variant uses, and the tuned row keeps the fixed variant's name."""
    seen = []

    class Fixable(KnobMethod):
        name, label_keys, Config = "knobf", ("variant",), VariantConfig

        @classmethod
        def search_space(cls, trial, fixed=None):
            fixed = fixed or {}
            seen.append(dict(fixed))
            space = {} if "variant" in fixed else {"variant": trial.suggest_categorical("variant", ["noisy", "clean"])}
            if fixed.get("variant", space.get("variant")) == "clean":
                space["weight"] = trial.suggest_float("weight", 0.1, 0.9)
            return space

    toy.methods.add(Fixable)
    request = TuneRequest(method="knobf", dataset="toy", trials=2, workdir=workdir, profile="smoke", device="cpu",
                          set_options=[*TOY_SET, "knobf.variant=clean"])
    tuner = Tuner(request, toy)
    assert tuner.study_name == "knobf.variant_clean-toy-smoke-auprc"  # the default name of a variant's study
    summary = tuner.optimize(tuner.open_study()[0])
    assert seen and all(f == {"variant": "clean"} for f in seen)
    assert set(summary.best_params) == {"weight"}
    table = tomllib.loads(summary.best_file.read_text())["knobf"]
    assert table["label"] == "knobf[variant=clean]-tuned" and table["variant"] == "clean"
    labelled = TuneRequest(method="knobf", dataset="toy", trials=2, workdir=workdir, profile="smoke", device="cpu",
                           set_options=[*TOY_SET, "knobf.variant=clean"], label="knobf-tuned-voxels")
    assert tomllib.loads(Tuner(labelled, toy).write_best(summary).read_text())["knobf"]["label"] == "knobf-tuned-voxels"
    with pytest.raises(ConfigError, match="--label '../x'"):
        Tuner(TuneRequest(method="knobf", dataset="toy", trials=1, workdir=workdir, profile="smoke", device="cpu",
                          set_options=TOY_SET, label="../x"), toy)
    # a key the fixed space still tunes is a clash, as before
    with pytest.raises(ConfigError, match="knobf.weight: set in --set/--config but tuned"):
        Tuner(TuneRequest(method="knobf", dataset="toy", trials=1, workdir=workdir, profile="smoke", device="cpu",
                          set_options=[*TOY_SET, "knobf.variant=clean", "knobf.weight=0.3"], study="toy-fixed2"), toy)
