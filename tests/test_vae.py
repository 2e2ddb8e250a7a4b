"""The vae method (Baur et al. 2021) on tiny synthetic brains: it learns, localises a bright square,
is deterministic given the seed, round-trips its checkpoint and keeps the best-evaluated weights."""

import math

import pytest
import torch

from lesionbench.method import NullLog, SliceSet
from lesionbench.methods.vae.method import VAE

MODALITIES = ("t1", "t1ce", "t2", "flair")


def synthetic_brains(n: int, size: int = 32, seed: int = 0) -> SliceSet:
    """Discs ("brains") filled with a few smooth blobs, 4 channels, in [0, 1] inside and 0 outside."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    images = torch.zeros(n, len(MODALITIES), size, size)
    brain = torch.zeros(n, size, size, dtype=torch.bool)
    for i in range(n):
        centre = 0.05 * torch.randn(2, generator=g)
        radius = 0.75 + 0.05 * torch.rand(1, generator=g).item()
        brain[i] = (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 < radius**2
        field = torch.zeros(size, size)
        for _ in range(3):
            cy, cx = (torch.rand(2, generator=g) - 0.5) * 1.2
            field += torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 0.15)
        for c in range(len(MODALITIES)):
            weight = 0.3 + 0.4 * c / len(MODALITIES)
            images[i, c] = (0.3 + weight * field / field.max()).clamp(0, 1) * brain[i]
    return SliceSet(images, torch.zeros(n, dtype=torch.long), brain, MODALITIES)


class RecordingLog(NullLog):
    """Records metrics; ``evaluate`` returns the next of ``scores`` and snapshots the method's maps."""

    def __init__(self, method=None, probe=None, scores=()):
        self.metrics: dict[str, list[tuple[int, float]]] = {}
        self.evaluated: list[int] = []
        self.maps_at: dict[int, torch.Tensor] = {}
        self.method, self.probe, self.scores = method, probe, list(scores)

    def metric(self, name, value, step=None):
        self.metrics.setdefault(name, []).append((step, value))

    def evaluate(self, step):
        self.evaluated.append(step)
        if self.method is not None:
            self.maps_at[step] = self.method.predict(self.probe).maps
        return self.scores.pop(0) if self.scores else float("nan")


@pytest.fixture(scope="module")
def data():
    torch.set_num_threads(2)
    return synthetic_brains(96, seed=0)


def fitted(data, seed=0, log=None, **overrides):
    method = VAE(VAE.make_config("smoke", overrides), "cpu", MODALITIES, seed=seed)
    torch.manual_seed(seed)
    method.fit(data, data, log or NullLog())
    return method


@pytest.fixture(scope="module")
def smoke_run(data):
    log = RecordingLog()
    return fitted(data, log=log), log


def test_fit_reduces_the_reconstruction_loss(smoke_run):
    _, log = smoke_run
    curve = [v for _, v in log.metrics["reconstruction"]]
    assert len(curve) >= 5 and all(math.isfinite(v) for v in curve)
    assert sum(curve[-3:]) / 3 < 0.5 * curve[0]


def test_predict_gives_finite_non_negative_maps(smoke_run, data):
    method, _ = smoke_run
    out = method.predict(data.images[:5])
    assert out.maps.shape == (5, 32, 32) and out.maps.dtype == torch.float32
    assert out.scores is None
    assert torch.isfinite(out.maps).all() and (out.maps >= 0).all()


def square_contrast(method, images, brain, square):
    """Per slice: the map's mean inside ``square`` over its mean elsewhere in the brain."""
    maps = method.predict(images).maps
    inside = maps[:, square].mean(dim=1)
    elsewhere = torch.stack([m[b & ~square].mean() for m, b in zip(maps, brain)])
    return inside / elsewhere


def test_the_map_is_higher_on_a_bright_square(data):
    test = synthetic_brains(8, seed=1)
    square = torch.zeros(32, 32, dtype=torch.bool)
    square[12:18, 14:20] = True
    images = test.images.clone()
    images[:, :, square] = (images[:, :, square] + 0.3).clamp(0, 1)
    trained = square_contrast(fitted(data, max_steps=250), images, test.brain, square)
    untrained = square_contrast(fitted(data, max_steps=1), images, test.brain, square)
    assert (trained > 2).all(), trained
    assert trained.mean() > 1.3 * untrained.mean(), (trained, untrained)  # learning, not the intensity alone


def test_the_same_seed_gives_the_same_maps(data):
    probe = data.images[:4]
    first = fitted(data, seed=3, max_steps=10).predict(probe).maps
    second = fitted(data, seed=3, max_steps=10).predict(probe).maps
    other = fitted(data, seed=4, max_steps=10).predict(probe).maps
    assert torch.equal(first, second)
    assert not torch.equal(first, other)


def test_state_dict_round_trip(smoke_run, data, tmp_path):
    method, _ = smoke_run
    torch.save(method.state_dict(), tmp_path / "vae.pt")
    restored = VAE(method.config, "cpu", MODALITIES)
    restored.load_state_dict(torch.load(tmp_path / "vae.pt", weights_only=True))
    assert torch.equal(restored.predict(data.images[:6]).maps, method.predict(data.images[:6]).maps)


def test_the_best_evaluated_weights_are_kept(data):
    probe = data.images[:3]
    method = VAE(VAE.make_config("smoke", {"max_steps": 20, "eval_every": 5}), "cpu", MODALITIES)
    log = RecordingLog(method, probe, scores=[0.1, 0.9, float("nan"), 0.2])
    torch.manual_seed(0)
    method.fit(data, data, log)
    assert log.evaluated == [5, 10, 15, 20]
    assert torch.equal(method.predict(probe).maps, log.maps_at[10])
    assert not torch.equal(log.maps_at[10], log.maps_at[20])


def test_all_nan_scores_keep_the_last_weights(data):
    probe = data.images[:3]
    method = VAE(VAE.make_config("smoke", {"max_steps": 12, "eval_every": 5}), "cpu", MODALITIES)
    log = RecordingLog(method, probe)
    torch.manual_seed(0)
    method.fit(data, data, log)
    assert log.evaluated == [5, 10, 12]  # the last step is evaluated too
    assert torch.equal(method.predict(probe).maps, log.maps_at[12])


def test_the_loss_can_count_brain_voxels_only(data):
    method = fitted(data, max_steps=5, loss_in_brain=True)
    maps = method.predict(data.images[:4]).maps
    assert (maps[~data.brain[:4]] == 0).all()
    assert (maps[data.brain[:4]] > 0).any()


def test_slices_not_a_multiple_of_the_stride_are_padded():
    data = synthetic_brains(8, size=30, seed=2)
    method = VAE(VAE.make_config("smoke", {"max_steps": 2}), "cpu", MODALITIES)
    torch.manual_seed(0)
    method.fit(data, data, NullLog())
    assert method.predict(data.images[:2]).maps.shape == (2, 30, 30)
    with pytest.raises(ValueError, match="do not fit"):
        method.predict(torch.zeros(1, 4, 40, 40))
