"""Real brain MRI from ../shared/data (open MS data, BRATS 2013 in DeepMedic's layout, BraTS 2018 as distributed)
through the suite."""

import pytest
from mlflow.tracking import MlflowClient

from conftest import SHARED_DATA, requires_shared_data
from lesionbench.cli import main

pytestmark = [pytest.mark.realdata, requires_shared_data()]

OPEN_MS = SHARED_DATA / "open_ms_data"
BRATS2013 = SHARED_DATA / "brats2013_deepmedic"
BRATS2018 = SHARED_DATA / "brats2018"
SPLITS = SHARED_DATA / "splits"


@pytest.mark.parametrize("dataset, root, cases, lesion_voxels", [
    ("open-ms", OPEN_MS, 2, ["1300", "8227"]),
    ("brats2013-deepmedic", BRATS2013, 4, ["173928", "120674", "80682", "217380"]),
    ("brats", BRATS2018, 10, ["139257", "217380", "39772", "32051", "154508", "125370", "81847", "107194", "157275", "231951"]),
])
def test_every_case_loads_and_check_data_passes(dataset, root, cases, lesion_voxels, capsys):
    assert main(["check-data", "--dataset", dataset, "--root", str(root), "--set", "data.modalities=flair"]) == 0
    out = capsys.readouterr().out
    assert f"{cases} of {cases} cases OK" in out
    for n in lesion_voxels:
        assert n in out


def _run(tmp_path, dataset, root, split, *extra):
    workdir = tmp_path / "w"
    code = main(["run", "--methods", "intensity", "--datasets", dataset, "--root", f"{dataset}={root}",
                 "--split", str(split), "--profile", "smoke", "--workdir", str(workdir), "--device", "cpu",
                 "--set", "data.modalities=flair", "--set", "data.size=128", *extra])
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    exp = client.get_experiment_by_name("lesionbench")
    return code, client.search_runs([exp.experiment_id])


def test_intensity_on_open_ms_says_plainly_that_dice_val_needs_a_validation_case(tmp_path, capsys):
    code, runs = _run(tmp_path, "open-ms", OPEN_MS, SPLITS / "open-ms.json")
    assert code == 0 and len(runs) == 1
    err = capsys.readouterr().err.replace("\n", " ")
    assert "the split has no validation case, so dice_val" in err
    m = runs[0].data.metrics
    assert "test/dice_val" not in m and "test/dice_fpr5" not in m  # NaN: not logged (tracking drops NaN)
    # patient07: ~1.3k lesion voxels in ~1.1M brain voxels; FLAIR ranks them far above chance
    assert m["test/prevalence"] < 0.002 and m["test/auprc"] > 10 * m["test/prevalence"]
    assert m["test/auroc"] > 0.85
    assert runs[0].data.tags["eval_space"] == "resampled" and runs[0].data.params["data.size"] == "128"


def test_intensity_on_brats2013_in_the_native_space(tmp_path):
    code, runs = _run(tmp_path, "brats2013-deepmedic", BRATS2013, SPLITS / "brats2013-deepmedic.json", "--eval-native")
    assert code == 0 and len(runs) == 1
    m = runs[0].data.metrics
    assert runs[0].data.tags["eval_space"] == "native"
    assert m["test/auprc"] > 0.6 and 0 < m["test/dice_val"] <= m["test/dice_best"]
    assert m["test/n_volumes"] == 1  # pat0006 only


def test_brats2018_as_distributed_with_its_split_file(tmp_path):
    """The 2018 naming (<ID>/<ID>_flair.nii.gz, labels 0, 1, 2, 4) through the `brats` adapter, end to end."""
    code, runs = _run(tmp_path, "brats", BRATS2018, SPLITS / "brats2018.json", "--set", "data.size=64")
    assert code == 0 and len(runs) == 1
    m = runs[0].data.metrics
    assert m["test/n_volumes"] == 2 and m["test/n_lesion_volumes"] == 2  # CBICA_ALU and TCIA10_628
    # tumour is 2-16 % of each brain; FLAIR hyperintensity (oedema) ranks it far above chance
    assert 0.02 < m["test/prevalence"] < 0.16 and m["test/auprc"] > 3 * m["test/prevalence"]

