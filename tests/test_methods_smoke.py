"""Every registered method fits and predicts on the synthetic data in its smoke profile, on CPU."""

import numpy as np
import pytest
import torch

from lesionbench.config import DATA_PROFILES, DataConfig
from lesionbench.datasets.synthetic import SynthTumor
from lesionbench.method import AnomalyOutput, NullLog
from lesionbench.pipeline import PreparedDataset
from lesionbench.plugins import load_plugins
from lesionbench.seeding import seed_everything
from lesionbench.splits import make_split

PLUGINS = load_plugins(autoload=False)


@pytest.fixture(scope="module")
def smoke_data(tmp_path_factory):
    data = DataConfig(**DATA_PROFILES["smoke"])
    adapter = SynthTumor(subjects=data.subjects, size=data.size, depth=data.depth)
    split = make_split(adapter.cases(), 0, data.val_fraction, data.test_fraction)
    return PreparedDataset(adapter, data, split, tmp_path_factory.mktemp("cache"))


@pytest.mark.parametrize("name", PLUGINS.methods.names())
def test_every_method_fits_and_predicts_in_its_smoke_profile(name, smoke_data):
    cls = PLUGINS.methods.get(name)
    assert set(cls.profiles) >= {"smoke", "demo", "quick", "paper"}
    assert cls.description
    seed_everything(0)
    method = cls(cls.make_config("smoke"), device="cpu", modalities=smoke_data.modalities)
    train = smoke_data.slice_set("train", cls.supervision)
    val = smoke_data.slice_set("val", cls.supervision)
    method.fit(train, val, NullLog())
    case = smoke_data.val_cases()[0]
    images = torch.from_numpy(case.image[:, case.brain_slices].transpose(1, 0, 2, 3).copy())
    out = method.predict(images)
    assert isinstance(out, AnomalyOutput)
    assert out.maps.shape == (images.shape[0], *images.shape[2:])
    assert torch.isfinite(out.maps).all()
    assert out.scores is None or out.scores.shape == (images.shape[0],)
    # the map must depend on the input (not a constant)
    assert float(out.maps.std()) > 0


@pytest.mark.parametrize("name", PLUGINS.methods.names())
def test_search_space_names_real_hyperparameters(name):
    import optuna

    cls = PLUGINS.methods.get(name)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trial = optuna.create_study().ask()
    overrides = cls.search_space(trial)
    config = cls.make_config("quick", overrides)  # unknown keys or bad values raise here
    for key, value in overrides.items():
        assert getattr(config, key) == value
