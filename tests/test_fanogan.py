"""The fanogan method (Schlegl et al. 2019) on tiny synthetic brains: both stages learn, a diverged run
raises instead of reporting numbers, the izi_f pieces compute the paper's quantities, the same seed gives
the same maps, the checkpoint round-trips, and the CLI runs it (and fails a diverged cell)."""

import math

import numpy as np
import pytest
import torch
from test_vae import MODALITIES, RecordingLog, synthetic_brains

from lesionbench.method import NullLog
from lesionbench.methods.fanogan.method import FAnoGAN
from lesionbench.methods.fanogan.training import (
    TrainingDiverged, check_losses, gradient_penalty, image_grid, izi_f_residuals,
)


class CachingLog(RecordingLog):
    """Records metrics and images; ``cached`` keeps trained parts in memory and counts the trainings."""

    def __init__(self, store=None):
        super().__init__()
        self.store = {} if store is None else store
        self.trained: list[str] = []
        self.images: dict[str, np.ndarray] = {}

    def artifact_image(self, name, image):
        self.images[name] = image

    def cached(self, part, key, train, uses_objective=False):
        k = (part, repr(sorted(key.items())))
        if k not in self.store:
            self.trained.append(part)
            self.store[k] = train()
        return self.store[k]


@pytest.fixture(scope="module")
def data():
    return synthetic_brains(64, seed=0)


@pytest.fixture(scope="module")
def held_out():
    return synthetic_brains(16, seed=1)


def fitted(data, seed=0, log=None, **overrides):
    method = FAnoGAN(FAnoGAN.make_config("smoke", overrides), "cpu", MODALITIES, seed=seed)
    torch.manual_seed(seed)
    method.fit(data, data, log or NullLog())
    return method


@pytest.fixture(scope="module")
def stages(data):
    """The smoke GAN trained once (cached), then no encoder training, then the smoke encoder training."""
    store = {}
    before_log, after_log = CachingLog(store), CachingLog(store)
    before = fitted(data, log=before_log, encoder_steps=0)
    after = fitted(data, log=after_log)
    untrained = fitted(data, gan_steps=0, encoder_steps=0)
    return before, after, untrained, before_log, after_log


def test_stage_1_learns_the_healthy_slices(stages, data):
    _, after, untrained, before_log, _ = stages
    for name in ("gan/critic_loss", "gan/generator_loss", "gan/wasserstein", "gan/gradient_penalty"):
        curve = [v for _, v in before_log.metrics[name]]
        assert len(curve) >= 4 and all(math.isfinite(v) for v in curve), name
    z = torch.randn(64, after.config.latent_size, generator=torch.Generator().manual_seed(0))
    target = data.images.mean(dim=0)

    def mean_image_error(method):
        with torch.no_grad():
            return (method.generator.eval()(z).mean(dim=0) - target).square().mean().item()

    trained, random = mean_image_error(after), mean_image_error(untrained)
    assert trained < 0.5 * random, (trained, random)


def test_stage_2_improves_the_reconstruction_of_healthy_slices(stages, held_out):
    before, after, _, before_log, after_log = stages
    assert before_log.trained == ["gan"] and after_log.trained == []  # the second fit reused the cached GAN
    assert torch.equal(before.generator.project[0].weight, after.generator.project[0].weight)
    error_before = (before.reconstruct(held_out.images) - held_out.images).square().mean().item()
    error_after = (after.reconstruct(held_out.images) - held_out.images).square().mean().item()
    assert error_after < 0.85 * error_before, (error_before, error_after)
    curve = [v for _, v in after_log.metrics["encoder/loss"]]
    assert sum(curve[-2:]) / 2 < curve[0]


def test_sample_grids_are_logged(stages):
    _, _, _, before_log, after_log = stages
    gan = sorted(k for k in before_log.images if k.startswith("gan_samples_epoch"))
    encoder = sorted(k for k in after_log.images if k.startswith("encoder_reconstructions_epoch"))
    assert len(gan) >= 2 and len(encoder) >= 2
    grid = before_log.images[gan[-1]]
    assert grid.dtype == np.uint8 and grid.shape == (8 * 32, 4 * 32)  # 8 samples, one column per modality
    assert after_log.images[encoder[-1]].shape == (8 * 32, 2 * 4 * 32 + 2)  # inputs | reconstructions


def test_predict_gives_residual_maps_and_izi_f_scores(stages, held_out):
    _, method, _, _, _ = stages
    x = held_out.images[:5]
    out = method.predict(x)
    assert out.maps.shape == (5, 32, 32) and out.scores.shape == (5,)
    x_hat = method.reconstruct(x)
    assert torch.allclose(out.maps, (x - x_hat).abs().sum(dim=1))
    with torch.no_grad():
        f, f_hat = method.critic(x)[1], method.critic(x_hat)[1]
    image, feature = (x - x_hat).square().mean(dim=(1, 2, 3)), (f - f_hat).square().mean(dim=1)
    assert torch.allclose(out.scores, image + method.config.kappa * feature, rtol=1e-5)
    assert torch.isfinite(out.maps).all() and (out.maps >= 0).all() and (out.scores > 0).all()


def test_a_loss_beyond_the_limit_fails_stage_1(data):
    with pytest.raises(TrainingDiverged, match=r"fanogan: stage 1 \(WGAN-GP\) diverged at step 1: critic_loss"):
        fitted(data, max_abs_loss=1e-6)


def test_nan_in_the_data_fails_stage_1(data):
    images = data.images.clone()
    images[3, 0, 10, 10] = float("nan")
    broken = type(data)(images, data.labels, data.brain, data.modalities)
    with pytest.raises(TrainingDiverged, match=r"stage 1 .* = nan"):
        fitted(broken, gan_steps=3)


def test_a_broken_generator_fails_stage_2(data):
    """A NaN weight in the (cached) generator: stage 2's loss is NaN and the encoder stage says so."""
    log = CachingLog()
    fitted(data, log=log, gan_steps=2, encoder_steps=1)
    (state,) = log.store.values()
    state["generator"]["project.0.bias"][0] = float("nan")
    with pytest.raises(TrainingDiverged, match=r"stage 2 \(izi_f encoder\) diverged at step 1: encoder_loss = nan"):
        fitted(data, log=log, gan_steps=2, encoder_steps=1)


def test_check_losses():
    check_losses("stage", 1, {"a": -1e3, "b": 0.0}, 1e4)
    for bad in (float("nan"), float("inf"), -2e4):
        with pytest.raises(TrainingDiverged, match="stage diverged at step 7: b"):
            check_losses("stage", 7, {"a": 1.0, "b": bad}, 1e4)


def test_gradient_penalty_of_a_linear_critic():
    """D(x) = <w, x> has gradient w everywhere: the penalty is (||w|| - 1)^2."""
    w = torch.randn(2, 3, 4)

    def critic(x):
        return (x * w).flatten(1).sum(dim=1), None

    real, fake = torch.rand(5, 2, 3, 4), torch.rand(5, 2, 3, 4)
    for scale, expected in ((1.0, 0.0), (3.0, 4.0)):
        w = scale * w / w.norm()
        assert gradient_penalty(critic, real, fake).item() == pytest.approx(expected, abs=1e-5)


def test_izi_f_residuals_are_means_over_pixels_and_features():
    x, x_hat = torch.zeros(2, 1, 2, 2), torch.zeros(2, 1, 2, 2)
    x_hat[0, 0, 0, 0] = 2.0  # image residual 4 / 4 pixels
    f, f_hat = torch.zeros(2, 8), torch.ones(2, 8)
    image, feature = izi_f_residuals(x, x_hat, f, f_hat)
    assert image.tolist() == [1.0, 0.0] and feature.tolist() == [1.0, 1.0]


def test_image_grid_layout():
    a = torch.zeros(3, 2, 4, 5)
    a[1, 1] = 1.0  # second image, second channel
    grid = image_grid(a, a)
    assert grid.shape == (12, 2 * 10 + 2) and grid.dtype == np.uint8
    assert (grid[4:8, 5:10] == 255).all() and (grid[:4, :10] == 0).all() and (grid[:, 10:12] == 255).all()


def test_the_same_seed_gives_the_same_maps(data, held_out):
    probe = held_out.images[:4]
    first = fitted(data, seed=3, gan_steps=3, encoder_steps=3).predict(probe).maps
    second = fitted(data, seed=3, gan_steps=3, encoder_steps=3).predict(probe).maps
    other = fitted(data, seed=4, gan_steps=3, encoder_steps=3).predict(probe).maps
    assert torch.equal(first, second)
    assert not torch.equal(first, other)


def test_state_dict_round_trip(stages, held_out, tmp_path):
    _, method, _, _, _ = stages
    torch.save(method.state_dict(), tmp_path / "fanogan.pt")
    restored = FAnoGAN(method.config, "cpu", MODALITIES)
    restored.load_state_dict(torch.load(tmp_path / "fanogan.pt", weights_only=True))
    first, second = restored.predict(held_out.images[:6]), method.predict(held_out.images[:6])
    assert torch.equal(first.maps, second.maps) and torch.equal(first.scores, second.scores)


def test_the_best_evaluated_encoder_is_kept(data, held_out):
    probe = held_out.images[:3]
    method = FAnoGAN(FAnoGAN.make_config("smoke", {"gan_steps": 2, "encoder_steps": 20, "eval_every": 5}), "cpu", MODALITIES)
    log = RecordingLog(method, probe, scores=[0.1, 0.9, float("nan"), 0.2])
    torch.manual_seed(0)
    method.fit(data, data, log)
    assert log.evaluated == [5, 10, 15, 20]
    assert torch.equal(method.predict(probe).maps, log.maps_at[10])
    assert not torch.equal(log.maps_at[10], log.maps_at[20])


def test_slices_not_a_multiple_of_the_stride_are_padded():
    data = synthetic_brains(8, size=30, seed=2)
    method = fitted(data, gan_steps=2, encoder_steps=2)
    assert method.predict(data.images[:2]).maps.shape == (2, 30, 30)
    with pytest.raises(ValueError, match="do not fit"):
        method.predict(torch.zeros(1, 4, 40, 40))


def test_run_through_the_cli_in_the_smoke_profile(tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    from lesionbench.cli import main

    workdir = tmp_path / "runs"
    base = ["run", "--methods", "fanogan", "--datasets", "synth-tumor", "--seeds", "0", "--profile", "smoke",
            "--workdir", str(workdir), "--device", "cpu"]
    assert main(base) == 0
    # a diverged run fails its cell, with the reason, and reports no numbers (the GAN comes from the cache,
    # which max_abs_loss is not part of, so it is the encoder stage that trips)
    assert main(base + ["--set", "fanogan.max_abs_loss=1e-6"]) == 1
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("lesionbench").experiment_id])
    by_status = {r.info.status: r for r in runs}
    assert sorted(by_status) == ["FAILED", "FINISHED"]
    finished, failed = by_status["FINISHED"], by_status["FAILED"]
    assert 0 < finished.data.metrics["test/auprc"] <= 1
    assert "train/gan/critic_loss" in finished.data.metrics and "train/encoder/loss" in finished.data.metrics
    fit_artifacts = [a.path for a in client.list_artifacts(finished.info.run_id, "fit")]
    assert any("gan_samples_epoch" in p for p in fit_artifacts)
    assert "TrainingDiverged: fanogan: stage 2 (izi_f encoder) diverged at step 1" in failed.data.tags["error"]
    assert failed.data.tags.get("reused.gan")
    assert not any(k.startswith(("test/", "val/")) for k in failed.data.metrics)
    assert main(["leaderboard", "--workdir", str(workdir), "--format", "md"]) == 0
    assert "| fanogan" in capsys.readouterr().out
