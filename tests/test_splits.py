"""Stratified splits and k-fold cross-validation (design §4): proportions per stratum, exact sizes, the synthetic
profiles' power, every case tested once, and fold cells tracked as one cross-validation."""

import collections
import json

import pytest
from mlflow.tracking import MlflowClient

from lesionbench.config import ConfigError, resolve_data_config
from lesionbench.datasets.synthetic import SynthMS, SynthTumor
from lesionbench.pipeline import lesion_loads
from lesionbench.planning import RunRequest
from lesionbench.preparation import data_for_dataset, dataset_splits, make_adapter
from lesionbench.runner import run_grid
from lesionbench.splits import make_folds, make_split, strata


def _loads(n_healthy: int, n_lesioned: int) -> dict:
    loads = {f"h{i:02d}": 0 for i in range(n_healthy)}
    loads.update({f"l{i:02d}": 10 * (i + 1) for i in range(n_lesioned)})  # distinct loads: half small, half large
    return loads


def _per_part(split: dict, loads: dict) -> collections.Counter:
    by_case = strata(loads)
    return collections.Counter((part, by_case[case]) for case, part in split.items())


def test_every_part_gets_each_stratum_in_proportion():
    loads = _loads(12, 28)  # the old synth-tumor seed-0 split put 4 of 28 lesioned subjects in a test split of 10
    for seed in range(20):
        split = make_split(loads, seed, 0.15, 0.25)
        sizes = collections.Counter(split.values())
        assert sizes == {"test": 10, "val": 6, "train": 24}  # the same sizes as the unstratified split
        counts = _per_part(split, loads)
        for part, n in sizes.items():
            for stratum, members in (("healthy", 12), ("small", 14), ("large", 14)):
                assert abs(counts[part, stratum] - members * n / 40) < 1, (seed, part, stratum)
        assert counts["test", "small"] + counts["test", "large"] == 7
    assert make_split(loads, 3, 0.15, 0.25) == make_split(dict(reversed(loads.items())), 3, 0.15, 0.25)
    assert make_split(loads, 3, 0.15, 0.25) != make_split(loads, 4, 0.15, 0.25)


def test_cases_without_a_summary_are_split_at_the_same_sizes():
    split = make_split([f"c{i}" for i in range(40)], 0, 0.15, 0.25)
    assert collections.Counter(split.values()) == {"test": 10, "val": 6, "train": 24}


@pytest.mark.parametrize("profile, lesioned, healthy", [("quick", 24, 8), ("demo", 10, 4)])
@pytest.mark.parametrize("cls", [SynthTumor, SynthMS])
def test_the_synthetic_profiles_have_powered_test_splits(tmp_path, cls, profile, lesioned, healthy):
    data = data_for_dataset(cls, resolve_data_config(profile, {}, []), set())
    adapter = make_adapter(cls, None, data)
    [(split, fold)], loads = dataset_splits(adapter, data, 0, None, 0, tmp_path)
    assert fold is None
    test = [c for c, p in split.items() if p == "test"]
    assert sum(loads[c] > 0 for c in test) >= lesioned and sum(loads[c] == 0 for c in test) >= healthy
    assert sum(p == "train" for p in split.values()) >= 12
    assert all(loads[c] == int(adapter.load(c).lesion.sum()) for c in list(loads)[:3])  # the summary is the mask's


def test_lesion_summaries_are_cached_by_case(tmp_path):
    adapter = SynthMS(subjects=6)
    first = lesion_loads(adapter, adapter.cases(), tmp_path)
    assert len(list((tmp_path / "summaries").glob("*.json"))) == 6
    (next((tmp_path / "summaries").glob("*.json"))).write_text("{not json")  # a damaged summary is computed again
    assert lesion_loads(adapter, adapter.cases(), tmp_path) == first
    assert lesion_loads(SynthMS(subjects=6, seed=1), adapter.cases(), tmp_path) != first  # other data, other key


def test_folds_test_every_case_once_and_validate_inside_training():
    loads = _loads(3, 7)
    folds = make_folds(loads, 5, 0, 0.15)
    tested = collections.Counter(c for split in folds for c, p in split.items() if p == "test")
    assert tested == dict.fromkeys(loads, 1)
    by_case = strata(loads)
    for split in folds:
        assert set(split) == set(loads)
        assert collections.Counter(split.values()) == {"test": 2, "val": 2, "train": 6}
        # 3 healthy, 4 small, 3 large cases: a test fold holds at most one healthy case and one of each load
        assert max(collections.Counter(by_case[c] for c, p in split.items() if p == "test").values()) == 1
    assert make_folds(loads, 5, 1, 0.15) != folds
    with pytest.raises(ConfigError, match="at least 2 folds"):
        make_folds(loads, 1, 0, 0.15)
    with pytest.raises(ConfigError, match="only 10 cases"):
        make_folds(loads, 11, 0, 0.15)


def test_a_split_file_and_folds_exclude_each_other(tmp_path):
    adapter = SynthMS(subjects=6)
    path = tmp_path / "split.json"
    path.write_text(json.dumps({c: p for c, p in zip(adapter.cases(), ["train"] * 4 + ["val", "test"])}))
    with pytest.raises(ConfigError, match="exclude each other"):
        dataset_splits(adapter, resolve_data_config("smoke", {}, []), 0, str(path), 3, tmp_path)


def test_cross_validation_runs_one_tracked_cell_per_fold(tmp_path, toy_plugins):
    request = RunRequest(methods=["spy"], datasets=["toy"], profile="smoke", workdir=tmp_path, device="cpu", folds=3,
                         set_options=["data.size=16", "data.subjects=9", "data.val_fraction=0.15"])
    results = run_grid(request, toy_plugins)
    assert [r.status for r in results] == ["finished"] * 3
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("lesionbench").experiment_id])
    assert sorted(r.data.tags["fold"] for r in runs) == ["0", "1", "2"]
    assert {r.data.tags["folds"] for r in runs} == {"3"}
    assert len({r.data.params["cv_hash"] for r in runs}) == 1
    assert len({r.data.params["split_hash"] for r in runs}) == 3
    assert len({r.data.params["data.preprocessing_hash"] for r in runs}) == 1  # same settings, each fold's crop box
    assert all(r.data.metrics["time/test_predict_s"] >= 0 for r in runs)
    splits = [json.loads(p.read_text()) for p in (tmp_path / "splits").glob("toy-*.json") if ".strata" not in p.name]
    tested = collections.Counter(c for s in splits for c, p in s.items() if p == "test")
    assert tested == {f"toy-{i:02d}": 1 for i in range(9)}
    # a re-run finds every fold's cell finished
    assert [r.status for r in run_grid(request, toy_plugins)] == ["skipped"] * 3
