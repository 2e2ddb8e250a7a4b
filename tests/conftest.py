import os

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from lesionbench.method import AnomalyOutput, Method, Supervision
from lesionbench.volume import DatasetAdapter, Volume

torch.set_num_threads(2)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


class ToyAdapter(DatasetAdapter):
    """Tiny two-modality volumes: a disc brain; odd subjects carry a square lesion bright on flair.
    Records which cases were loaded (and summarised for the split), in order, in ``events`` (shared with the test)."""

    name = "toy"
    description = "test volumes"
    events: list = []

    def __init__(self, root=None, subjects: int = 10, **options):
        super().__init__(root, subjects=subjects)
        self.subjects = subjects

    def cases(self):
        return [f"toy-{i:02d}" for i in range(self.subjects)]

    def lesion_voxels(self, case):
        """The case summary of stratified splits: recorded apart from loads (it reads no image)."""
        ToyAdapter.events.append(("summary", case))
        return 2 * 5 * 5 if int(case.split("-")[1]) % 2 else 0

    def load(self, case):
        ToyAdapter.events.append(("load", case))
        i = int(case.split("-")[1])
        rng = np.random.default_rng(i)
        d, h, w = 6, 24, 24
        yy, xx = np.mgrid[:h, :w]
        brain2d = (yy - 12) ** 2 + (xx - 12) ** 2 < 9**2
        brain = np.repeat(brain2d[None], d, 0)
        image = rng.normal(1.0, 0.05, (2, d, h, w)).astype(np.float32) * brain
        lesion = np.zeros((d, h, w), bool)
        if i % 2:
            lesion[2:4, 9:14, 9:14] = True
            image[1][lesion] += 1.0
        return Volume(case, image, lesion, brain, ("t2", "flair"))


@dataclass
class SpyConfig:
    steps: int = 1


class SpyMethod(Method):
    """Records what fit received and what had been loaded by then."""

    name = "spy"
    description = "records its inputs"
    supervision = Supervision.IMAGE
    Config = SpyConfig
    profiles = {"smoke": {}, "demo": {}, "quick": {}, "paper": {}}
    seen: dict = {}

    def fit(self, train, val, log):
        SpyMethod.seen.update(train=train, val=val, loaded_at_fit=list(ToyAdapter.events))
        ToyAdapter.events.append(("fit", None))
        SpyMethod.seen["val_value"] = log.evaluate(0)

    def predict(self, images):
        return AnomalyOutput(images[:, -1].clone())


@pytest.fixture
def toy_plugins():
    from lesionbench.plugins import load_plugins

    plugins = load_plugins(autoload=False)
    plugins.datasets.add(ToyAdapter)
    plugins.methods.add(SpyMethod)
    ToyAdapter.events.clear()
    SpyMethod.seen.clear()
    return plugins


def requires_shared_data():
    return pytest.mark.skipif(not SHARED_DATA.exists(), reason=f"real data folder {SHARED_DATA} is absent")
