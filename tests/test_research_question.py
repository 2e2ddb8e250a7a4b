"""scripts/research_question.py (#22): the planned studies, context rows and publishing as one resumable command."""

import os
import re
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "research_question.py"
ENV = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "OMP_NUM_THREADS": "1"}


def _script(*args, cwd):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=ENV, cwd=cwd)


def test_the_plan_is_the_planned_family(tmp_path):
    """Dry run: every twin is a 12-trial image-label study with 3 final seeds; the variants are fixed per
    study, masked and fusion on guidance's classifier; the voxel objective only for wolleb and one variant,
    labelled apart; the contrasts are the planned ones."""
    done = _script("--workdir", str(tmp_path / "w"), "--dry-run", "--datasets", "synth-tumor",
                   "--set", "data.cache_dtype=float32", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = [l.removeprefix("$ ") for l in done.stdout.splitlines()]
    tunes = [l for l in lines if l.startswith("lesionbench tune")]
    assert len(tunes) == 9 and all("--trials 12" in l and "--seeds-final 3" in l and "--pruner none" in l for l in tunes)
    slice_studies = [l for l in tunes if "--objective val/slice_auroc" in l]
    assert [l.split("--method ")[1].split()[0] for l in slice_studies] == [
        "saliency", "wargnier", "wolleb", "wolleb-wargnier", "wolleb-wargnier", "wolleb-wargnier", "cfg-diffusion"]
    assert "--set wolleb-wargnier.variant=guidance" in slice_studies[3]
    for variant, line in zip(("masked", "fusion"), slice_studies[4:6]):
        assert f"--set wolleb-wargnier.variant={variant}" in line and "wolleb-wargnier.constraint_weight=" in line
    voxel = [l for l in tunes if "--objective val/auprc" in l]
    assert len(voxel) == 2 and "--label wolleb-tuned-auprc" in voxel[0] and "-tuned-auprc" in voxel[1]
    assert not any("tests" in l or "test/" in l for l in tunes)  # studies choose on validation only
    assert all("--set data.cache_dtype=float32" in l for l in lines if l.startswith(("lesionbench tune", "lesionbench run")))
    contrasts = next(l for l in lines if "--contrast" in l)
    pairs = [c.split()[:2] for c in contrasts.split("--contrast ")[1:]]
    assert pairs[:5] == [["wargnier-tuned", "saliency-tuned"],
                         ["'wolleb-wargnier[variant=guidance]-tuned'", "wolleb-tuned"],
                         ["'wolleb-wargnier[variant=masked]-tuned'", "wolleb-tuned"],
                         ["'wolleb-wargnier[variant=fusion]-tuned'", "wolleb-tuned"],
                         ["cfg-diffusion-tuned", "wolleb-tuned"]]
    assert pairs[5][1] == "intensity"


def test_smoke_run_publishes_and_resumes(tmp_path):
    """The constraint twins at smoke size: studies, finals, a context row, the published tables and contrasts;
    the same command again runs no new trial."""
    workdir = tmp_path / "w"
    args = ["--workdir", str(workdir), "--twins", "constraint", "--datasets", "synth-ms", "--profile", "smoke",
            "--trials", "1", "--seeds", "1", "--context-methods", "intensity", "--device", "cpu"]
    done = _script(*args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    published = workdir / "published"
    assert sorted(p.name for p in published.iterdir()) == [
        "compute-synth-ms.md", "contrasts-synth-ms.md", "leaderboard-synth-ms.html", "leaderboard-synth-ms.md",
        "leaderboard-synth-ms.tex", "placement-synth-ms.md"]
    compute = {l.split(" | ")[0].removeprefix("| "): l.split(" | ")[1:] for l in
               (published / "compute-synth-ms.md").read_text().splitlines()[2:5]}
    assert sorted(compute) == ["intensity", "saliency-tuned", "wargnier-tuned"]
    assert [compute["saliency-tuned"][0], compute["saliency-tuned"][2]] == ["1", "1"]  # its trial, its final run
    assert [compute["intensity"][0], compute["intensity"][2]] == ["0", "1"]  # untuned: no study
    assert [compute["wargnier-tuned"][0], compute["wargnier-tuned"][2]] == ["1", "1"]
    table = (published / "leaderboard-synth-ms.md").read_text()
    rows = [l.split(" |")[0] for l in table.splitlines() if l.startswith("| ") and not l.startswith("| label")]
    assert rows == ["| intensity°", "| saliency-tuned", "| wargnier-tuned"]
    contrasts = (published / "contrasts-synth-ms.md").read_text()
    assert "| synth-ms | wargnier-tuned - saliency-tuned |" in contrasts
    assert " - intensity |" in contrasts  # the best learned row against the FLAIR baseline
    placement = [l.split(" | ") for l in (published / "placement-synth-ms.md").read_text().splitlines()[2:5]]
    assert sorted(r[0] for r in placement) == ["| intensity", "| saliency-tuned", "| wargnier-tuned"]
    assert all(r[1] == "1" and 0 <= float(r[3]) <= 1 and 0 <= float(r[5]) <= 1 and 0 <= float(r[6].rstrip(" |")) <= 1
               for r in placement)
    assert re.search(r"brain area alone, no image seen, scores slice AUROC 0\.\d{3} here", (published / "placement-synth-ms.md").read_text())
    storage = f"sqlite:///{workdir / 'optuna.db'}"
    studies = {s.study_name: s.n_trials for s in optuna.get_all_study_summaries(storage)}
    assert studies == {"saliency-synth-ms-smoke-slice_auroc": 1, "wargnier-synth-ms-smoke-slice_auroc": 1}
    again = _script(*args, "--stages", "studies", "context", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "already finished" in again.stderr
    assert {s.study_name: s.n_trials for s in optuna.get_all_study_summaries(storage)} == studies
    assert "lesionbench run --methods" not in again.stdout  # the context row is finished: not run again
    reused = _script("--workdir", str(tmp_path / "w2"), "--reuse", str(workdir), "--stages", "context", "--datasets",
                     "synth-ms", "--profile", "smoke", "--seeds", "1", "--context-methods", "intensity", "vae", cwd=tmp_path)
    assert reused.returncode == 0, reused.stderr[-3000:]
    runs = [l for l in reused.stdout.splitlines() if l.startswith("$ lesionbench run")]
    assert len(runs) == 1 and "--methods vae --datasets synth-ms" in runs[0]  # intensity reused from the first workdir


def test_a_failing_step_stops_and_names_the_command(tmp_path):
    done = _script("--workdir", str(tmp_path / "w"), "--stages", "brats", cwd=tmp_path)
    assert done.returncode != 0 and "the brats stage needs --brats-root" in done.stderr
    done = _script("--workdir", str(tmp_path / "w"), "--stages", "context", "--context-methods", "nope",
                   "--datasets", "synth-ms", "--profile", "smoke", "--seeds", "1", cwd=tmp_path)
    assert done.returncode != 0 and "`lesionbench run --methods nope" in done.stderr and "exited with 2" in done.stderr


def test_the_voxel_study_takes_the_variant_with_the_best_validation_value(tmp_path):
    """The variant for the val/auprc study is read from the variants' studies (their storage), not from test."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("research_question", SCRIPT)
    rq = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rq)
    plan = rq.Plan(rq.argparse.Namespace(workdir=tmp_path, profile="quick"))
    for variant, value in (("guidance", 0.61), ("masked", 0.74), ("fusion", 0.52)):
        name = f"wolleb-wargnier.variant_{variant}-synth-ms-quick-slice_auroc"  # the name tune gives it
        study = optuna.create_study(study_name=name, storage=plan.storage, direction="maximize")
        study.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=value))
    assert {v: plan.best_value(rq.variant_label(v), "synth-ms") for v in rq.VARIANTS} == {
        "guidance": 0.61, "masked": 0.74, "fusion": 0.52}


@pytest.mark.parametrize("name, method, values", [
    ("wolleb-at-guidance-settings", "wolleb", {"noise_level": 450, "stride": 10}),
    ("guidance-at-wolleb-settings", "wolleb-wargnier", {"noise_level": 150, "stride": 10, "variant": "guidance"}),
    ("masked-without-constraint", "wolleb-wargnier", {"noise_level": 250, "stride": 10, "variant": "masked",
                                                      "mask_dilation": 2, "constraint_weight": 0.0}),
    ("fusion-without-constraint", "wolleb-wargnier", {"noise_level": 500, "stride": 10, "variant": "fusion",
                                                      "constraint_weight": 0.0}),
])
def test_the_shipped_controls_swap_the_two_studies_settings(name, method, values):
    """docs/rq-controls (#22, post hoc): each control is one row of its own label, with another study's
    inference settings; a constrained one keeps guidance's tuned constraint weight, one without the constraint
    has weight 0 (its classifier trains as wolleb's)."""
    from lesionbench.config import load_config_file
    from lesionbench.planning import method_variants
    from lesionbench.plugins import load_plugins

    path = SCRIPT.parents[1] / "docs" / "rq-controls" / f"{name}.toml"
    table = load_config_file(path)
    assert table["method"] == method
    cls = load_plugins().methods.get(method)
    [variant] = method_variants(cls, "quick", table[method], [])
    assert variant.label == table[method]["label"] and ("-at-" in variant.label or "-without-constraint" in variant.label)
    for key, value in values.items():
        assert getattr(variant.config, key) == value
    if method == "wolleb-wargnier" and "constraint_weight" not in values:
        assert variant.config.constraint_weight == pytest.approx(0.0273, abs=1e-4)


def test_the_controls_stage_runs_each_shipped_control_and_its_family_names_only_known_rows(tmp_path):
    """Dry run of the controls stage with the shipped docs/rq-controls: every control config is run on the
    dataset family.toml names, seeds 0..K-1; every row of its contrasts is a control's label or a planned
    row (a typo would leave a contrast out of the published family)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("research_question", SCRIPT)
    rq = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rq)
    done = _script("--workdir", str(tmp_path / "w"), "--dry-run", "--stages", "controls", "publish",
                   "--datasets", "synth-tumor", "--set", "data.cache_dtype=float32", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = [l.removeprefix("$ ") for l in done.stdout.splitlines()]
    folder = SCRIPT.parents[1] / "docs" / "rq-controls"
    configs = sorted(f for f in folder.glob("*.toml") if f.name != "family.toml")
    runs = [l for l in lines if l.startswith("lesionbench run --config")]
    assert [l.split()[3] for l in runs] == [str(f) for f in configs] and len(configs) == 4
    assert all("--datasets synth-tumor --seeds 0 1 2" in l and "--set data.cache_dtype=float32" in l for l in runs)
    plan = rq.Plan(rq.argparse.Namespace(workdir=tmp_path, profile="quick", controls=folder,
                                         twins=["constraint", "diffusion", "guidance"]))
    dataset, pairs, _ = plan.control_family()
    labels = {rq.Plan.control_label(f) for f in configs}
    planned = {rq.tuned_label(l, o) for l, o in plan.tuned_rows()}
    assert dataset == "synth-tumor" and len(pairs) == 7 and len(labels) == 4
    assert {x for p in pairs for x in p} <= labels | planned and labels <= {x for p in pairs for x in p}
    contrasts = next(l for l in lines if "contrasts-controls-synth-tumor.md" in l)
    assert contrasts.count("--contrast ") == 7
    assert any(l.startswith("lesionbench leaderboard") and l.endswith("/published/controls-synth-tumor.md") for l in lines)


def test_controls_run_and_publish_their_own_family_and_a_bad_family_file_is_named(tmp_path):
    """A control (intensity on T2, its own label) at smoke size: run, then published with its contrast against
    the context row in a family of its own; the same command again runs nothing. A family.toml without
    pairs stops the stage with its path."""
    controls = tmp_path / "controls"
    controls.mkdir()
    (controls / "t2.toml").write_text('method = "intensity"\n[intensity]\nlabel = "intensity-t2"\nmodality = "t2"\n')
    (controls / "family.toml").write_text('dataset = "synth-ms"\ncontrasts = [["intensity-t2", "intensity"]]\n')
    workdir = tmp_path / "w"
    args = ["--workdir", str(workdir), "--controls", str(controls), "--datasets", "synth-ms", "--profile", "smoke",
            "--seeds", "1", "--twins", "constraint", "--context-methods", "intensity", "--device", "cpu"]
    done = _script(*args, "--stages", "context", "controls", "publish", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    published = workdir / "published"
    table = (published / "controls-synth-ms.md").read_text()
    rows = sorted(l.split(" |")[0] for l in table.splitlines() if l.startswith("| ") and not l.startswith("| label"))
    assert rows == ["| intensity", "| intensity-t2"]
    contrasts = (published / "contrasts-controls-synth-ms.md").read_text()
    assert "| synth-ms | intensity-t2 - intensity |" in contrasts
    assert "saliency" not in contrasts and contrasts.startswith("Post hoc controls")  # the planned family is apart
    again = _script(*args, "--stages", "controls", cwd=tmp_path)
    assert again.returncode == 0 and "lesionbench run" not in again.stdout
    empty = _script(*args, "--stages", "publish", "--datasets", "synth-tumor", cwd=tmp_path)  # nothing ran there
    assert empty.returncode == 0, empty.stderr[-2000:]
    assert "synth-tumor: no finished runs yet for" in empty.stdout and not list(published.glob("*synth-tumor*"))
    (controls / "family.toml").write_text('dataset = "synth-ms"\ncontrasts = ["intensity-t2"]\n')
    bad = _script(*args, "--stages", "controls", cwd=tmp_path)
    assert bad.returncode != 0 and f"{controls / 'family.toml'}: expected dataset" in bad.stderr
    (controls / "family.toml").write_text('dataset = "../../x"\ncontrasts = [["intensity-t2", "intensity"]]\n')
    bad = _script(*args, "--stages", "publish", cwd=tmp_path)  # the name would make a file outside the workdir
    assert bad.returncode != 0 and "dataset '../../x' is not a dataset name" in bad.stderr
    assert not list(tmp_path.glob("**/controls-*x.md"))


def test_a_control_enters_its_contrasts_only_once_every_seed_has_finished():
    import importlib.util

    import pandas as pd

    spec = importlib.util.spec_from_file_location("research_question", SCRIPT)
    rq = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rq)
    runs = pd.DataFrame({"tags.dataset": ["t", "t", "t", "t", "m", "m"], "tags.label": ["a", "a", "a", "b", "b", "b"],
                         "tags.seed": ["0", "1", "2", "0", "1", "2"]})
    assert rq.complete_rows(runs, "t", ["a", "b", "c"], 3) == {"a"}  # b has seeds 1 and 2 on another dataset only
    assert rq.complete_rows(runs, "t", ["a", "b"], 1) == {"a", "b"}


def _rq():
    import importlib.util

    spec = importlib.util.spec_from_file_location("research_question", SCRIPT)
    rq = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rq)
    return rq


def test_the_published_tuned_configs_are_the_plans_rows_and_agree_with_the_controls(tmp_path):
    """docs/rq-tuned (#22): one loadable config per tuned row the plan makes on synth-tumor (of the voxel
    variants, only the chosen one), named as its study and labelled as its row; the brats stage with --tuned runs
    exactly these; the inference settings agree with the controls' copies of them (docs/rq-controls)."""
    from lesionbench.config import load_config_file
    from lesionbench.planning import method_variants
    from lesionbench.plugins import load_plugins

    rq = _rq()
    folder = SCRIPT.parents[1] / "docs" / "rq-tuned"
    plan = rq.Plan(rq.argparse.Namespace(workdir=tmp_path, profile="quick", tuned=folder,
                                         twins=["constraint", "diffusion", "guidance"]))
    shipped = {}
    for label, objective in plan.tuned_rows():
        path = plan.tuned_config(label, "synth-tumor", objective)
        if objective == rq.VOXEL and label != "wolleb" and not path.exists():
            continue  # a variant not chosen for the voxel objective
        table = load_config_file(path)
        method = table["method"]
        [variant] = method_variants(load_plugins().methods.get(method), "quick", table[method], [])
        assert variant.label == rq.tuned_label(label, objective) == table[method]["label"]
        shipped[variant.label] = variant.config
    assert len(shipped) == 9 and sorted(p.stem for p in folder.glob("*.toml")) == sorted(
        plan.tuned_config(l, "synth-tumor", o).stem for l, o in plan.tuned_rows() if rq.tuned_label(l, o) in shipped)
    controls = {p.stem: load_config_file(p) for p in (SCRIPT.parents[1] / "docs" / "rq-controls").glob("*-*.toml")}
    settings = ("noise_level", "guidance_scale", "stride")
    pairs = [("wolleb-tuned", "guidance-at-wolleb-settings"),
             ("wolleb-wargnier[variant=guidance]-tuned", "wolleb-at-guidance-settings"),
             ("wolleb-wargnier[variant=masked]-tuned", "masked-without-constraint"),
             ("wolleb-wargnier[variant=fusion]-tuned", "fusion-without-constraint")]
    for row, control in pairs:
        table = controls[control][controls[control]["method"]]
        assert [getattr(shipped[row], k) for k in settings] == [table[k] for k in settings]
    weight = controls["guidance-at-wolleb-settings"]["wolleb-wargnier"]["constraint_weight"]
    assert all(shipped[f"wolleb-wargnier[variant={v}]-tuned"].constraint_weight == weight for v in rq.VARIANTS)
    brats = ["--workdir", str(tmp_path / "w"), "--stages", "brats", "--brats-root", str(tmp_path)]
    done = _script(*brats, "--tuned", str(folder), "--dry-run", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    runs = [l.split()[4] for l in done.stdout.splitlines() if l.startswith("$ lesionbench run --config")]
    assert all(r.startswith(str(folder)) for r in runs) and len(runs) == 9  # of the voxel variants, the chosen one
    missing = _script(*brats, "--tuned", str(tmp_path), cwd=tmp_path)  # no config there: stops, naming the file
    assert missing.returncode != 0 and "saliency-synth-tumor-quick-slice_auroc.toml is missing" in missing.stderr


def test_a_row_waits_for_its_last_fold_before_it_is_published():
    """partial_folds: a cross-validated row with a seed missing a finished fold is held back (the leaderboard
    would leave that seed out and a contrast on it would fail); single-split datasets hold nothing back."""
    import pandas as pd

    rq = _rq()
    runs = pd.DataFrame({
        "tags.dataset": ["brats"] * 7 + ["synth-ms"],
        "tags.label": ["a", "a", "a", "b", "b", "c", "c", "d"],
        "tags.seed": ["0"] * 8,
        "tags.fold": ["0", "1", "2", "0", "2", "0", "1", None],
        "tags.folds": ["3"] * 5 + ["2", "2", None],
    })
    assert rq.partial_folds(runs, "brats") == {"b"}
    assert rq.partial_folds(runs, "synth-ms") == set()


def test_tuned_configs_replace_the_studies_with_their_final_runs(tmp_path):
    """--tuned DIR on the studies stage (#22: the published tables from the committed configurations): no
    study, each tuned row's final seeds from DIR/STUDY.toml with the objective it was tuned on; a dataset
    without configurations there stops the script, naming the file. At smoke size the rows run, publish, and the
    same command again runs no cell twice."""
    folder = SCRIPT.parents[1] / "docs" / "rq-tuned"
    done = _script("--workdir", str(tmp_path / "w"), "--dry-run", "--datasets", "synth-tumor", "--stages", "studies",
                   "--tuned", str(folder), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = [l.removeprefix("$ ") for l in done.stdout.splitlines()]
    assert not [l for l in lines if l.startswith("lesionbench tune")]
    runs = [l.split() for l in lines if l.startswith("lesionbench run --config")]
    assert len(runs) == 9 and len(lines) == 9
    for argv in runs:
        config, objective = Path(argv[3]), argv[argv.index("--objective") + 1]
        assert config.parent == folder and config.stem.endswith(f"-synth-tumor-quick-{objective}")
        assert argv[argv.index("--datasets") + 1:argv.index("--datasets") + 6] == ["synth-tumor", "--seeds", "0", "1", "2"]
    assert sum(a[a.index("--objective") + 1] == "auprc" for a in runs) == 2
    missing = _script("--workdir", str(tmp_path / "w"), "--dry-run", "--datasets", "synth-ms", "--tuned", str(folder),
                      cwd=tmp_path)
    assert missing.returncode != 0 and "saliency-synth-ms-quick-slice_auroc.toml is missing" in missing.stderr

    tuned = tmp_path / "tuned"
    tuned.mkdir()
    (tuned / "saliency-synth-ms-smoke-slice_auroc.toml").write_text(
        'method = "saliency"\nprofile = "smoke"\n[saliency]\nlabel = "saliency-tuned"\nlr = 0.002\n')
    (tuned / "wargnier-synth-ms-smoke-slice_auroc.toml").write_text(
        'method = "wargnier"\nprofile = "smoke"\n[wargnier]\nlabel = "wargnier-tuned"\nconstraint_weight = 0.05\n')
    workdir = tmp_path / "w"
    args = ["--workdir", str(workdir), "--twins", "constraint", "--datasets", "synth-ms", "--profile", "smoke",
            "--seeds", "1", "--context-methods", "intensity", "--device", "cpu", "--tuned", str(tuned)]
    done = _script(*args, "--stages", "studies", "publish", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not (workdir / "optuna.db").exists()  # no study
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("lesionbench").experiment_id
    cells = lambda: sorted((r.data.tags["label"], r.data.tags["seed"], r.info.status)  # noqa: E731
                           for r in client.search_runs([experiment], "tags.run_kind = 'run'"))
    assert cells() == [("saliency-tuned", "0", "FINISHED"), ("wargnier-tuned", "0", "FINISHED")]
    contrasts = (workdir / "published" / "contrasts-synth-ms.md").read_text()
    assert "| synth-ms | wargnier-tuned - saliency-tuned |" in contrasts
    again = _script(*args, "--stages", "studies", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert cells() == [("saliency-tuned", "0", "FINISHED"), ("wargnier-tuned", "0", "FINISHED")]  # none ran again
