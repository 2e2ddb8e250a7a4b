"""The leaderboard (design §6): statistics by hand on tiny stores of synthetic MLflow runs, the renderings,
refusals, and the HTML page in a real browser (headless Chromium)."""

import math
import os
import re
import shutil
import subprocess
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.metrics import average_precision_score

from lesionbench import metrics as M
from lesionbench.cli import main
from lesionbench.figures import grid_tiles, qualitative_grid
from lesionbench.leaderboard import statistics as S
from lesionbench.leaderboard.formats import render
from lesionbench.leaderboard.rescoring import RunScores, lesion_size_table
from lesionbench.leaderboard.tables import (
    COLUMNS,
    DEFINITIONS,
    LeaderboardError,
    build_leaderboard,
    cell,
    data_line,
    load_runs,
    render_csv,
    render_latex,
    render_markdown,
    rich_table,
    row_name,
)
from lesionbench.preprocessing import PreparedCase
from lesionbench.tracking import SCORES_ARTIFACT, Tracker, score_arrays

D, H, W = 3, 8, 8


def toy_cases(n_test: int, n_healthy: int) -> list[PreparedCase]:
    """A dataset's test volumes: the first ``n_healthy`` without lesions; the others with an 8-voxel lesion on
    slices 0-1, and on even ones a one-voxel lesion on slice 2 too (odd ones keep a healthy slice)."""
    rng = np.random.default_rng(n_test)
    cases = []
    for i in range(n_test):
        lesion = np.zeros((D, H, W), bool)
        if i >= n_healthy:
            y, x = rng.integers(1, 6, 2)
            lesion[0:2, y : y + 2, x : x + 2] = True
            if i % 2 == 0:
                lesion[2, 7, 7] = True
        brain = np.ones((D, H, W), bool)
        brain[:, 0, :] = False
        labels = lesion.any(axis=(1, 2)).astype(np.int8)
        image = rng.random((1, D, H, W)).astype(np.float32) * brain
        cases.append(PreparedCase(f"c{i:02d}", image, brain, lesion, labels, ("flair",)))
    return cases


def toy_scores(cases: list[PreparedCase], quality: float, key: str) -> list[M.ScoredVolume]:
    """Maps that lift lesion voxels by ``quality``; every score a multiple of 1/64 below 2, exact in float16, so
    the stored maps re-score to the logged metrics exactly."""
    rng = np.random.default_rng(zlib.crc32(key.encode()))
    scored = []
    for c in cases:
        k = rng.integers(0, 48, c.lesion.shape) + np.where(c.lesion, int(round(quality * 64)), 0)
        score_map = (k / 64).astype(np.float32)
        slice_scores = np.array([score_map[d][c.brain[d]].max() for d in range(D)], np.float32)
        scored.append(M.ScoredVolume(c.case_id, score_map, c.brain, c.lesion, slice_scores, c.labels))
    return scored


def log_run(tracker, label, dataset, seed, quality, n_test=8, n_healthy=0, status="FINISHED", split="s1",
            config=None, val_voxels=False, extra_tags=None, fold=None, folds=None, cv="cv1"):
    """One finished cell as the runner records it: tags, params, metrics of metrics.evaluate, scores and grid.
    ``fold`` / ``folds``: fold ``fold`` of a ``folds``-fold cross-validation (``cv`` its cv_hash) over
    ``toy_cases(n_test, n_healthy)``: it tests the cases i with i % folds == fold, with its own validation set
    (so its own thresholds) and fit time."""
    cases = toy_cases(n_test, n_healthy)
    if fold is not None:
        cases = cases[fold::folds]
        split = f"{split}-fold{fold}"
    in_fold = "" if fold is None else f"/{fold}"
    scored = toy_scores(cases, quality, f"{label}/{dataset}/{seed}/{quality}{in_fold}")
    val = toy_scores(toy_cases(3, 0), quality, f"val/{label}/{seed}{in_fold}")
    evaluation = M.evaluate(scored, val)
    fold_tags = {} if fold is None else {"fold": str(fold), "folds": str(folds)}
    tags = {"method": label.split("[")[0], "label": label, "dataset": dataset, "seed": seed, "split_seed": 0,
            "profile": "smoke", "run_kind": "run", "cell": f"{label}-{dataset}-{seed}-{split}-{config}",
            "eval_space": "resampled", "uses_val_voxel_labels": str(val_voxels).lower(), **fold_tags, **(extra_tags or {})}
    params = {"config_hash": config or f"cfg-{label}", "split_hash": split, "data.preprocessing_hash": "p1"}
    if fold is not None:
        params["cv_hash"] = cv
    run = tracker.start(f"{label}/{dataset}/seed{seed}", tags, params)
    metrics = {f"test/{k}": v for k, v in evaluation.test.items()}
    metrics.update({f"threshold/{k}": v for k, v in evaluation.thresholds.items()})
    metrics.update({"time/fit_s": 1.0 + seed + (fold or 0), "time/predict_s_per_slice": 0.001})
    metrics.update({f"wolleb_protocol/{k}": v for k, v in M.wolleb_protocol(scored).items()})  # as the runner logs it
    run.metrics(metrics)
    with tempfile.TemporaryDirectory() as tmp:
        np.savez_compressed(Path(tmp) / SCORES_ARTIFACT, **score_arrays(scored))
        Image.fromarray(qualitative_grid(cases, scored, 0)).save(Path(tmp) / "grid.png")
        run.artifact(Path(tmp) / SCORES_ARTIFACT)
        run.artifact(Path(tmp) / "grid.png")
    run.finish(status)
    return run.run_id, scored, evaluation


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """toy-8: 8 lesioned test volumes, `good` beats `bad` on every one; toy-4: 4 volumes (1 healthy)."""
    root = tmp_path_factory.mktemp("lb")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    tracker = Tracker(uri, "lesionbench", root / "artifacts")
    logged = {}
    for label, quality, val_voxels in (("good_map", 1.0, True), ("bad", 0.25, False), ("middle", 0.5, False)):
        for seed in (0, 1):
            for dataset, n_test, n_healthy in (("toy-8", 8, 0), ("toy-4", 4, 1)):
                logged[label, dataset, seed] = log_run(tracker, label, dataset, seed, quality, n_test, n_healthy,
                                                       val_voxels=val_voxels)
    # never shown: a failed run and an unfinished one
    log_run(tracker, "crashed", "toy-8", 0, 0.9, status="FAILED")
    log_run(tracker, "running", "toy-8", 0, 0.9, status="RUNNING")
    return uri, root, logged


@pytest.fixture(scope="module")
def board(store):
    uri, _, _ = store
    return build_leaderboard(load_runs(uri), metrics=("auprc", "auroc", "dice_best", "dice_val", "slice_auroc",
                                                      "auprc_vol_mean", "fit_s"), n_resamples=200)


def test_stored_scores_re_score_to_the_core_metrics(store):
    """RunScores (counts per distinct value) gives exactly the pooled and per-volume metrics of metrics.evaluate."""
    uri, _, logged = store
    _, scored, evaluation = logged["middle", "toy-4", 0]
    rs = RunScores.of("r", scored, evaluation.thresholds)
    pooled = {k: v[0] for k, v in rs.metrics(np.ones((1, len(scored)))).items()}
    for key in ("auprc", "auroc", "dice_best", "dice_val", "dice_fpr5", "slice_auroc", "slice_ap", "dice_val_vol_mean",
                "auprc_vol_mean"):
        assert pooled[key] == pytest.approx(evaluation.test[key], abs=1e-12), key
    per_volume = rs.per_volume()
    expected = evaluation.per_volume
    lesioned = expected.n_lesion > 0
    for key in ("auprc", "dice_best", "dice_val"):
        np.testing.assert_allclose(per_volume[key][lesioned], expected[key][lesioned], atol=1e-12)
        assert np.isnan(per_volume[key][~lesioned]).all()  # healthy volumes have no per-volume value
    only_healthy = rs.metrics(np.array([~lesioned.to_numpy()], float))  # a resample without a lesion voxel
    assert all(np.isnan(v[0]) for v in only_healthy.values())  # is left out of the intervals, Dice included


def test_bootstrap_interval_by_hand(store, board):
    """The interval is the 2.5-97.5 percentile of the seed mean of pooled AP over the shared resamples."""
    _, _, logged = store
    weights = S.resample_weights(4, 200, 0, "toy-4")
    assert weights.shape == (200, 4) and (weights.sum(axis=1) == 4).all()
    np.testing.assert_array_equal(weights, S.resample_weights(4, 200, 0, "toy-4"))  # deterministic
    assert not np.array_equal(weights, S.resample_weights(4, 200, 0, "toy-8")[:, :4])  # one stream per dataset
    values = []
    for w in weights:
        per_seed = []
        for seed in (0, 1):
            scored = logged["bad", "toy-4", seed][1]
            scores = np.concatenate([np.tile(sv.map[sv.brain], n) for sv, n in zip(scored, w)])
            labels = np.concatenate([np.tile(sv.lesion[sv.brain], n) for sv, n in zip(scored, w)])
            per_seed.append(M.average_precision(scores, labels) if labels.any() else math.nan)
        values.append(np.mean(per_seed))
    values = np.array(values)
    low, high = np.percentile(values[~np.isnan(values)], [2.5, 97.5])
    col = ("toy-4", "auprc")
    assert board.ci_low.at["bad", col] == pytest.approx(low, abs=1e-12)
    assert board.ci_high.at["bad", col] == pytest.approx(high, abs=1e-12)
    point = np.mean([logged["bad", "toy-4", s][2].test["auprc"] for s in (0, 1)])
    assert board.means.at["bad", col] == pytest.approx(point)
    for label in board.means.index:  # every interval holds its point estimate
        for c in board.columns:
            if not math.isnan(board.ci_low.at[label, c]):
                assert board.ci_low.at[label, c] <= board.means.at[label, c] <= board.ci_high.at[label, c], (label, c)


def test_holm_on_known_p_values():
    adjusted = S.holm([0.01, 0.04, 0.03, 0.005, math.nan])
    np.testing.assert_allclose(adjusted[:4], [0.03, 0.06, 0.06, 0.02])
    assert math.isnan(adjusted[4])  # not part of the family
    np.testing.assert_allclose(S.holm([0.5, 0.9]), [1.0, 1.0])  # capped at 1 and monotone


def test_wilcoxon_against_the_best_row(store, board):
    """A per-volume column (AP per volume). toy-8: 8 paired volumes, good beats bad on every one: exact two-sided
    p = 2/2^8, Holm over 2 rows."""
    from scipy.stats import wilcoxon

    col = ("toy-8", "auprc_vol_mean")
    assert board.tests[col] == "wilcoxon"
    assert board.best[col] == "good_map"
    per_volume = board.per_volume
    vals = {label: per_volume[(per_volume.label == label) & (per_volume.dataset == "toy-8") & (per_volume.metric == "auprc")]
            .groupby("volume")["value"].mean() for label in ("good_map", "bad", "middle")}
    raw = [wilcoxon(vals[label] - vals["good_map"]).pvalue for label in ("bad", "middle")]
    assert raw[0] == pytest.approx(2 / 2**8)
    assert board.p_holm.at["bad", col] == pytest.approx(S.holm(raw)[0])
    assert board.p_holm.at["middle", col] == pytest.approx(S.holm(raw)[1])
    assert math.isnan(board.p_holm.at["good_map", col])  # the best row is not tested against itself
    md = render_markdown(board)
    bad_row = next(line for line in md.splitlines() if line.startswith("| bad "))
    cells = bad_row.split(" | ")
    assert "†" in cells[1 + board.columns.index(col)]


def test_paired_bootstrap_against_the_best_row(store, board):
    """A pooled column (auprc): on the shared resamples, the seed-mean pooled AP of row and best recomputed by hand
    from the maps; p = 2 min(P(diff <= 0), P(diff >= 0)) with add-one, Holm over the 2 rows."""
    _, _, logged = store
    col = ("toy-8", "auprc")
    assert board.tests[col] == "bootstrap" and board.best[col] == "good_map"
    weights = S.resample_weights(8, 200, 0, "toy-8")

    def resampled(label):
        values = []
        for w in weights:
            per_seed = []
            for seed in (0, 1):
                scored = logged[label, "toy-8", seed][1]
                scores = np.concatenate([np.tile(sv.map[sv.brain], n) for sv, n in zip(scored, w)])
                labels = np.concatenate([np.tile(sv.lesion[sv.brain], n) for sv, n in zip(scored, w)])
                per_seed.append(average_precision_score(labels, scores))
            values.append(np.mean(per_seed))
        return np.array(values)

    best = resampled("good_map")
    raw = []
    for label in ("bad", "middle"):
        diff = resampled(label) - best
        raw.append(min(1.0, 2 * (1 + min((diff <= 0).sum(), (diff >= 0).sum())) / (1 + diff.size)))
    assert raw[0] == pytest.approx(2 / 201)  # bad is below the best on every resample
    np.testing.assert_allclose([board.p_holm.at[label, col] for label in ("bad", "middle")], S.holm(raw), rtol=1e-12)
    assert S.paired_bootstrap_p([1.0, 2.0, math.nan, -1.0], [0.0, 0.0, 0.0, 0.0]) == pytest.approx(2 * 2 / 4)
    assert math.isnan(S.paired_bootstrap_p([math.nan], [1.0]))
    md = render_markdown(board)
    assert "pooled columns (auprc, auroc, ⌈Dice⌉, dice_val, slice_auroc) by a paired bootstrap" in md
    assert "per-volume columns (AP per volume) by a two-sided paired Wilcoxon signed-rank test" in md


def test_fewer_than_six_pairs_are_not_tested_and_say_so(board):
    """toy-4 has 3 lesioned volumes: no signed-rank test can reach p < 0.05, so none is marked; a note says so."""
    cols = [c for c in board.columns if c[0] == "toy-4" and c[1] != "fit_s"]
    assert board.p_holm[cols].isna().all().all()
    md = render_markdown(board)
    for line in md.splitlines():
        if line.startswith("| bad ") or line.startswith("| middle "):
            cells = line.split(" | ")
            assert not any("†" in cells[1 + board.columns.index(c)] for c in cols)
    notes = [line for line in md.splitlines() if line.startswith("toy-4 (")]
    assert all("no test was run" in n for n in notes)
    wilcoxon = [n for n in notes if "signed-rank" in n]
    bootstrap = [n for n in notes if "bootstrap" in n]
    assert len(wilcoxon) == 1 and "AP per volume" in wilcoxon[0].split(")")[0]
    assert len(bootstrap) == 1 and "only 4 test volume(s) (fewer than 6)" in bootstrap[0]
    for name in ("auprc", "auroc", "⌈Dice⌉", "dice_val", "slice_auroc"):
        assert name in bootstrap[0].split(")")[0], name


def test_markdown_table(store, board):
    uri, _, logged = store
    md = render_markdown(board)
    header = md.splitlines()[0]
    assert header.startswith("| label | toy-4 auprc |") and header.endswith("| mean rank |")
    good = next(line for line in md.splitlines() if line.startswith("| good_map‡ "))  # used validation voxel labels
    mean = np.mean([logged["good_map", "toy-8", s][2].test["auprc"] for s in (0, 1)])
    assert f"**{mean:.3f} ± " in good  # bold best, mean ± std over seeds
    assert "crashed" not in md and "running" not in md  # failed and unfinished runs are never shown
    assert "toy-8: n = 8 test volumes (8 with lesions)" in md and "toy-4: n = 4 test volumes (3 with lesions)" in md
    assert "upper bound" in md and "‡: model selection used validation voxel labels" in md and "good_map" in md
    assert board.mean_rank.idxmin() == "good_map" and board.mean_rank["bad"] > board.mean_rank["middle"]
    assert good.rstrip(" |").endswith(f"**{board.mean_rank['good_map']:.1f}**")  # the best mean rank, bold


def test_latex_uses_booktabs_and_bolds_the_best(board):
    tex = render_latex(board)
    for rule in (r"\toprule", r"\midrule", r"\bottomrule", r"\cmidrule(lr){2-8}", r"\resizebox{\linewidth}{!}{%"):
        assert rule in tex
    assert r"\multicolumn{7}{c}{toy-4 ($n=4$" in tex
    good = next(line for line in tex.splitlines() if line.startswith(r"good\_map$^\ddagger$"))  # escaped label
    assert sum(best == "good_map" for best in board.best.values()) >= 8
    assert good.count(r"\textbf{") == sum(best == "good_map" for best in board.best.values()) + 1  # and the rank
    assert r"$\pm$" in good and r"{\scriptsize [" in good
    assert r"$\lceil$Dice$\rceil$" in tex and "upper bound" in tex and r"95 \%" in tex


def test_csv_is_long(store, board):
    csv = render_csv(board)
    from io import StringIO

    df = pd.read_csv(StringIO(csv), dtype={"seed": str})
    assert list(df.columns) == ["label", "method", "dataset", "seed", "volume", "metric", "value"]
    runs = 3 * 2 * 2
    pooled = runs * 7  # seven metrics per run, all defined
    # per volume: 5 re-scorable metrics on each lesioned volume (8 + 3); slice_auroc needs both slice classes
    lesioned = 3 * 2 * (8 + 3)
    slice_defined = df[(df.volume != "pooled") & (df.metric == "slice_auroc")]
    assert len(df[df.volume == "pooled"]) == pooled
    assert len(df[(df.volume != "pooled") & (df.metric != "slice_auroc")]) == 4 * lesioned
    assert len(df) == pooled + 4 * lesioned + len(slice_defined)
    assert set(df.label) == {"good_map", "bad", "middle"} and set(df.seed) == {"0", "1"}


def test_mixing_is_refused(store):
    uri, root, _ = store  # other experiments of the same store
    tracker = Tracker(uri, "two-splits", root / "artifacts-splits")
    log_run(tracker, "a", "toy-4", 0, 0.5, n_test=4, split="s1")
    log_run(tracker, "a", "toy-4", 1, 0.5, n_test=4, split="s2")
    with pytest.raises(LeaderboardError, match="dataset toy-4: runs differ in split_hash"):
        render(load_runs(uri, "two-splits"), "md")
    tracker = Tracker(uri, "two-configs", root / "artifacts-configs")
    log_run(tracker, "a", "toy-4", 0, 0.5, n_test=4, config="x")
    log_run(tracker, "a", "toy-4", 1, 0.5, n_test=4, config="y")
    with pytest.raises(LeaderboardError, match="label 'a' on toy-4 has 2 different configurations"):
        render(load_runs(uri, "two-configs"), "md")


def test_latest_run_of_a_cell_wins(store):
    uri, root, _ = store
    tracker = Tracker(uri, "rerun", root / "artifacts-rerun")
    log_run(tracker, "a", "toy-4", 0, 0.25, n_test=4)
    _, _, newer = log_run(tracker, "a", "toy-4", 0, 1.0, n_test=4)  # same cell, run again
    board = build_leaderboard(load_runs(uri, "rerun"), metrics=("auprc",), n_resamples=0)
    assert board.means.at["a", ("toy-4", "auprc")] == pytest.approx(newer.test["auprc"])
    log_run(tracker, "b", "toy-4", 0, 0.5, n_test=4)
    log_run(tracker, "b", "toy-4", 1, 0.5, n_test=4)
    md = render_markdown(build_leaderboard(load_runs(uri, "rerun"), metrics=("auprc",), n_resamples=0))
    assert "Fewer seeds than the others: a on toy-4 (1)." in md  # a row with fewer seeds says so


def test_lesion_wise_and_size_bins():
    lesion = np.zeros((3, 6, 6), bool)
    lesion[0, 0, 0] = True  # 1 voxel, missed
    lesion[1:3, 2:4, 2:4] = True  # 8 voxels, half found
    score_map = np.zeros((3, 6, 6))
    score_map[1, 2:4, 2:4] = 1  # 4 voxels inside the lesion
    score_map[1, 2, 4] = 1  # and one touching it outside: counts against it
    score_map[2, 5, 5] = 1  # a distant false positive: does not
    found = M.lesion_wise(score_map, np.ones_like(lesion), lesion, 0.5)
    np.testing.assert_array_equal(found["size"], [1, 8])
    np.testing.assert_array_equal(found["detected"], [False, True])
    np.testing.assert_allclose(found["dice"], [0.0, 2 * 4 / (5 + 8)])
    table = lesion_size_table(pd.DataFrame({"size": found["size"], "detected": found["detected"], "dice": found["dice"]}))
    assert list(table["lesions"]) == [2, 0, 0, 0]  # 1-9 voxels: both
    assert table.loc[0, "detected"] == 0.5 and table.loc[0, "dice"] == pytest.approx(4 / 13)


def test_grid_tiles_invert_the_qualitative_grid():
    cases = toy_cases(5, 2)
    grid = qualitative_grid(cases, toy_scores(cases, 0.5, "grid"), 0)
    inputs, maps, truths = grid_tiles(grid)
    assert len(inputs) == len(maps) == len(truths) == 3  # the lesioned volumes
    for case, truth, image in zip(cases[2:], truths, inputs):
        z = int(case.lesion.sum(axis=(1, 2)).argmax())
        np.testing.assert_array_equal(truth, case.lesion[z].astype(np.uint8) * 255)
        np.testing.assert_array_equal(image, (np.clip(case.image[0, z], 0, 1) * 255).astype(np.uint8))
    assert grid_tiles(np.zeros((8, 8), np.uint8)) == ([], [], [])  # a split without lesions


def test_cli_writes_every_format(store, tmp_path, capsys):
    uri, _, _ = store
    for fmt in ("md", "latex", "csv", "html"):
        out = tmp_path / "out" / f"board.{fmt}"
        assert main(["leaderboard", "--tracking-uri", uri, "--format", fmt, "--out", str(out), "--bootstrap", "50",
                     "--metrics", "auprc", "dice_val"]) == 0
        assert out.stat().st_size > 0
    assert "leaderboard written to" in capsys.readouterr().err
    assert main(["leaderboard", "--tracking-uri", uri, "--format", "html"]) == 2
    assert "--format html writes a page: give --out" in capsys.readouterr().err
    assert main(["leaderboard", "--tracking-uri", uri, "--format", "md", "--bootstrap", "0"]) == 0
    assert "[a, b]" not in capsys.readouterr().out  # no intervals without resamples


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def test_html_page_renders_in_chromium(store, board, tmp_path):
    from lesionbench.leaderboard.report import render_html

    page = render_html(board)
    # self-contained: no reference outside the page
    assert not re.search(r"""(src|href)=["'](?!data:)""", page) and page.count('src="data:image/png;base64,') == page.count("<img ")
    assert "http://" not in page and "https://" not in page
    n_images = page.count("<img ")
    assert n_images == (4 + 3) * (1 + 3 + 1)  # grid slices (toy-8: 4, toy-4: 3) x (input, 3 maps, ground truth)
    path = tmp_path / "board.html"
    path.write_text(page, encoding="utf-8")
    browser = _chromium()
    if browser is None:
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium; .ci/run installs it): page not rendered")
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    dom = subprocess.run(flags + ["--virtual-time-budget=5000", "--dump-dom", path.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    assert f'data-images-loaded="{n_images}/{n_images}"' in dom  # every embedded image decoded
    assert 'id="leaderboard"' in dom and dom.count("<tr><td>good_map‡</td>") >= 1
    assert "Dice by lesion size" in dom
    shot = tmp_path / "board.png"
    subprocess.run(flags + ["--window-size=1200,1600", f"--screenshot={shot}", path.as_uri()],
                   capture_output=True, timeout=120)
    pixels = np.asarray(Image.open(shot).convert("L"))
    assert pixels.shape == (1600, 1200) and pixels.std() > 10  # something was drawn


def test_the_terminal_table_shows_a_long_variant_label_whole(tmp_path):
    """The main job prints the rich table on an ordinary terminal: a variant's row name must not end in "…"."""
    from rich.console import Console

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "lesionbench", tmp_path / "artifacts")
    long_label = "wolleb-wargnier[variant=guidance]"
    for label in (long_label, "intensity"):
        log_run(tracker, label, "toy-8", 0, 0.5)
    console = Console(width=100, record=True, file=open(tmp_path / "out.txt", "w"))
    console.print(rich_table(load_runs(uri), metrics=("auprc", "auroc", "dice_best", "dice_val", "fit_s", "predict_ms"), n_resamples=0))
    text = console.export_text()
    assert "…" not in text
    first_column = "".join(line.split("│")[1].strip() for line in text.splitlines() if line.startswith("│"))
    assert long_label in first_column


def test_one_test_volume_gets_no_bootstrap_interval_and_says_why(tmp_path):
    """open-ms's split tests on one patient: every resample is that patient, so an interval would claim a certainty
    the table does not have (and, re-scored from the float16 maps, need not even hold the mean)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "lesionbench", tmp_path / "artifacts")
    for label, quality in (("good_map", 1.0), ("bad", 0.25)):
        log_run(tracker, label, "toy-1", 0, quality, n_test=1)
        log_run(tracker, label, "toy-8", 0, quality)
    lb = build_leaderboard(load_runs(uri), metrics=("auprc", "dice_best"), n_resamples=50)
    one = [c for c in lb.columns if c[0] == "toy-1"]
    eight = [c for c in lb.columns if c[0] == "toy-8"]
    assert lb.ci_low[one].isna().all().all() and lb.ci_high[one].isna().all().all()
    assert lb.ci_low[eight].notna().all().all()  # the other dataset keeps its intervals
    md = render_markdown(lb)
    assert any(line.startswith("toy-1: 1 test volume") and "no interval" in line for line in md.splitlines())
    row = next(line for line in md.splitlines() if line.startswith("| good_map "))
    cells = row.split(" | ")
    assert all("[" not in cells[1 + lb.columns.index(c)] for c in one)
    assert all("[" in cells[1 + lb.columns.index(c)] for c in eight)
    assert "[a, b]: 95 % percentile bootstrap" in md
    only_one = render_markdown(build_leaderboard(load_runs(uri), metrics=("auprc",), datasets=["toy-1"], n_resamples=50))
    assert "[a, b]" not in only_one and "toy-1: 1 test volume" in only_one  # no footnote for intervals never shown


def test_a_fit_time_that_left_out_reused_parts_is_marked(tmp_path):
    """A variant that loaded the DDPM and classifier other runs trained logs a fit of seconds: the table must
    not pass that off as the method's training cost."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "lesionbench", tmp_path / "artifacts")
    masked = "wolleb-wargnier[variant=masked]"
    log_run(tracker, "wolleb", "toy-8", 0, 0.5)
    log_run(tracker, masked, "toy-8", 0, 0.6, extra_tags={"reused.ddpm": "d1", "reused.constrained_classifier": "c1"})
    log_run(tracker, masked, "toy-4", 0, 0.6, n_test=4)  # trained its own parts there
    lb = build_leaderboard(load_runs(uri), metrics=("auprc", "fit_s"), n_resamples=0)
    md = render_markdown(lb)
    rows = {line.split(" | ")[0].removeprefix("| "): line.split(" | ") for line in md.splitlines() if line.startswith("| ")}
    fit = {d: 1 + lb.columns.index((d, "fit_s")) for d in ("toy-4", "toy-8")}
    assert rows[masked][fit["toy-8"]] == "1.0§"
    assert "§" not in rows[masked][fit["toy-4"]] and "§" not in rows["wolleb"][fit["toy-8"]]
    assert "§" not in rows[masked][1 + lb.columns.index(("toy-8", "auprc"))]  # quality columns keep no marker
    assert "§: fit s leaves out the training of cached parts" in md
    assert f"{masked} on toy-8 (constrained_classifier, ddpm)." in md and f"{masked} on toy-4" not in md
    assert r"1.0$^\S$" in render_latex(lb)
    without_fit = render_markdown(build_leaderboard(load_runs(uri), metrics=("auprc",), n_resamples=0))
    assert "§" not in without_fit  # no marker and no footnote when fit times are not shown


def test_untuned_rows_beside_tuned_ones_are_marked_as_context(tmp_path):
    """#22: in a table with a study's tuned rows, the rows at the profile's defaults are marked and named;
    a table without tuned rows marks nothing."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "lesionbench", tmp_path / "artifacts")
    for label, quality in (("vae", 0.3), ("wolleb", 0.5), ("wolleb-tuned", 0.6), ("wolleb-tuned-auprc", 0.7)):
        log_run(tracker, label, "toy-8", 0, quality)
    md = render_markdown(build_leaderboard(load_runs(uri), metrics=("auprc",), n_resamples=0))
    rows = [line.split(" | ")[0].removeprefix("| ") for line in md.splitlines() if line.startswith("| ") and "---" not in line]
    assert rows[1:] == ["vae°", "wolleb°", "wolleb-tuned", "wolleb-tuned-auprc"]
    assert "°: untuned, no study of its own: the profile's defaults or the settings its label names" in md and "'-tuned'" in md and ": vae, wolleb." in md
    tex = render_latex(build_leaderboard(load_runs(uri), metrics=("auprc",), n_resamples=0))
    assert r"vae$^\circ$" in tex
    untuned_only = render_markdown(build_leaderboard(load_runs(uri).query("~`tags.label`.str.contains('-tuned')"),
                                                     metrics=("auprc",), n_resamples=0))
    assert "°" not in untuned_only


@pytest.mark.parametrize("metrics", [("auprc", "wolleb_dice", "wolleb_auroc"), ("wolleb_auroc",)])
def test_the_wolleb_protocol_columns_render_with_their_definition(store, metrics):
    """The README's `leaderboard --metrics auprc wolleb_dice wolleb_auroc` (wolleb_auroc had no definition: KeyError)."""
    uri, _, logged = store
    lb = build_leaderboard(load_runs(uri), metrics=metrics, n_resamples=0)
    md = render_markdown(lb)
    assert md.count("Otsu Dice / AUROC per slice (Wolleb)") == 1
    header = md.splitlines()[0]
    assert "toy-8 AUROC per slice (Wolleb)" in header
    row = next(line for line in md.splitlines() if line.startswith("| bad |")).split(" | ")
    column = 1 + lb.columns.index(("toy-8", "wolleb_auroc"))
    expected = np.mean([M.wolleb_protocol(toy_scores(toy_cases(8, 0), 0.25, f"bad/toy-8/{seed}/0.25"))["auroc"] for seed in (0, 1)])
    assert row[column].startswith(f"{expected:.3f}")
    assert main(["leaderboard", "--tracking-uri", uri, "--format", "md", "--metrics", *metrics]) == 0


def test_every_column_has_a_definition():
    assert set(COLUMNS) <= set(DEFINITIONS)


# -- power, seed spread, cross-validation, the terminal table --------------------------------------------


def test_signed_rank_null_distribution_gives_scipys_exact_p():
    """The dynamic programme's null distribution of W+ reproduces scipy's exact two-sided p; its critical values
    are the last that reject; ceil(log2(40 m)) pairs are the fewest with which any test at 0.05/m can reject."""
    from scipy.stats import wilcoxon

    rng = np.random.default_rng(0)
    for n in (6, 9, 14):
        null = S.signed_rank_null(n)
        assert null.size == n * (n + 1) // 2 + 1 and null.sum() == pytest.approx(1.0)
        for _ in range(5):
            x = np.arange(1, n + 1) * rng.choice([-1.0, 1.0], n)
            w_plus = x[x > 0].sum()
            w = min(w_plus, n * (n + 1) / 2 - w_plus)
            assert min(1.0, 2 * null[: int(w) + 1].sum()) == pytest.approx(wilcoxon(x, method="exact").pvalue)
        for alpha in (0.05, 0.05 / 7):
            c = S.signed_rank_critical(n, alpha)
            cdf = np.cumsum(null)
            assert (c < 0 or 2 * cdf[c] < alpha) and 2 * cdf[c + 1] >= alpha
    for m in (1, 2, 7, 20):
        k = S.min_pairs(m)
        assert k == math.ceil(math.log2(40 * m))
        assert S.signed_rank_critical(k - 1, 0.05 / m) == -1 and S.signed_rank_critical(k, 0.05 / m) == 0


def test_minimum_detectable_difference_by_simulation():
    """Deterministic, proportional to s, NaN below ceil(log2(40 m)) pairs; at n = 30 within 10 % of the normal
    approximation (z_{1-a/2} + z_0.8) s / sqrt(0.955 n); and scipy's exact test, on fresh samples of N(d, 1) with d
    the result, rejects in about 80 % of them."""
    from scipy.stats import norm, wilcoxon

    for m in (1, 7):
        simulated = S.minimum_detectable_difference(30, 1.0, m)
        assert simulated == S.minimum_detectable_difference(30, 1.0, m)
        assert S.minimum_detectable_difference(30, 2.5, m) == pytest.approx(2.5 * simulated)
        normal = (norm.ppf(1 - 0.05 / m / 2) + norm.ppf(0.8)) / math.sqrt(0.955 * 30)
        assert S.normal_detectable_difference(30, 1.0, m) == pytest.approx(normal, rel=1e-3)
        assert simulated == pytest.approx(normal, rel=0.10)
    assert math.isnan(S.minimum_detectable_difference(8, 1.0, 7))  # 9 pairs needed at 0.05/7
    assert S.minimum_detectable_difference(9, 1.0, 7) > 0
    d = S.minimum_detectable_difference(12, 1.0, 1)
    rng = np.random.default_rng(1)
    rejected = np.mean([wilcoxon(rng.normal(d, 1.0, 12), method="exact").pvalue < 0.05 for _ in range(600)])
    assert rejected == pytest.approx(0.8, abs=0.05)


def test_power_line_under_each_dataset(store, board):
    """toy-8: 8 lesioned volumes, 2 rows tested: the median over rows of the simulated minimum detectable difference
    of each row's per-volume AP differences to the best; toy-4 (3 lesioned): no test possible."""
    per_volume = board.per_volume
    vals = {label: per_volume[(per_volume.label == label) & (per_volume.dataset == "toy-8") & (per_volume.metric == "auprc")]
            .groupby("volume")["value"].mean().to_numpy() for label in ("good_map", "bad", "middle")}
    mdd = [S.minimum_detectable_difference(8, np.std(vals[label] - vals["good_map"], ddof=1), 2) for label in ("bad", "middle")]
    md = render_markdown(board)
    line = next(line for line in md.splitlines() if line.startswith("- toy-8: "))
    assert line.endswith(f"Power: 8 lesioned test volumes; minimum detectable difference (80 % power, 2 rows against "
                         f"the best): AP per volume {np.median(mdd):.3f}")
    line = next(line for line in md.splitlines() if line.startswith("- toy-4: "))
    assert "Power: 3 lesioned test volumes" in line
    assert "AP per volume: no test possible (an exact signed-rank test at 0.05/2 needs 7 pairs)" in line
    assert "Power: the smallest mean paired difference d" in md
    assert not board.seed_spread and "≈" not in md  # 2 seeds: no seed-spread mark


def test_within_seed_spread_mark(tmp_path):
    """With 3 seeds, a row whose gap to the best is below sqrt(sd_row^2 + sd_best^2) is marked ≈, others not."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "lesionbench", tmp_path / "artifacts")
    for label, qualities in (("best", (0.9, 0.5, 0.7)), ("close", (0.6, 0.75, 0.55)), ("far", (0.1, 0.12, 0.14)),
                             ("two-seeds", (0.3, 0.35))):
        for seed, quality in enumerate(qualities):
            log_run(tracker, label, "toy-8", seed, quality)
    lb = build_leaderboard(load_runs(uri), metrics=("auprc", "dice_best"), n_resamples=0)
    expected = set()
    for col, best in lb.best.items():
        assert best == "best" and lb.counts.at[best, col] == 3
        for label in ("close", "far"):
            if abs(lb.means.at[label, col] - lb.means.at[best, col]) < math.hypot(lb.stds.at[label, col], lb.stds.at[best, col]):
                expected.add((label, col))
    assert lb.seed_spread == expected
    assert ("close", ("toy-8", "auprc")) in expected and not any(label == "far" for label, _ in expected)
    md = render_markdown(lb)
    rows = {line.split(" | ")[0].removeprefix("| "): line.split(" | ") for line in md.splitlines() if line.startswith("| ")}
    assert "≈" in rows["close"][1] and "≈" not in rows["far"][1] and "≈" not in rows["two-seeds"][1]
    assert "≈: within seed spread: with ≥ 3 seeds" in md
    assert r"$^\approx$" in render_latex(lb)


def log_cross_validation(tracker, label, dataset, seed, quality, folds=5, n_cases=10, n_healthy=2, skip=(), cv="cv1"):
    return [log_run(tracker, label, dataset, seed, quality, n_cases, n_healthy, fold=k, folds=folds, cv=cv)
            for k in range(folds) if k not in skip]


def test_cross_validation_folds_pool_into_one_row(tmp_path):
    """5 folds over 10 cases: one row of n = 10 paired volumes, pooled metrics recomputed from all folds' maps (each
    volume at its own fold's threshold), per-volume values concatenated, fit time the mean over folds; a seed missing
    a fold is left out with a note."""
    from scipy.stats import wilcoxon
    from sklearn.metrics import f1_score

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "lesionbench", tmp_path / "artifacts")
    logged = {label: log_cross_validation(tracker, label, "toy-cv", 0, q) for label, q in (("good_map", 1.0), ("bad", 0.25))}
    log_cross_validation(tracker, "good_map", "toy-cv", 1, 1.0, skip=(3,))
    metrics = ("auprc", "dice_val", "dice_fpr5", "auprc_vol_mean", "wolleb_dice", "fit_s")
    lb = build_leaderboard(load_runs(uri), metrics=metrics, n_resamples=50)
    for label, folds in logged.items():
        volumes = [v for _, scored, _ in folds for v in scored]
        thresholds = [ev.thresholds for _, scored, ev in folds for _ in scored]
        assert len({round(t["dice_val"], 6) for t in thresholds}) > 1  # the folds' thresholds differ
        scores = np.concatenate([v.map[v.brain] for v in volumes])
        truth = np.concatenate([v.lesion[v.brain] for v in volumes])
        assert lb.means.at[label, ("toy-cv", "auprc")] == pytest.approx(average_precision_score(truth, scores), abs=1e-12)
        for key in ("dice_val", "dice_fpr5"):
            predicted = np.concatenate([v.map[v.brain] >= t[key] for v, t in zip(volumes, thresholds)])
            assert lb.means.at[label, ("toy-cv", key)] == pytest.approx(f1_score(truth, predicted), abs=1e-12)
        ap = [average_precision_score(v.lesion[v.brain], v.map[v.brain]) for v in volumes if v.lesion.any()]
        assert len(ap) == 8 and lb.means.at[label, ("toy-cv", "auprc_vol_mean")] == pytest.approx(np.mean(ap), abs=1e-12)
        assert lb.means.at[label, ("toy-cv", "wolleb_dice")] == pytest.approx(M.wolleb_protocol(volumes)["dice_otsu"])
        assert lb.means.at[label, ("toy-cv", "fit_s")] == pytest.approx(1.0 + 2.0)  # folds 0..4 logged 1 + fold
        assert lb.counts.at[label, ("toy-cv", "auprc")] == 1  # seed 1 of good_map lacks fold 3: left out
    per_volume = lb.per_volume[(lb.per_volume.metric == "auprc")]
    pairs = {label: per_volume[per_volume.label == label].set_index("volume")["value"] for label in logged}
    assert len(pairs["bad"]) == 8 and set(pairs["bad"].index) == set(pairs["good_map"].index)
    p = wilcoxon(pairs["bad"] - pairs["good_map"].loc[pairs["bad"].index]).pvalue
    assert lb.p_holm.at["bad", ("toy-cv", "auprc_vol_mean")] == pytest.approx(p)
    assert lb.tests[("toy-cv", "auprc")] == "bootstrap" and not math.isnan(lb.p_holm.at["bad", ("toy-cv", "auprc")])
    md = render_markdown(lb)
    assert "- toy-cv: n = 10 test volumes (8 with lesions), the test volumes of 5-fold cross-validation pooled" in md
    assert "good_map (seed 1) on toy-cv: fold(s) 3 of 5 have no finished run, so this seed is left out" in md
    assert "Cross-validation (toy-cv): each row pools the test volumes of its K folds" in md
    assert "fit s and ms/slice are the mean over the folds" in md
    assert "Mean ± std over seeds (0);" in md and "Fewer seeds" not in md  # the left-out seed is no seed of the table
    csv = pd.read_csv(__import__("io").StringIO(render_csv(lb)), dtype={"seed": str})
    assert len(csv[(csv.volume == "pooled") & (csv.metric == "auprc")]) == 2  # one pooled value per (label, seed)


def test_fold_runs_and_single_split_runs_are_not_mixed(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "mixed", tmp_path / "artifacts")
    log_cross_validation(tracker, "a", "toy-cv", 0, 0.5, folds=2, n_cases=4, n_healthy=0)
    log_run(tracker, "b", "toy-cv", 0, 0.5, n_test=4)
    with pytest.raises(LeaderboardError, match="toy-cv: 2 cross-validation fold runs and 1 single-split runs"):
        build_leaderboard(load_runs(uri, "mixed"), metrics=("auprc",), n_resamples=0)
    tracker = Tracker(uri, "two-cv", tmp_path / "artifacts-cv")
    log_cross_validation(tracker, "a", "toy-cv", 0, 0.5, folds=2, n_cases=4, n_healthy=0, cv="cv1")
    log_cross_validation(tracker, "b", "toy-cv", 0, 0.5, folds=2, n_cases=4, n_healthy=0, cv="cv2")
    with pytest.raises(LeaderboardError, match="toy-cv: runs differ in cv_hash"):
        build_leaderboard(load_runs(uri, "two-cv"), metrics=("auprc",), n_resamples=0)


MAIN_JOB_LABELS = ("intensity", "vae", "ddpm", "wolleb", "saliency", "wargnier", "wolleb-wargnier",
                   "wolleb-wargnier[variant=guidance]")


@pytest.fixture(scope="module")
def main_job_store(tmp_path_factory):
    """The main job's shape: 8 rows (one a long variant label), 2 datasets, 1 seed."""
    root = tmp_path_factory.mktemp("main-job")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    tracker = Tracker(uri, "lesionbench", root / "artifacts")
    for i, label in enumerate(MAIN_JOB_LABELS):
        for dataset in ("synth-ms", "synth-tumor"):
            log_run(tracker, label, dataset, 0, 0.2 + 0.1 * i, n_test=8, n_healthy=2)
    return uri


def test_the_default_terminal_table_fits_120_columns(main_job_store):
    """rich_table's default (and `leaderboard --format table`, and the end of `run`) fits a 120-column terminal:
    no line longer, nothing cut to "…", every label and value whole; --wide is the full table."""
    from rich.console import Console

    runs = load_runs(main_job_store)
    console = Console(width=120, record=True, file=open(os.devnull, "w"))
    console.print(rich_table(runs, n_resamples=50))
    text = console.export_text()
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 120 and "…" not in text
    lb = build_leaderboard(runs, n_resamples=50)
    for dataset in ("synth-ms", "synth-tumor"):
        assert data_line(lb, dataset)[:40] in text
    rows = [line for line in lines if line.startswith("│")]
    for label in MAIN_JOB_LABELS:
        assert sum(line.split("│")[1].strip() == row_name(lb, label) for line in rows) == 2, label  # whole, per dataset
        for col in lb.columns:
            assert cell(lb, label, col).mean in text
    wide = Console(width=1000, record=True, file=open(os.devnull, "w"))
    wide.print(rich_table(runs, n_resamples=50, wide=True))
    wide_text = wide.export_text()
    assert max(len(line) for line in wide_text.splitlines()) > 120 and "[0." in wide_text  # intervals shown


def test_cli_table_fits_and_wide_is_full(main_job_store, capsys):
    assert main(["leaderboard", "--tracking-uri", main_job_store, "--bootstrap", "20"]) == 0
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= 120 and "AP per" in out
    assert main(["leaderboard", "--tracking-uri", main_job_store, "--bootstrap", "20", "--wide"]) == 0
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) > 120
