"""End to end through the CLI and the runner: tracking keys, skipping, reproducibility, failures, guarantees."""

import dataclasses
import json
import math
import os
import re
import stat

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from conftest import SpyMethod, ToyAdapter
from lesionbench.cli import main
from lesionbench.method import SliceSet
from lesionbench.fitlog import HarnessLog
from lesionbench.planning import RunRequest
from lesionbench.runner import run_grid
from lesionbench.tracking import RUN_TAGS

METRIC_KEYS = ["auprc", "auroc", "dice_best", "dice_val", "dice_val_vol_mean", "dice_val_vol_std", "dice_fpr5", "slice_auroc", "slice_ap"]


def _runs(workdir, **filters):
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    exp = client.get_experiment_by_name("lesionbench")
    return client, client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])


@pytest.fixture(scope="module")
def intensity_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run")
    code = main(["run", "--methods", "intensity", "--datasets", "synth-ms", "--profile", "smoke", "--seeds", "0", "1",
                 "--workdir", str(workdir), "--device", "cpu"])
    return workdir, code


def test_run_tracks_one_run_per_cell_with_the_exact_keys(intensity_run):
    workdir, code = intensity_run
    assert code == 0
    client, runs = _runs(workdir)
    assert len(runs) == 2
    run = runs[0]
    assert set(RUN_TAGS) <= set(run.data.tags)
    assert run.data.tags["run_kind"] == "run" and run.data.tags["method"] == "intensity"
    assert run.data.tags["eval_space"] == "resampled" and run.data.tags["profile"] == "smoke"
    assert run.data.tags["uses_val_voxel_labels"] == "false"  # intensity never calls log.evaluate
    from lesionbench.tracking import source_digest

    assert run.data.tags["source_digest"] == source_digest()  # the code, also where git_commit is "unknown"
    assert run.data.tags["torch_threads"] == str(torch.get_num_threads())
    for key in METRIC_KEYS:
        assert f"test/{key}" in run.data.metrics, key
    assert {"time/fit_s", "time/predict_s_per_slice", "val/auprc"} <= set(run.data.metrics)
    assert {"intensity.modality", "split_hash", "data.size", "config_hash"} <= set(run.data.params)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.toml", "per_volume.csv", "scores.npz", "grid.png"} <= artifacts
    assert any(a.startswith("synth-ms-") and a.endswith(".json") for a in artifacts)
    # intensity has no randomness: both seeds give the same numbers
    assert runs[0].data.metrics["test/auprc"] == runs[1].data.metrics["test/auprc"]


def test_stored_maps_recompute_the_pooled_metrics(intensity_run):
    from lesionbench.metrics import average_precision

    workdir, _ = intensity_run
    client, runs = _runs(workdir)
    path = client.download_artifacts(runs[0].info.run_id, "scores.npz", str(workdir / "dl"))
    with np.load(path) as z:
        cases = sorted({k.split("/")[0] for k in z.files})
        scores = np.concatenate([z[f"{c}/map"][z[f"{c}/brain"]] for c in cases]).astype(np.float64)
        labels = np.concatenate([z[f"{c}/lesion"][z[f"{c}/brain"]] for c in cases])
    # maps are stored in float16: AP from them agrees to float16 rounding
    assert average_precision(scores, labels) == pytest.approx(runs[0].data.metrics["test/auprc"], abs=5e-3)


def test_finished_cells_are_skipped_unless_forced(intensity_run, capsys):
    workdir, _ = intensity_run
    args = ["run", "--methods", "intensity", "--datasets", "synth-ms", "--profile", "smoke", "--seeds", "0",
            "--workdir", str(workdir), "--device", "cpu"]
    assert main(args) == 0
    assert "0 cells run, 1 skipped" in capsys.readouterr().err
    assert len(_runs(workdir)[1]) == 2
    assert main(args + ["--force"]) == 0
    assert len(_runs(workdir)[1]) == 3


def test_leaderboard_reprints_from_mlflow(intensity_run, capsys):
    workdir, _ = intensity_run
    assert main(["leaderboard", "--workdir", str(workdir), "--format", "md"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("| intensity"))
    client, runs = _runs(workdir)
    auprc = runs[0].data.metrics["test/auprc"]
    assert f"{auprc:.3f}" in row  # both seeds equal: std 0
    assert "upper bound" in out


def test_leaderboard_page_from_the_runners_artifacts(intensity_run, tmp_path):
    """The runner's scores.npz and grid.png feed the statistics and the HTML page's grid."""
    workdir, _ = intensity_run
    out = tmp_path / "board.html"
    assert main(["leaderboard", "--workdir", str(workdir), "--format", "html", "--out", str(out), "--bootstrap", "100"]) == 0
    page = out.read_text(encoding="utf-8")
    n_slices = page.count('alt="ground truth')
    assert n_slices >= 1 and page.count("<img ") == 3 * n_slices  # input, the intensity map, ground truth
    assert re.search(r"0\.\d{3} ± 0\.000<br><span class=\"ci\">\[0\.\d{3}, [01]\.\d{3}\]", page)  # an interval per cell


def test_one_leaderboard_from_the_runs_of_two_workdirs(intensity_run, tmp_path, capsys):
    """#22: context rows reused from an earlier grid beside new rows: --workdir twice gives one table, its
    artifacts read from each run's own store; two workdirs on different splits are refused, naming the key."""
    workdir, _ = intensity_run
    other, shifted = tmp_path / "other", tmp_path / "shifted"
    common = ["--datasets", "synth-ms", "--profile", "smoke", "--seeds", "0", "--device", "cpu"]
    config = tmp_path / "t2.toml"
    config.write_text('method = "intensity"\n[intensity]\nlabel = "intensity-t2"\nmodality = "t2"\n')
    assert main(["run", "--config", str(config), *common, "--workdir", str(other)]) == 0
    capsys.readouterr()
    out = tmp_path / "board.html"
    both = ["leaderboard", "--workdir", str(workdir), "--workdir", str(other)]
    assert main([*both, "--format", "md", "--bootstrap", "50"]) == 0
    table = capsys.readouterr().out
    rows = [line.split(" |")[0] for line in table.splitlines() if line.startswith("| intensity")]
    assert sorted(rows) == ["| intensity", "| intensity-t2"]
    assert main([*both, "--format", "md", "--bootstrap", "0", "--rows", "intensity-t2"]) == 0
    assert [line.split(" |")[0] for line in capsys.readouterr().out.splitlines() if line.startswith("| intensity")] == ["| intensity-t2"]
    assert main([*both, "--rows", "intensity-t1"]) == 2
    assert "--rows: no finished runs labelled 'intensity-t1'; labels: intensity, intensity-t2" in capsys.readouterr().err
    assert main([*both, "--format", "html", "--out", str(out), "--bootstrap", "50"]) == 0
    page = out.read_text(encoding="utf-8")
    n_slices = page.count('alt="ground truth')
    assert n_slices >= 1 and page.count("<img ") == 4 * n_slices  # input, two maps (one per store), ground truth
    assert main(["run", "--methods", "intensity", "--split-seed", "1", *common, "--workdir", str(shifted)]) == 0
    capsys.readouterr()
    assert main(["leaderboard", "--workdir", str(workdir), "--workdir", str(shifted), "--format", "md"]) == 2
    assert "dataset synth-ms: runs differ in" in capsys.readouterr().err  # the split (and the crop box fitted on it)


def test_same_seed_same_numbers_for_a_trained_method(tmp_path):
    results = []
    for i in range(2):
        workdir = tmp_path / f"w{i}"
        assert main(["run", "--methods", "vae", "--datasets", "synth-tumor", "--profile", "smoke", "--seeds", "3",
                     "--workdir", str(workdir), "--device", "cpu"]) == 0
        results.append(_runs(workdir)[1][0].data.metrics)
    keys = [k for k in results[0] if k.startswith(("test/", "val/"))]
    assert keys and all(results[0][k] == results[1][k] for k in keys)


def test_methods_never_see_masks_or_the_test_split(tmp_path, toy_plugins):
    request = RunRequest(methods=["spy"], datasets=["toy"], profile="smoke", workdir=tmp_path, device="cpu",
                         set_options=["data.size=16", "data.val_fraction=0.2", "data.test_fraction=0.3"])
    [result] = run_grid(request, toy_plugins)
    assert result.status == "finished", result.error
    seen = SpyMethod.seen
    assert type(seen["train"]) is SliceSet and type(seen["val"]) is SliceSet
    [split_file] = [p for p in (tmp_path / "splits").glob("toy-*.json") if not p.name.endswith(".strata.json")]
    split = json.loads(split_file.read_text())
    test_cases = {c for c, p in split.items() if p == "test"}
    loaded_before_fit = {case for kind, case in seen["loaded_at_fit"] if kind == "load"}
    assert loaded_before_fit and not test_cases & loaded_before_fit
    # the stratified split read every case's lesion count, and nothing else, before fit
    assert {case for kind, case in seen["loaded_at_fit"] if kind == "summary"} == set(split)
    strata = json.loads(split_file.with_suffix(".strata.json").read_text())
    assert strata["counts"]["test"] == {"healthy": 2, "large": 2}  # 4 test cases of 7 healthy and 7 lesioned (smoke: 14)
    events = ToyAdapter.events
    fit_at = events.index(("fit", None))
    assert test_cases == {case for _, case in events[fit_at + 1 :]}  # opened only after fit, for evaluation
    assert 0 < seen["val_value"] <= 1  # log.evaluate scored validation with masks the method never held
    client, runs = _runs(tmp_path)
    assert runs[0].data.tags["uses_val_voxel_labels"] == "true"


def test_a_failing_cell_is_recorded_and_the_others_complete(tmp_path, toy_plugins, capsys):
    class Boom(SpyMethod):
        name = "boom"

        def fit(self, train, val, log):
            raise RuntimeError("exploded on purpose")

    toy_plugins.methods.add(Boom)
    request = RunRequest(methods=["boom", "spy"], datasets=["toy"], profile="smoke", workdir=tmp_path, device="cpu",
                         set_options=["data.size=16"])
    results = run_grid(request, toy_plugins)
    assert [r.status for r in results] == ["failed", "finished"]
    assert "exploded on purpose" in results[0].error
    client, runs = _runs(tmp_path)
    statuses = {r.data.tags["method"]: r.info.status for r in runs}
    assert statuses == {"boom": "FAILED", "spy": "FINISHED"}
    assert "traceback.txt" in {a.path for a in client.list_artifacts(runs[0].info.run_id)}


@pytest.mark.parametrize(
    "args, message",
    [
        (["--methods", "nope"], "unknown method 'nope'; known:"),
        (["--datasets", "synth-nope"], "unknown dataset 'synth-nope'"),
        (["--set", "intensity.modality=t9", "--methods", "intensity"], "modality 't9'"),
        (["--set", "vae.bogus=1", "--methods", "vae"], "unknown key"),
        (["--set", "vea.lr=1", "--methods", "vae"], "'vea' is neither 'data' nor a method"),
        (["--config", "/nonexistent/cfg.toml"], "config file /nonexistent/cfg.toml does not exist"),
    ],
)
def test_bad_input_is_a_clear_error(tmp_path, capsys, args, message):
    code = main(["run", "--profile", "smoke", "--workdir", str(tmp_path / "w"), "--device", "cpu", "--datasets", "synth-ms", *args])
    captured = capsys.readouterr()
    assert code != 0
    assert message in captured.err


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere: the unwritable workdir cannot be made")
def test_unwritable_workdir(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
    assert main(["run", "--methods", "intensity", "--profile", "smoke", "--workdir", str(locked / "w")]) == 2
    assert "cannot write to workdir" in capsys.readouterr().err


def test_workdir_that_is_a_file(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["run", "--methods", "intensity", "--profile", "smoke", "--workdir", str(blocker / "w")]) == 2
    assert f"cannot write to workdir {blocker / 'w'}" in capsys.readouterr().err


def test_config_file_and_sweep_make_labelled_cells(tmp_path, capsys):
    cfg = tmp_path / "cfg.toml"
    cfg.write_text('method = ["intensity"]\nprofile = "smoke"\n[intensity]\nlabel = "t2-intensity"\nmodality = "t2"\n')
    assert main(["run", "--config", str(cfg), "--datasets", "synth-ms", "--workdir", str(tmp_path / "w"), "--device", "cpu"]) == 0
    _, runs = _runs(tmp_path / "w")
    assert [(r.data.tags["label"], r.data.params["intensity.modality"], r.data.tags["profile"]) for r in runs] == [("t2-intensity", "t2", "smoke")]
    assert main(["run", "--methods", "intensity", "--set", "intensity.modality=flair,t2", "--profile", "smoke",
                 "--datasets", "synth-ms", "--workdir", str(tmp_path / "s"), "--device", "cpu"]) == 0
    _, runs = _runs(tmp_path / "s")
    assert sorted(r.data.tags["label"] for r in runs) == ["intensity[modality=flair]", "intensity[modality=t2]"]
    t2, flair = sorted(runs, key=lambda r: r.data.tags["label"], reverse=True)
    assert t2.data.metrics["test/auprc"] != flair.data.metrics["test/auprc"]


def test_evaluate_without_a_validation_case_reads_no_voxel_labels():
    """open-ms's split has no validation case: log.evaluate returns NaN and the run must not be marked as having
    used validation voxel labels (the leaderboard's ‡)."""
    log = HarnessLog(None, object(), [], 1, "auprc")
    assert not log.used_val_voxel_labels  # never called
    assert math.isnan(log.evaluate(10))
    assert log.evaluations == [(10, log.evaluations[0][1])] and not log.used_val_voxel_labels


def test_a_cached_part_leaves_the_random_streams_where_training_it_would(tmp_path):
    """Same seed, same numbers whether a trained part comes from the cache or not: a cache hit puts the
    generators where training would have left them (so the rest of fit draws the same numbers), also for a
    method that reads another method's parts (``parts_owner``)."""
    import random

    from lesionbench.seeding import seed_everything

    class Owner:
        name, parts_owner = "owner", None

    class Borrower:
        name, parts_owner = "borrower", "owner"

    def train():
        torch.rand(7), np.random.rand(3), random.random()
        return {"w": torch.arange(3.0)}

    def fit(method):
        seed_everything(5)
        log = HarnessLog(None, method, [], 1, "auprc", parts_dir=tmp_path, parts_key=["data", 0])
        state = log.cached("part", {"width": 8}, train)
        return state["w"].tolist(), torch.rand(2).tolist(), np.random.rand(2).tolist(), random.random(), log.parts_reused

    fresh, cached, borrowed = fit(Owner()), fit(Owner()), fit(Borrower())
    assert fresh[-1] == [] and cached[-1] == ["part"] and borrowed[-1] == ["part"]
    assert fresh[:-1] == cached[:-1] == borrowed[:-1]
    assert [p.name.split("-")[:2] for p in tmp_path.iterdir()] == [["owner", "part"]]


def test_workers_starting_together_can_all_check_the_shared_workdir(tmp_path):
    # run --storage workers share one workdir and start together; a fixed probe file name made one worker
    # delete another's probe ("cannot write to workdir ...: No such file or directory")
    from concurrent.futures import ThreadPoolExecutor

    from lesionbench.planning import check_workdir

    def check_many(_):
        for _ in range(300):
            check_workdir(tmp_path / "w")

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(check_many, range(8)))  # re-raises the first error
    assert list((tmp_path / "w").iterdir()) == []  # no probe is left behind


def test_the_source_digest_names_the_code_where_git_cannot(tmp_path):
    from lesionbench.tracking import source_digest, source_files

    def tree(name, files):
        (tmp_path / name).mkdir()
        for file, text in files.items():
            (tmp_path / name / file).write_text(text)
        return (("pkg", tmp_path / name),)

    first = source_digest(tree("a", {"a.py": "x = 1\n", "b.py": "y = 2\n"}))
    assert len(first) == 16 and first == source_digest(tree("a2", {"a.py": "x = 1\n", "b.py": "y = 2\n"}))
    assert source_digest(tree("b", {"a.py": "x = 1\n", "b.py": "y = 3\n"})) != first  # one byte of code changed
    assert source_digest(tree("c", {"c.py": "x = 1\n", "b.py": "y = 2\n"})) != first  # the same bytes, another name
    # a checkout keeps methods, datasets and the leaderboard beside the core: the default covers all of them
    names = source_files()
    for module in ("lesionbench/tracking.py", "lesionbench/methods/wargnier/method.py",
                   "lesionbench/datasets/__init__.py", "lesionbench/leaderboard/tables.py"):
        assert module in names, module


def test_the_validation_objective_is_part_of_a_cell_and_one_label_keeps_one(tmp_path, capsys):
    """A run under another objective is another cell (a method that keeps its best checkpoint on log.evaluate
    keeps another one), not skipped as finished; the default objective keeps the key cells had before it entered;
    a table refuses one label whose runs used two objectives."""
    from lesionbench.cell import cell_hash
    from lesionbench.config import stable_hash
    from lesionbench.leaderboard.tables import LeaderboardError, build_table, load_runs
    from lesionbench.tracking import default_tracking_uri

    args = ["run", "--methods", "intensity", "--datasets", "synth-ms", "--profile", "smoke", "--seeds", "0",
            "--workdir", str(tmp_path), "--device", "cpu"]
    assert main(args) == 0 and "1 cells run, 0 skipped" in capsys.readouterr().err
    assert main(args + ["--objective", "slice_auroc"]) == 0 and "1 cells run, 0 skipped" in capsys.readouterr().err
    assert main(args + ["--objective", "slice_auroc"]) == 0 and "0 cells run, 1 skipped" in capsys.readouterr().err
    client, runs = _runs(tmp_path)
    keys = {r.data.params["objective"]: r.data.tags["cell"] for r in runs}
    assert sorted(keys) == ["val/auprc", "val/slice_auroc"] and len(set(keys.values())) == 2
    with pytest.raises(LeaderboardError, match=r"'intensity' on synth-ms has runs under 2 validation objectives"):
        build_table(load_runs(default_tracking_uri(tmp_path)))

    @dataclasses.dataclass
    class Config:
        a: int = 1

    class V:  # what cell_hash reads of a variant
        method = type("M", (), {"name": "m"})
        config = Config()

    class D:
        preprocessing = {"p": 1}

    parts = ["m", {"a": 1}, {"p": 1}]
    from lesionbench.splits import split_hash

    split = {"c1": "test"}
    assert cell_hash(V, D, split, 0, "resampled") == stable_hash(parts + [split_hash(split), 0, "resampled"], 16)
    assert cell_hash(V, D, split, 0, "resampled", "slice_auroc") != cell_hash(V, D, split, 0, "resampled")


@pytest.mark.parametrize("uses_objective, trainings", [(False, 1), (True, 2)])
def test_a_part_kept_on_validation_is_cached_per_objective(tmp_path, uses_objective, trainings):
    """log.cached: a part declared uses_objective is trained again under another objective (its checkpoint was
    chosen on the first one); any other part is shared; the default objective keeps the name it had before."""
    from lesionbench.config import stable_hash

    method = SpyMethod(SpyMethod.make_config("smoke"), device="cpu", modalities=("flair",), seed=0)
    trained = []
    for objective in ("auprc", "slice_auroc", "slice_auroc"):
        log = HarnessLog(None, method, [], 1, objective, parts_dir=tmp_path, parts_key=["k"])
        state = log.cached("part", {"a": 1}, lambda: trained.append(objective) or {"w": torch.ones(1)},
                           uses_objective=uses_objective)
        assert torch.equal(state["w"], torch.ones(1))
    assert len(trained) == trainings and trained[0] == "auprc"
    assert (tmp_path / f"{method.name}-part-{stable_hash([method.name, 'part', {'a': 1}, ['k']], 20)}.pt").exists()


def test_a_configuration_tuned_on_a_voxel_objective_is_marked_as_using_validation_voxel_labels(tmp_path, capsys):
    """intensity reads no validation mask itself, but a config file whose study chose it on val/auprc
    (``tuned_on``, what ``tune`` writes in best.toml) did: its runs carry the tag, and the leaderboard's ‡."""
    from lesionbench.leaderboard.tables import build_leaderboard, load_runs, render_markdown

    common = ["--datasets", "synth-ms", "--profile", "smoke", "--seeds", "0", "--workdir", str(tmp_path), "--device", "cpu"]
    for label, objective in (("by-voxels", "val/auprc"), ("by-slices", "slice_auroc")):
        config = tmp_path / f"{label}.toml"
        modality = "flair" if label == "by-voxels" else "t2"  # another cell: the label alone does not make one
        config.write_text(f'method = "intensity"\ntuned_on = "{objective}"\n[intensity]\nlabel = "{label}"\n'
                          f'modality = "{modality}"\n')
        assert main(["run", "--config", str(config), *common]) == 0
    client, runs = _runs(tmp_path)
    tags = {r.data.tags["label"]: r.data.tags for r in runs}
    assert tags["by-voxels"]["uses_val_voxel_labels"] == "true" and tags["by-voxels"]["tuned_on"] == "val/auprc"
    assert tags["by-slices"]["uses_val_voxel_labels"] == "false" and tags["by-slices"]["tuned_on"] == "val/slice_auroc"
    table = render_markdown(build_leaderboard(load_runs(f"sqlite:///{tmp_path / 'mlflow.db'}"), n_resamples=0))
    assert "| by-voxels‡" in table and "| by-slices |" in table
    bad = tmp_path / "bad.toml"
    bad.write_text('method = "intensity"\ntuned_on = "test/auprc"\n')
    assert main(["run", "--config", str(bad), *common]) == 2
    assert re.search(r"bad\.toml: tuned_on 'test/auprc': the objective is a validation metric", " ".join(capsys.readouterr().err.split()))


def test_run_objective_is_a_validation_metric_or_a_clear_error(tmp_path, capsys):
    """``run --objective`` picks what log.evaluate returns: an unknown key used to give NaN silently."""
    common = ["run", "--methods", "intensity", "--datasets", "synth-ms", "--profile", "smoke", "--workdir", str(tmp_path),
              "--device", "cpu"]
    assert main([*common, "--objective", "aurpc"]) == 2
    assert "--objective 'aurpc': not a validation metric; choose one of val/auprc" in " ".join(capsys.readouterr().err.split())
    assert main([*common, "--objective", "test/auprc"]) == 2
    assert "the test split is never used for tuning" in " ".join(capsys.readouterr().err.split())
    assert not (tmp_path / "mlflow.db").exists()  # refused before anything ran
    assert main([*common, "--objective", "val/slice_auroc"]) == 0  # the val/ prefix is accepted, as tune takes it
    [run] = _runs(tmp_path)[1]
    assert run.data.params["objective"] == "val/slice_auroc" and "fit/val_val/slice_auroc" not in run.data.metrics
