"""cfg-diffusion (classifier-free guidance, Ho & Salimans 2022; Sanchez et al. 2022): the guidance and the
label dropout on their own, the conditioning of encoder and decoder, and seeded determinism on tiny brains."""

import math

import pytest
import torch

from lesionbench.method import NullLog, SliceSet
from lesionbench.methods.cfg_diffusion import method as cfg_method
from lesionbench.methods.cfg_diffusion.guidance import (
    LabelDropout, classifier_free_eps, classifier_free_eps_fn, drop_labels,
)
from lesionbench.methods.cfg_diffusion.method import HEALTHY, LESION, NULL, CFGDiffusion
from lesionbench.seeding import seed_everything

MODALITIES = ("t1", "t1ce", "t2", "flair")


def brains(n: int = 16, size: int = 32) -> SliceSet:
    """Discs in 4 channels; every second slice has a bright square in t2 and flair (label 1)."""
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    brain = (yy.square() + xx.square() < 0.7).expand(n, size, size).clone()
    images = 0.5 * brain[:, None].float().repeat(1, 4, 1, 1) + 0.05 * torch.rand(n, 4, size, size, generator=g) * brain[:, None]
    labels = torch.arange(n) % 2
    for i in range(1, n, 2):
        oy, ox = torch.randint(10, size - 16, (2,), generator=g).tolist()
        images[i, 2:, oy : oy + 6, ox : ox + 6] += 0.4
    return SliceSet(images.clamp(0, 1), labels, brain, MODALITIES)


def make(overrides=None, **kw) -> CFGDiffusion:
    return CFGDiffusion(CFGDiffusion.make_config("smoke", overrides), "cpu", MODALITIES, **kw)


# -- the pure functions ------------------------------------------------------------------------------


def test_classifier_free_eps_is_the_papers_combination():
    g = torch.Generator().manual_seed(1)
    cond, uncond = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    for w in (0.0, 0.5, 2.0, 7.5):
        # Ho & Salimans 2022, eq. 6, written out: (1 + w) eps_c - w eps_u
        expected = (1.0 + w) * cond - w * uncond
        torch.testing.assert_close(classifier_free_eps(cond, uncond, w), expected, rtol=0, atol=1e-6)
    # Sanchez et al.'s form, uncond + s (cond - uncond) with s = 1 + w = 3, is the same thing
    torch.testing.assert_close(classifier_free_eps(cond, uncond, 2.0), uncond + 3.0 * (cond - uncond), rtol=0, atol=1e-6)


def labelled_toy(calls):
    """eps(x, t, y) = k_y x + t / 1000, a different gain per label; records (batch, labels) of every call."""
    gain = torch.tensor([0.3, 0.7, -0.2])  # healthy, lesion, null

    def eps(x, t, y):
        calls.append((x.shape[0], y.tolist()))
        return gain[y].view(-1, 1, 1, 1) * x + t.view(-1, 1, 1, 1) / 1000

    return eps


def test_guided_eps_batches_both_passes_in_one_call():
    calls = []
    x, t = torch.randn(3, 2, 4, 4), torch.full((3,), 100)
    out = classifier_free_eps_fn(labelled_toy(calls), HEALTHY, NULL, 2.0)(x, t)
    assert calls == [(6, [HEALTHY] * 3 + [NULL] * 3)]  # one call of 2 B: healthy, then null
    torch.testing.assert_close(out, 3.0 * (0.3 * x + 0.1) - 2.0 * (-0.2 * x + 0.1), rtol=0, atol=1e-6)
    calls.clear()
    out = classifier_free_eps_fn(labelled_toy(calls), HEALTHY, NULL, 0.0)(x, t)
    assert calls == [(3, [HEALTHY] * 3)]  # w = 0: the conditional model alone, one pass
    torch.testing.assert_close(out, 0.3 * x + 0.1, rtol=0, atol=1e-6)


def test_label_dropout_rate_is_honoured_and_kept_labels_are_untouched():
    labels = torch.arange(200_000) % 2
    for rate in (0.1, 0.2, 0.35):
        out = drop_labels(labels, rate, NULL, torch.Generator().manual_seed(0))
        dropped = out == NULL
        tolerance = 4 * math.sqrt(rate * (1 - rate) / len(labels))  # 4 binomial standard deviations
        assert abs(dropped.float().mean().item() - rate) < tolerance
        assert torch.equal(out[~dropped], labels[~dropped])
        # both classes are dropped alike
        for cls in (HEALTHY, LESION):
            assert abs(dropped[labels == cls].float().mean().item() - rate) < 2 * tolerance
    assert not (drop_labels(labels, 0.0, NULL, torch.Generator()) == NULL).any()
    assert (drop_labels(labels, 1.0, NULL, torch.Generator()) == NULL).all()
    with pytest.raises(ValueError, match="dropout rate"):
        drop_labels(labels, 1.5, NULL, torch.Generator())


def test_fit_trains_on_labels_dropped_at_the_configured_rate(monkeypatch):
    seen = {}

    def fake_train_denoiser(network, x, labels, *args, **kwargs):
        seen["labels"] = labels
        return {k: v.clone() for k, v in network.state_dict().items()}

    monkeypatch.setattr(cfg_method, "train_denoiser", fake_train_denoiser)
    seed_everything(0)
    train = brains()
    make({"label_dropout": 0.3}).fit(train, train, NullLog())
    labels = seen["labels"]
    assert isinstance(labels, LabelDropout) and len(labels) == len(train)
    index = torch.arange(len(train))
    draws = torch.stack([labels[index] for _ in range(2000)])  # every read drops anew
    rate = (draws == NULL).float().mean().item()
    assert abs(rate - 0.3) < 4 * math.sqrt(0.3 * 0.7 / draws.numel())
    assert torch.equal(torch.where(draws == NULL, train.labels, draws), train.labels.expand_as(draws))


# -- the method --------------------------------------------------------------------------------------


class RecordingUNet(torch.nn.Module):
    """Stands in for the DDPM: eps = k_y x (the toy's gains); records (batch, labels) per call."""

    def __init__(self):
        super().__init__()
        self.calls = []
        self.gain = torch.tensor([0.3, 0.7, -0.2])

    def forward(self, x, t, class_labels=None):
        self.calls.append((x.shape[0], class_labels.tolist()))
        return self.gain[class_labels].view(-1, 1, 1, 1) * x


def test_encoding_is_unconditional_and_decoding_guided_towards_healthy():
    method = make({"noise_level": 300, "stride": 100, "guidance_scale": 2.0})
    method.unet, method.in_shape = RecordingUNet(), (2, 8, 8)
    x = torch.rand(3, 2, 8, 8) * 2 - 1
    method.translate(x)
    steps = 3  # times 0, 100, 200, 300
    assert method.unet.calls == [(3, [NULL] * 3)] * steps + [(6, [HEALTHY] * 3 + [NULL] * 3)] * steps


def test_one_step_each_way_follows_the_ddim_equations_written_out():
    L, w = 400, 1.5
    method = make({"noise_level": L, "stride": L, "guidance_scale": w, "clip_denoised": False})
    method.unet, method.in_shape = RecordingUNet(), (2, 8, 8)
    x = torch.rand(2, 2, 8, 8) * 2 - 1
    a0, aL = (float(method.alphas_cumprod[t]) for t in (0, L))
    # encoding, unconditional (gain -0.2): x_L = sqrt(aL) x0_hat + sqrt(1 - aL) eps (DDIM eq. 12, sigma = 0)
    e = -0.2 * x
    x_L = math.sqrt(aL) * (x - math.sqrt(1 - a0) * e) / math.sqrt(a0) + math.sqrt(1 - aL) * e
    # decoding: eps_hat = (1 + w) eps(x_L, healthy) - w eps(x_L, null), then the DDIM step back to t = 0
    e_hat = (1 + w) * 0.3 * x_L - w * (-0.2) * x_L
    expected = math.sqrt(a0) * (x_L - math.sqrt(1 - aL) * e_hat) / math.sqrt(aL) + math.sqrt(1 - a0) * e_hat
    torch.testing.assert_close(method.translate(x), expected, rtol=0, atol=1e-5)


def test_same_seed_same_map_and_another_seed_another():
    train = brains()
    probe = brains(4).images

    def fitted_map(seed):
        seed_everything(seed)
        method = make({"steps": 4}, seed=seed)
        method.fit(train, train, NullLog())
        return method, method.predict(probe).maps

    method, first = fitted_map(0)
    _, again = fitted_map(0)
    _, other = fitted_map(1)
    assert torch.equal(first, again)
    assert torch.equal(method.predict(probe).maps, first)  # predicting twice: the same map (DDIM is deterministic)
    assert (first - other).abs().max() > 1e-4
    restored = make()
    restored.load_state_dict(method.state_dict())
    torch.testing.assert_close(restored.predict(probe).maps, first, rtol=0, atol=1e-6)


def test_ddpm_cache_key_holds_what_shapes_the_ddpm_and_no_inference_setting():
    method = make()
    method.in_shape = (4, 32, 32)
    key = method.ddpm_key()
    assert {"label_dropout", "steps", "widths", "lr", "train_max_t", "timesteps"} <= set(key)
    assert not {"guidance_scale", "noise_level", "stride", "clip_denoised", "log_every"} & set(key)
    other = make({"label_dropout": 0.1})
    other.in_shape = (4, 32, 32)
    assert other.ddpm_key() != key
    inference = make({"guidance_scale": 5.0, "noise_level": 300, "stride": 50})
    inference.in_shape = (4, 32, 32)
    assert inference.ddpm_key() == key


@pytest.mark.parametrize("overrides, message", [
    ({"label_dropout": 0.0}, "label_dropout"),
    ({"label_dropout": 1.0}, "label_dropout"),
    ({"guidance_scale": -1.0}, "guidance_scale"),
])
def test_bad_settings_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        make(overrides)
