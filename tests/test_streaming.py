"""Streaming train/val sets (design §3, issue 20 item 1): the view over the prepared-case cache shows images,
brain masks and image labels only, refuses to be pickled, reproduces the stored values and survives a
truncated cache file."""

import copy
import gc
import pickle
import types

import numpy as np
import pytest
import torch

from conftest import ToyAdapter
from lesionbench import streaming
from lesionbench.config import ConfigError, DataConfig
from lesionbench.method import SliceSet, Supervision
from lesionbench.pipeline import PreparedDataset
from lesionbench.preprocessing import Geometry, prepare_case
from lesionbench.splits import make_split
from lesionbench.streaming import StreamedArray, StreamError


def _dataset(tmp_path, **data):
    adapter = ToyAdapter(subjects=10)
    split = make_split(adapter.cases(), 0, 0.2, 0.3)
    cfg = DataConfig(size=16, min_lesion_voxels=5, **{"cache_dtype": "float32", **data})  # exact unless asked
    return PreparedDataset(adapter, cfg, split, tmp_path / "cache"), split


def _reference(ds, part, supervision):
    """The tensor-backed set, prepared straight from the adapter (not through the store)."""
    images, labels, brains = [], [], []
    min_brain = ds.data.min_brain_fraction * ds.data.size**2
    for case in sorted(c for c, p in ds.split.items() if p == part):
        prepared = prepare_case(ds.adapter.load(case), ds.geometry, ds.data)
        keep = (prepared.labels >= 0) & (prepared.brain.sum(axis=(1, 2)) >= min_brain)
        if supervision is Supervision.NONE:
            keep &= prepared.labels == 0
        images.append(prepared.image[:, keep].transpose(1, 0, 2, 3))
        labels.append(prepared.labels[keep].astype(np.int64))
        brains.append(prepared.brain[keep])
    return SliceSet(torch.from_numpy(np.concatenate(images).copy()), torch.from_numpy(np.concatenate(labels)),
                    torch.from_numpy(np.concatenate(brains)), ds.modalities)


def _reachable(root):
    """Every object reachable from ``root`` through instance state, containers and array bases (not through
    classes, functions or modules: those reach the whole program)."""
    seen, stack, out = set(), [root], []
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType)):
            continue
        seen.add(id(obj))
        out.append(obj)
        if isinstance(obj, dict):
            stack += [*obj.keys(), *obj.values()]
        elif isinstance(obj, (list, tuple, set, frozenset)):
            stack += list(obj)
        elif isinstance(obj, np.ndarray):
            if obj.base is not None:
                stack.append(obj.base)
        elif isinstance(obj, torch.Tensor):
            continue
        else:
            if hasattr(obj, "__dict__"):
                stack.append(vars(obj))
            for cls in type(obj).__mro__:
                for name in getattr(cls, "__slots__", ()):
                    if hasattr(obj, name) and name != "__weakref__":
                        stack.append(getattr(obj, name))
            stack += [o for o in gc.get_referents(obj) if not isinstance(o, type)]
    return out


def test_the_view_reaches_images_brain_masks_and_labels_only(tmp_path):
    ds, _ = _dataset(tmp_path)
    for train in (ds.slice_set("train", Supervision.IMAGE), ds.slice_set("train", Supervision.IMAGE).healthy()):
        assert isinstance(train.images, StreamedArray) and isinstance(train.brain, StreamedArray)
        objects = _reachable(train)
        kinds = {type(o).__name__ for o in objects}
        assert kinds <= {"SliceSet", "StreamedArray", "_Handle", "Tensor", "ndarray", "tuple", "str", "int", "Size", "dict"}, kinds
        strings = {o for o in objects if isinstance(o, str)}
        assert strings <= {*ds.modalities, "image", "brain", "images", "labels", "modalities"}, strings  # no path, case id or adapter name
        arrays = [o for o in objects if isinstance(o, np.ndarray)]
        assert all(a.dtype == np.int32 for a in arrays)  # row -> source and slice indices, nothing else
        tensors = [o for o in objects if isinstance(o, torch.Tensor)]
        assert len(tensors) == 1 and tensors[0] is train.labels and train.labels.dtype == torch.int64
        assert not any(isinstance(o, (PreparedDataset, ToyAdapter)) for o in objects)


def test_streamed_sets_refuse_to_be_pickled_or_copied(tmp_path):
    ds, _ = _dataset(tmp_path)
    train = ds.slice_set("train", Supervision.IMAGE)
    for obj in (train, train.images, train.brain, train.healthy()):
        with pytest.raises(TypeError, match="streamed SliceSet cannot be pickled"):
            pickle.dumps(obj)
    with pytest.raises(TypeError, match="cannot be pickled or copied"):
        copy.deepcopy(train)


@pytest.mark.parametrize("supervision", [Supervision.IMAGE, Supervision.NONE])
def test_a_float32_store_reproduces_the_tensor_backed_set_exactly(tmp_path, supervision):
    ds, _ = _dataset(tmp_path)
    for part in ("train", "val"):
        view, ref = ds.slice_set(part, supervision), _reference(ds, part, supervision)
        n = len(ref)
        assert len(view) == n > 0 and view.images.shape == ref.images.shape and view.brain.shape == ref.brain.shape
        assert view.images.dtype == torch.float32 and view.brain.dtype == torch.bool
        assert torch.equal(view.labels, ref.labels) and view.labels.dtype == torch.int64
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))
        for index in (slice(None), perm, perm[:5].tolist(), slice(1, n, 3), 3, -1, torch.tensor(2), ref.labels == 0,
                      perm.numpy()[:4]):
            assert torch.equal(view.images[index], ref.images[index]), index
            assert torch.equal(view.brain[index], ref.brain[index]), index
        assert torch.equal(view.images[view.labels == 0, 1], ref.images[ref.labels == 0, 1])
        assert view.images[torch.zeros(0, dtype=torch.long)].shape == (0, *ref.images.shape[1:])
        with pytest.raises(IndexError):
            view.images[n]


def test_a_float16_store_is_within_float16_rounding_and_has_its_own_cache_key(tmp_path):
    assert DataConfig().cache_dtype == "float16"  # the default (issue 20: 27.6 MB per BraTS case)
    ds32, _ = _dataset(tmp_path)
    ds16, _ = _dataset(tmp_path, cache_dtype="float16")
    assert ds16.preprocessing["cache_dtype"] == "float16" and "cache_dtype" not in ds32.preprocessing
    a, b = ds32.slice_set("train", Supervision.IMAGE), ds16.slice_set("train", Supervision.IMAGE)
    exact, half = a.images[:], b.images[:]
    assert torch.equal(half, exact.half().float())  # round to nearest float16, nothing else
    assert (half - exact).abs().max() <= 2**-11  # values in [0, 1]
    assert torch.equal(a.brain[:], b.brain[:])
    files = sorted(p.name for p in (tmp_path / "cache").glob("toy-*.case"))
    assert len(files) == 2 * len({c for c, p in ds32.split.items() if p == "train"})  # one file per case and dtype
    case = next(c for c, p in ds32.split.items() if p == "train")
    assert ds16._case_path(case).stat().st_size < ds32._case_path(case).stat().st_size
    np.testing.assert_array_equal(ds16.case(case).image, ds32.case(case).image.astype(np.float16).astype(np.float32))
    with pytest.raises(ConfigError, match="cache_dtype"):
        DataConfig(cache_dtype="int8")


def test_healthy_is_a_view_sharing_the_mapped_files(tmp_path):
    ds, _ = _dataset(tmp_path)
    train = ds.slice_set("train", Supervision.IMAGE)
    healthy = train.healthy()
    assert isinstance(healthy.images, StreamedArray) and healthy.images._handle is train.images._handle
    keep = train.labels == 0
    assert len(healthy) == int(keep.sum()) < len(train)
    assert torch.equal(healthy.images[:], train.images[keep]) and torch.equal(healthy.brain[:], train.brain[keep])
    assert (healthy.labels == 0).all()
    # the tensor-backed constructor still works, and its healthy() is plain tensors
    plain = SliceSet(train.images[:], train.labels, train.brain[:], train.modalities)
    assert not isinstance(plain.images, StreamedArray) and torch.equal(plain.healthy().images, healthy.images[:])


def test_a_truncated_mapped_file_is_set_aside_and_prepared_again(tmp_path):
    ds, split = _dataset(tmp_path)
    expected = ds.slice_set("train", Supervision.IMAGE).images[:]
    case = next(c for c, p in split.items() if p == "train")
    path = ds._case_path(case)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # arrays cut: the header is intact
    with pytest.warns(UserWarning, match=f"cache file {path} is unreadable .*set aside as {path.name}.corrupt, made again"):
        again = PreparedDataset(ds.adapter, ds.data, split, tmp_path / "cache").slice_set("train", Supervision.IMAGE)
    assert path.with_name(path.name + ".corrupt").exists()
    assert torch.equal(again.images[:], expected)
    # a file truncated while a view streams from it: a clear error, not a crash
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(StreamError, match="changed size"):
        again.images[:]


def test_views_release_their_files_when_dropped(tmp_path):
    ds, _ = _dataset(tmp_path)
    before = len(streaming._SOURCES)
    train = ds.slice_set("train", Supervision.IMAGE)
    healthy = train.healthy()
    assert len(streaming._SOURCES) > before
    del train
    gc.collect()
    assert len(streaming._SOURCES) > before  # healthy() still streams
    del healthy
    gc.collect()
    assert len(streaming._SOURCES) == before


def test_the_crop_box_fitted_per_volume_equals_the_joint_fit():
    rng = np.random.default_rng(0)
    brains = []
    for _ in range(4):
        b = np.zeros((3, 50, 60), bool)
        y, x = rng.integers(5, 30), rng.integers(5, 30)
        b[1, y : y + rng.integers(5, 20), x : x + rng.integers(5, 25)] = True
        brains.append(b)
    joint = Geometry.fit(brains, size=16)
    union = np.zeros((1, 50, 60), bool)
    for b in brains:
        union |= b.any(axis=0)
    ys, xs = np.nonzero(union[0])
    side = max(np.ptp(ys) + 1, np.ptp(xs) + 1) + 4
    assert joint.box[1] - joint.box[0] == max(side, 16)
    assert joint == Geometry.fit_boxes([b.shape[1:] for b in brains], [Geometry.brain_box(b) for b in brains], 16)
