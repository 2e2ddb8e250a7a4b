"""Reading NIfTI collections: layouts, reorientation, clear errors on bad files, the inverse transform."""

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from lesionbench.cli import main
from lesionbench.config import DataConfig
from lesionbench.datasets.layout import BraTS, OpenMS, nifti_dataset
from lesionbench.nifti import AXES, read_image, write_like
from lesionbench.pipeline import PreparedDataset
from lesionbench.preprocessing import Geometry
from lesionbench.volume import DataError

LAS = np.array([[-1.0, 0, 0, 90], [0, 1, 0, -126], [0, 0, 1, -72], [0, 0, 0, 1]])
SHAPE = (20, 22, 12)  # x, y, z as stored (z: axial)


def _save(path: Path, data, affine=LAS, dtype=np.float32) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data, dtype), affine), str(path))
    return path


def _subject(seed: int, lesion: bool = True):
    """A skull-stripped-looking head: an ellipsoid brain (zero outside), a bright FLAIR lesion."""
    rng = np.random.default_rng(seed)
    x, y, z = np.mgrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    brain = ((x - 10) / 8) ** 2 + ((y - 11) / 9) ** 2 + ((z - 6) / 5) ** 2 < 1
    labels = np.zeros(SHAPE, np.uint8)
    if lesion:
        labels[8:12, 9:13, 5:8] = 2
        labels[9:11, 10:12, 6] = 4
    images = {}
    for i, name in enumerate(("t1", "t1ce", "t2", "flair")):
        img = rng.normal(100 + 10 * i, 5, SHAPE) * brain
        if name == "flair":
            img[labels > 0] += 80
        images[name] = img
    return images, labels, brain


def write_brats(root: Path, case: str, new_naming: bool = False, seed: int = 0) -> Path:
    images, labels, _ = _subject(seed)
    names = {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f"} if new_naming else {m: m for m in images}
    sep = "-" if new_naming else "_"
    for m, img in images.items():
        _save(root / case / f"{case}{sep}{names[m]}.nii.gz", img)
    _save(root / case / f"{case}{sep}seg.nii.gz", labels, dtype=np.uint8)
    return root / case


def write_open_ms(root: Path, case: str, seed: int = 0) -> Path:
    images, labels, _ = _subject(seed)
    names = {"t1": "T1", "t1ce": "T1POST", "t2": "T2", "flair": "FLAIR"}
    for m, img in images.items():
        _save(root / case / f"{names[m]}_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz", img)
    _save(root / case / "GOLD_STANDARD_N4_noneck_reduced_winsor_regtoFLAIR_regtoMNI.nii.gz", (labels > 0), dtype=np.uint8)
    return root / case


def write_deepmedic(root: Path, case: str, seed: int = 0, lesion: bool = True) -> Path:
    """BRATS-2013 deepmedic style: z-scored, background = the minimum (not 0), a brain-mask file."""
    images, labels, brain = _subject(seed, lesion)
    for m, name in (("flair", "Flair"), ("t1ce", "T1c")):
        img = images[m]
        z = (img - img[brain].mean()) / img[brain].std()
        z[~brain] = z[brain].min() - 0.5
        _save(root / case / f"{name}_subtrMeanDivStd.nii.gz", z)
    _save(root / case / "OTMultiClass.nii.gz", labels)
    _save(root / case / "brainmask.nii.gz", brain, dtype=np.float64)
    return root / case


DEEPMEDIC_TOML = Path(__file__).resolve().parents[1] / "datasets" / "layouts" / "brats2013-deepmedic.toml"


# -- orientation -----------------------------------------------------------------------------------------


def test_volumes_are_reoriented_with_the_axial_axis_first_and_written_back_exactly(tmp_path):
    data = np.arange(np.prod(SHAPE), dtype=np.float32).reshape(SHAPE)
    src = _save(tmp_path / "a.nii.gz", data)
    img = read_image(src)
    assert AXES == ("S", "P", "L")
    assert img.data.shape == (SHAPE[2], SHAPE[1], SHAPE[0])  # D = z (axial), H = y, W = x
    # LAS source: x runs to the left (kept), y to anterior (flipped to posterior), z superior (kept)
    np.testing.assert_array_equal(img.data, data.transpose(2, 1, 0)[:, ::-1, :])
    assert nib.aff2axcodes(img.affine) == AXES
    # a voxel keeps its world position
    d, h, w = 3, 4, 5
    x, y, z = w, SHAPE[1] - 1 - h, d
    np.testing.assert_allclose(img.affine @ [d, h, w, 1], LAS @ [x, y, z, 1])
    out = write_like(img.data, src, tmp_path / "back.nii.gz")
    back = nib.load(str(out))
    assert back.shape == SHAPE and np.allclose(back.affine, LAS)
    np.testing.assert_array_equal(back.get_fdata(), data)


# -- layouts ---------------------------------------------------------------------------------------------


def test_brats_2021_and_2023_naming_map_onto_canonical_modalities(tmp_path):
    write_brats(tmp_path, "BraTS2021_00000")
    write_brats(tmp_path, "BraTS-GLI-00001-000", new_naming=True, seed=1)
    adapter = BraTS(root=tmp_path)
    assert adapter.cases() == ["BraTS-GLI-00001-000", "BraTS2021_00000"]
    for case in adapter.cases():
        v = adapter.load(case)
        assert v.modalities == ("t1", "t1ce", "t2", "flair")
        assert v.image.shape == (4, SHAPE[2], SHAPE[1], SHAPE[0])
        assert v.lesion.sum() == 4 * 4 * 3  # labels 2 and 4 are both tumour
        _, _, brain = _subject(0)
        assert v.brain.sum() == brain.sum()  # non-zero voxels: no brain-mask file
        assert v.image[3][v.lesion].mean() > v.image[3][v.brain & ~v.lesion].mean() + 50  # flair is flair
    flair_only = BraTS(root=tmp_path, modalities=("flair",))
    assert flair_only.load("BraTS2021_00000").modalities == ("flair",)
    assert [p.name for p in flair_only.case_files("BraTS-GLI-00001-000").all()] == [
        "BraTS-GLI-00001-000-t2f.nii.gz", "BraTS-GLI-00001-000-seg.nii.gz"]


def test_open_ms_layout_tells_t1_from_t1post_and_accepts_the_collection_root(tmp_path):
    mni = tmp_path / "open_ms_data" / "cross_sectional" / "MNI"
    write_open_ms(mni, "patient01")
    write_open_ms(mni, "patient02", seed=1)
    adapter = OpenMS(root=tmp_path / "open_ms_data")
    assert adapter.root == mni and adapter.cases() == ["patient01", "patient02"]
    files = adapter.case_files("patient01")
    assert files.modalities["t1"].name.startswith("T1_") and files.modalities["t1ce"].name.startswith("T1POST_")
    v = adapter.load("patient02")
    assert v.lesion.sum() == 48 and v.modalities == ("t1", "t1ce", "t2", "flair")


def test_toml_layout_uses_the_brain_mask_file_for_a_nonzero_background(tmp_path):
    write_deepmedic(tmp_path, "brats_2013_pat0001_1")
    cls = nifti_dataset(DEEPMEDIC_TOML)
    assert cls.name == "brats2013-deepmedic" and cls.needs_root
    adapter = cls(root=tmp_path)
    v = adapter.load("brats_2013_pat0001_1")
    _, _, brain = _subject(0)
    assert v.modalities == ("flair", "t1ce") and v.brain.sum() == brain.sum()
    assert (v.image[0][~v.brain] != 0).all()  # the background is not zero ...
    ds = PreparedDataset(adapter, DataConfig(size=16), {"brats_2013_pat0001_1": "train"}, tmp_path / "cache")
    case = ds.case("brats_2013_pat0001_1")
    assert case.image[:, ~case.brain].max() == 0.0  # ... and normalisation keeps to the brain mask
    assert case.image[0][case.lesion].mean() > 0.8


def test_flat_layout_with_case_id_in_file_names(tmp_path):
    images, labels, _ = _subject(0)
    for case in ("sub-01", "sub-02"):
        _save(tmp_path / "data" / f"{case}_FLAIR.nii", images["flair"])
        _save(tmp_path / "data" / f"{case}_T2.nii", images["t2"])
        _save(tmp_path / "labels" / f"{case}_lesions.nii", labels)
    toml = tmp_path / "my-data.toml"
    toml.write_text('root = "."\nlesion = "labels/{case}_lesions.nii"\nlesion_values = [4]\n'
                    '[modalities]\nflair = "data/{case}_FLAIR.nii"\nt2 = "data/{case}_T2.nii"\n')
    cls = nifti_dataset(toml)
    adapter = cls()  # root from the file, relative to it
    assert cls.name == "my-data" and adapter.cases() == ["sub-01", "sub-02"]
    assert adapter.load("sub-02").lesion.sum() == 4  # only label 4 counts


def test_fingerprint_covers_paths_mtimes_and_sizes(tmp_path):
    write_brats(tmp_path, "BraTS2021_00000")
    adapter = BraTS(root=tmp_path, modalities=("flair",))
    before = adapter.fingerprint("BraTS2021_00000")
    assert before == adapter.fingerprint("BraTS2021_00000")
    flair = tmp_path / "BraTS2021_00000" / "BraTS2021_00000_flair.nii.gz"
    st = flair.stat()
    os.utime(flair, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert adapter.fingerprint("BraTS2021_00000") != before


# -- bad input: clear errors naming the file ----------------------------------------------------------------


def test_truncated_file_is_refused_by_load_and_by_the_header_check(tmp_path):
    case = write_brats(tmp_path, "BraTS2021_00000")
    flair = case / "BraTS2021_00000_flair.nii.gz"
    blob = flair.read_bytes()
    flair.write_bytes(blob[: len(blob) * 2 // 3])
    adapter = BraTS(root=tmp_path)
    with pytest.raises(DataError, match=r"BraTS2021_00000_flair\.nii\.gz.*(truncated|corrupt)"):
        adapter.load("BraTS2021_00000")
    with pytest.raises(DataError, match=r"BraTS2021_00000_flair\.nii\.gz.*(truncated|corrupt)"):
        adapter.check("BraTS2021_00000")
    flair.write_bytes(b"not a nifti file at all")
    with pytest.raises(DataError, match=r"BraTS2021_00000_flair\.nii\.gz: not a readable NIfTI"):
        adapter.load("BraTS2021_00000")


def test_truncated_uncompressed_file_fails_the_header_check(tmp_path):
    path = _save(tmp_path / "a.nii", np.ones(SHAPE))
    path.write_bytes(path.read_bytes()[:-100])
    from lesionbench.nifti import CaseFiles, check_case_headers

    with pytest.raises(DataError, match=r"a\.nii: truncated file"):
        check_case_headers("c", CaseFiles({"flair": path}, None))


def test_missing_modality_names_the_expected_file(tmp_path):
    case = write_brats(tmp_path, "BraTS2021_00000")
    (case / "BraTS2021_00000_t2.nii.gz").unlink()
    with pytest.raises(DataError, match=r"case BraTS2021_00000: missing t2 image file .*BraTS2021_00000_t2\.nii\.gz"):
        BraTS(root=tmp_path).load("BraTS2021_00000")
    # a run that does not use t2 does not need it
    assert BraTS(root=tmp_path, modalities=("flair",)).load("BraTS2021_00000").modalities == ("flair",)
    with pytest.raises(DataError, match=r"modality \['pd'\] requested but the layout has only"):
        BraTS(root=tmp_path, modalities=("pd",))


def test_shape_and_affine_mismatch_name_both_files(tmp_path):
    case = write_brats(tmp_path, "BraTS2021_00000")
    _save(case / "BraTS2021_00000_t2.nii.gz", np.ones((20, 22, 11)))
    with pytest.raises(DataError, match=r"BraTS2021_00000_t2\.nii\.gz has shape \(11, 22, 20\) but .*BraTS2021_00000_t1\.nii\.gz has \(12, 22, 20\)"):
        BraTS(root=tmp_path).load("BraTS2021_00000")
    with pytest.raises(DataError, match=r"BraTS2021_00000_t2\.nii\.gz has shape"):
        BraTS(root=tmp_path).check("BraTS2021_00000")
    shifted = LAS.copy()
    shifted[0, 3] += 0.5
    images, _, _ = _subject(0)
    _save(case / "BraTS2021_00000_t2.nii.gz", images["t2"], affine=shifted)
    with pytest.raises(DataError, match=r"affine of .*BraTS2021_00000_t2\.nii\.gz differs from that of .*_t1\.nii\.gz by up to 0\.5"):
        BraTS(root=tmp_path).load("BraTS2021_00000")
    tiny = LAS.copy()
    tiny[0, 3] += 1e-5  # float32 rounding between writers is the same grid
    _save(case / "BraTS2021_00000_t2.nii.gz", images["t2"], affine=tiny)
    BraTS(root=tmp_path).load("BraTS2021_00000")


def test_nan_values_name_the_file(tmp_path):
    case = write_brats(tmp_path, "BraTS2021_00000")
    images, _, _ = _subject(0)
    images["t1ce"][3, 4, 5] = np.nan
    _save(case / "BraTS2021_00000_t1ce.nii.gz", images["t1ce"])
    with pytest.raises(DataError, match=r"BraTS2021_00000_t1ce\.nii\.gz: 1 NaN/Inf voxels"):
        BraTS(root=tmp_path).load("BraTS2021_00000")


def test_empty_brain_mask_names_the_file(tmp_path):
    case = write_deepmedic(tmp_path, "brats_2013_pat0001_1")
    _save(case / "brainmask.nii.gz", np.zeros(SHAPE), dtype=np.float64)
    with pytest.raises(DataError, match=r"brain mask .*brats_2013_pat0001_1/brainmask\.nii\.gz is empty"):
        nifti_dataset(DEEPMEDIC_TOML)(root=tmp_path).load("brats_2013_pat0001_1")
    case = write_brats(tmp_path, "BraTS2021_00000")
    for m in ("t1", "t1ce", "t2", "flair"):
        _save(case / f"BraTS2021_00000_{m}.nii.gz", np.zeros(SHAPE))
    with pytest.raises(DataError, match=r"empty brain mask: every voxel is 0 in .*BraTS2021_00000_t1\.nii\.gz"):
        BraTS(root=tmp_path).load("BraTS2021_00000")


def test_unexpected_label_values_name_the_file(tmp_path):
    case = write_brats(tmp_path, "BraTS2021_00000")
    _, labels, _ = _subject(0)
    labels[0, 0, 0] = 7
    _save(case / "BraTS2021_00000_seg.nii.gz", labels, dtype=np.uint8)
    with pytest.raises(DataError, match=r"BraTS2021_00000_seg\.nii\.gz holds label values \[7\]; expected only \[0, 1, 2, 3, 4\]"):
        BraTS(root=tmp_path).load("BraTS2021_00000")
    _save(case / "BraTS2021_00000_seg.nii.gz", labels * 0.5)
    with pytest.raises(DataError, match=r"_seg\.nii\.gz holds non-integer values"):
        BraTS(root=tmp_path).load("BraTS2021_00000")


def test_dataset_refuses_bad_cases_in_one_list_or_skips_them(tmp_path):
    for i in range(4):
        write_brats(tmp_path / "data", f"BraTS2021_0000{i}", seed=i)
    (tmp_path / "data" / "BraTS2021_00001" / "BraTS2021_00001_flair.nii.gz").unlink()
    nan = tmp_path / "data" / "BraTS2021_00003" / "BraTS2021_00003_flair.nii.gz"
    images, _, _ = _subject(3)
    images["flair"][0, 0, 0] = np.inf
    _save(nan, images["flair"])
    adapter = BraTS(root=tmp_path / "data", modalities=("flair",))
    split = {"BraTS2021_00000": "train", "BraTS2021_00001": "train", "BraTS2021_00002": "val", "BraTS2021_00003": "test"}
    with pytest.raises(DataError, match=r"1 bad case\(s\).*\n  BraTS2021_00001: .*missing flair image file"):
        PreparedDataset(adapter, DataConfig(size=16), split, tmp_path / "cache")
    ds = PreparedDataset(adapter, DataConfig(size=16), split, tmp_path / "cache", skip_bad=True)
    assert list(ds.skipped) == ["BraTS2021_00001"]
    assert [c.case_id for c in ds.val_cases()] == ["BraTS2021_00002"]
    assert ds.test_cases() == []  # the NaN file shows when the case is read, after fit
    assert "NaN/Inf" in ds.skipped["BraTS2021_00003"] and str(nan) in ds.skipped["BraTS2021_00003"]


# -- the inverse transform ---------------------------------------------------------------------------------


def test_inverse_transform_round_trips_a_mask():
    g = Geometry((40, 48), (-4, 44, 0, 48), 24)  # box past the image edge: padding; scale 1/2
    mask = np.zeros((3, 40, 48), bool)
    mask[0, 10:20, 12:30] = True  # aligned with the 2x2 blocks of the box
    mask[1, 0:6, 40:48] = True  # at the image border
    np.testing.assert_array_equal(g.mask_to_native(g.resample_mask(mask)), mask)
    crop_only = Geometry((40, 48), (-4, 44, 0, 48), 48)
    yy, xx = np.mgrid[:40, :48]
    disc = np.repeat((((yy - 20) ** 2 + (xx - 23) ** 2) < 81)[None], 2, 0)
    np.testing.assert_array_equal(crop_only.mask_to_native(crop_only.resample_mask(disc)), disc)
    back = g.mask_to_native(g.resample_mask(disc))  # unaligned shape at scale 1/2: close, not exact
    assert 2 * (back & disc).sum() / (back.sum() + disc.sum()) > 0.9
    values = g.to_native(np.ones((1, 24, 24), np.float32), fill=-1.0)
    assert values.shape == (1, 40, 48) and (values == 1).all()  # the box covers the whole image here


# -- the command line on tiny files ----------------------------------------------------------------------------


def test_check_data_lists_bad_cases_and_exits_non_zero(tmp_path, capsys):
    for i in range(3):
        write_brats(tmp_path, f"BraTS2021_0000{i}", seed=i)
    assert main(["check-data", "--dataset", "brats", "--root", str(tmp_path), "--set", "data.size=16"]) == 0
    out = capsys.readouterr().out
    assert "3 of 3 cases OK" in out and "12x22x20" in out and "lesions lost" in out
    (tmp_path / "BraTS2021_00001" / "BraTS2021_00001_seg.nii.gz").write_bytes(b"\x1f\x8b broken")
    assert main(["check-data", "--dataset", "brats", "--root", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "2 of 3 cases OK" in out and "bad case BraTS2021_00001" in out and "BraTS2021_00001_seg.nii.gz" in out


def test_run_on_a_toml_dataset_native_space_and_maps_in_source_space(tmp_path, capsys):
    root = tmp_path / "data"
    for i in range(4):
        write_deepmedic(root, f"brats_2013_pat000{i}_1", seed=i, lesion=i != 1)
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"brats_2013_pat0000_1": "train", "brats_2013_pat0001_1": "train",
                                 "brats_2013_pat0002_1": "val", "brats_2013_pat0003_1": "test"}))
    base = ["run", "--methods", "intensity", "--datasets", str(DEEPMEDIC_TOML), "--root", f"brats2013-deepmedic={root}",
            "--split", str(split), "--profile", "smoke", "--workdir", str(tmp_path / "w"), "--device", "cpu",
            "--set", "data.modalities=flair", "--set", "data.min_brain_fraction=0.001"]  # a tiny brain in a 192 px slice
    assert main(base) == 0
    assert main(base + ["--eval-native", "--save-maps", str(tmp_path / "maps")]) == 0
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'w' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("lesionbench")
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])
    assert [r.data.tags["eval_space"] for r in runs] == ["resampled", "native"]
    assert runs[0].data.tags["cell"] != runs[1].data.tags["cell"]  # never the same cell
    assert runs[0].data.params["data.size"] == "192"  # real data default, not the smoke profile's 32
    for r in runs:
        assert r.data.metrics["test/auprc"] > 0.9 and np.isfinite(r.data.metrics["test/dice_val"])
    written = tmp_path / "maps" / "brats2013-deepmedic" / "intensity" / "seed0" / "brats_2013_pat0003_1_map.nii.gz"
    source = root / "brats_2013_pat0003_1" / "Flair_subtrMeanDivStd.nii.gz"
    out, src = nib.load(str(written)), nib.load(str(source))
    assert out.shape == src.shape and np.allclose(out.affine, src.affine)
    brain = nib.load(str(root / "brats_2013_pat0003_1" / "brainmask.nii.gz")).get_fdata() > 0.5
    assert np.corrcoef(out.get_fdata()[brain], src.get_fdata()[brain])[0, 1] > 0.95  # the map is the FLAIR, in place
