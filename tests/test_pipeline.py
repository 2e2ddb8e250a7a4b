"""Preprocessing, splits, caching and the weak-supervision guarantees of the data pipeline."""

import json
import pickle

import numpy as np
import pytest
import torch

from conftest import ToyAdapter
from lesionbench.config import ConfigError, DataConfig
from lesionbench.streaming import StreamedArray
from lesionbench.method import SliceSet, Supervision
from lesionbench.pipeline import PreparedDataset
from lesionbench.preprocessing import AMBIGUOUS, Geometry, normalise, slice_labels
from lesionbench.splits import make_split, read_split, split_hash
from lesionbench.volume import DataError, Volume


def test_normalise_clips_and_scales_inside_the_brain_only():
    rng = np.random.default_rng(0)
    image = rng.normal(100, 10, (1, 4, 16, 16)).astype(np.float32)
    brain = np.zeros((4, 16, 16), bool)
    brain[:, 4:12, 4:12] = True
    image[0, ~brain] = -5000  # a z-scored-style background must not affect the scaling
    out = normalise(image, brain, 1.0, 99.0)
    lo, hi = np.percentile(image[0][brain], [1, 99])
    assert np.all(out[0, ~brain] == 0)
    assert out[0][brain].min() == 0.0 and out[0][brain].max() == 1.0
    v = image[0][brain][5]
    assert out[0][brain][5] == pytest.approx((np.clip(v, lo, hi) - lo) / (hi - lo), abs=1e-6)


def test_geometry_is_square_around_the_union_and_never_upsamples():
    a = np.zeros((3, 100, 120), bool)
    b = np.zeros((3, 100, 120), bool)
    a[:, 10:50, 20:60] = True
    b[:, 30:80, 40:70] = True
    g = Geometry.fit([a, b], size=32, margin=2)
    y0, y1, x0, x1 = g.box
    assert y1 - y0 == x1 - x0 == 70 + 4  # union spans rows 10..79 (70) and columns 20..69 (50)
    assert y0 <= 10 and y1 >= 80 and x0 <= 20 and x1 >= 70
    assert g.scale == pytest.approx(32 / 74)
    small = Geometry.fit([a[:, :40, :40]], size=64)
    assert small.box[1] - small.box[0] == 64  # a small brain is padded, not magnified


def test_mask_downsampling_keeps_area_fraction_at_least_half():
    g = Geometry((8, 8), (0, 8, 0, 8), 4)
    mask = np.zeros((1, 8, 8), bool)
    mask[0, 0:2, 0:2] = True  # a full 2x2 block -> one output pixel
    mask[0, 4, 4] = True  # a quarter of a block -> dropped
    mask[0, 6:8, 6] = True  # half a block -> kept
    out = g.resample_mask(mask)
    assert out.shape == (1, 4, 4)
    assert out[0, 0, 0] and not out[0, 2, 2] and out[0, 3, 3]
    assert out.sum() == 2


def test_geometry_refuses_a_case_on_another_grid():
    g = Geometry((8, 8), (0, 8, 0, 8), 4)
    with pytest.raises(DataError, match="differs from the dataset's grid"):
        g.resample_mask(np.zeros((1, 9, 8), bool))


def test_slice_labels_mark_ambiguous_slices():
    lesion = np.zeros((3, 8, 8), bool)
    brain = np.ones((3, 8, 8), bool)
    lesion[1, :2, :2] = True  # 4 voxels: ambiguous at min 5
    lesion[2, :3, :3] = True  # 9 voxels: lesion
    assert slice_labels(lesion, brain, 5).tolist() == [0, AMBIGUOUS, 1]


def test_split_is_subject_level_deterministic_and_seeded():
    cases = [f"c{i}" for i in range(40)]
    s0 = make_split(cases, 0, 0.15, 0.25)
    assert s0 == make_split(list(reversed(cases)), 0, 0.15, 0.25)
    assert s0 != make_split(cases, 1, 0.15, 0.25)
    parts = list(s0.values())
    assert parts.count("test") == 10 and parts.count("val") == 6 and parts.count("train") == 24


def test_split_file_is_used_as_it_is(tmp_path):
    path = tmp_path / "split.json"
    path.write_text(json.dumps({"a": "train", "b": "test"}))
    assert read_split(path, ["a", "b", "c"]) == {"a": "train", "b": "test"}
    path.write_text(json.dumps({"a": "train", "z": "test"}))
    with pytest.raises(ConfigError, match="does not have.*'z'"):
        read_split(path, ["a", "b"])
    path.write_text(json.dumps({"a": "train", "b": "holdout"}))
    with pytest.raises(ConfigError, match="train/val/test"):
        read_split(path, ["a", "b"])


def _toy_dataset(tmp_path, **data):
    adapter = ToyAdapter(subjects=10)
    split = make_split(adapter.cases(), 0, 0.2, 0.3)
    cfg = DataConfig(size=16, min_lesion_voxels=5, **data)
    return PreparedDataset(adapter, cfg, split, tmp_path / "cache"), split


def test_train_set_has_no_mask_adapter_or_path_even_pickled(tmp_path):
    ToyAdapter.events.clear()
    ds, split = _toy_dataset(tmp_path)
    train = ds.slice_set("train", Supervision.IMAGE)
    assert isinstance(train, SliceSet) and isinstance(train.images, StreamedArray)
    with pytest.raises(TypeError, match="streamed SliceSet cannot be pickled"):
        pickle.dumps(train)  # it streams from this process's cache (tests/test_streaming.py walks its objects)
    # what a method can copy out of it (every slice, as tensors) holds no mask, adapter or path either
    blob = pickle.dumps(SliceSet(train.images[:], train.labels, train.brain[:], train.modalities))
    for needle in (b"lesion", b"ToyAdapter", b"cache", str(tmp_path).encode(), b".npz", b".case"):
        assert needle not in blob.replace(b"lesionbench", b""), needle
    restored = pickle.loads(blob)
    assert {f for f in vars(restored)} == {"images", "labels", "brain", "modalities"}
    assert set(train.labels.tolist()) == {0, 1}
    with pytest.raises(ValueError, match="not 'test'"):
        ds.slice_set("test", Supervision.IMAGE)


def test_unsupervised_methods_get_healthy_slices_and_ambiguous_slices_are_left_out(tmp_path):
    ds, split = _toy_dataset(tmp_path)
    healthy = ds.slice_set("train", Supervision.NONE)
    assert (healthy.labels == 0).all() and len(healthy) > 0
    labelled = ds.slice_set("train", Supervision.IMAGE)
    n_ambiguous = sum(int((ds.case(c).labels == AMBIGUOUS).sum()) for c, p in split.items() if p == "train")
    n_total = sum(ds.case(c).labels.size for c, p in split.items() if p == "train")
    assert len(labelled) == n_total - n_ambiguous
    # the lesion slices' images really are the lesioned ones: flair is brighter there
    assert labelled.images[labelled.labels == 1, 1].amax() > labelled.images[labelled.labels == 0, 1].amax() - 1e-6


def test_test_split_is_not_loaded_until_asked_and_cache_is_reused(tmp_path):
    ToyAdapter.events.clear()
    ds, split = _toy_dataset(tmp_path)
    ds.slice_set("train", Supervision.IMAGE)
    ds.slice_set("val", Supervision.IMAGE)
    ds.val_cases()
    test_cases = {c for c, p in split.items() if p == "test"}
    assert not test_cases & {case for _, case in ToyAdapter.events}
    ds.test_cases()
    assert test_cases <= {case for _, case in ToyAdapter.events}
    # a second preparation reads the cache only
    ToyAdapter.events.clear()
    again, _ = _toy_dataset(tmp_path)
    for c in split:
        np.testing.assert_array_equal(again.case(c).image, ds.case(c).image)
    assert ToyAdapter.events == [] and again.cache_hits == len(split)
    # a different preprocessing setting is a different cache entry
    other, _ = _toy_dataset(tmp_path, clip_high=95.0)
    other.case(next(iter(split)))
    assert ToyAdapter.events


def test_missing_modality_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match=r"toy-\d+: modality \['t1'\] requested but the data has only \('t2', 'flair'\)"):
        _toy_dataset(tmp_path, modalities=("t1", "flair"))


def test_volume_rejects_nan_and_mismatched_shapes():
    brain = np.ones((2, 4, 4), bool)
    img = np.ones((1, 2, 4, 4), np.float32)
    img[0, 0, 0, 0] = np.nan
    with pytest.raises(DataError, match="case x: NaN/Inf values in modalities \\['flair'\\]"):
        Volume("x", img, None, brain, ("flair",))
    with pytest.raises(DataError, match="case y: lesion mask shape"):
        Volume("y", np.ones((1, 2, 4, 4), np.float32), np.zeros((2, 4, 5), bool), brain, ("flair",))
    with pytest.raises(DataError, match="case z: empty brain mask"):
        Volume("z", np.ones((1, 2, 4, 4), np.float32), None, ~brain, ("flair",))
