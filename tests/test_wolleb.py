"""wolleb (Wolleb et al. 2022) and ddpm: the diffusion math on its own, then the methods on tiny brains.

Stated tolerance of DDIM inversion: for a fixed (briefly trained) smoke model at 32x32, encoding to
L = 100 and unguided decoding over 10-timestep DDIM steps gives back the input within a mean absolute
error of 0.02 (images in [-1, 1]); the reconstruction error grows with the stride, which is why the
stride is a hyperparameter."""

import math

import pytest
import torch

from lesionbench.method import NullLog, SliceSet
from lesionbench.methods.ddpm.method import DDPM
from lesionbench.methods.diffusion import sampling as S
from lesionbench.methods.wolleb.method import HEALTHY, Wolleb

MODALITIES = ("t1", "t1ce", "t2", "flair")
INVERSION_TOLERANCE = 0.02


def brains(n: int, size: int = 32, seed: int = 0, lesion_every: int = 2):
    """Discs with smooth texture in 4 channels ([0, 1] inside, 0 outside); every ``lesion_every``-th slice
    has a bright square (+0.5 in t2 and flair). Returns (SliceSet, lesion masks kept apart from it)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    images = torch.zeros(n, 4, size, size)
    brain = torch.zeros(n, size, size, dtype=torch.bool)
    masks = torch.zeros(n, size, size, dtype=torch.bool)
    labels = torch.zeros(n, dtype=torch.long)
    for i in range(n):
        brain[i] = yy.square() + xx.square() < (0.8 + 0.05 * torch.rand(1, generator=g).item()) ** 2
        cy, cx = (torch.rand(2, generator=g) - 0.5) * 0.8
        field = 0.4 + 0.2 * torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 0.2)
        for c in range(4):
            images[i, c] = field * (0.8 + 0.1 * c) * brain[i]
        if lesion_every and i % lesion_every == 1:
            oy, ox = (torch.randint(8, size - 14, (2,), generator=g)).tolist()
            masks[i, oy : oy + 6, ox : ox + 6] = True
            images[i, 2:][:, masks[i]] += 0.5
            labels[i] = 1
    return SliceSet(images.clamp(0, 1), labels, brain, MODALITIES), masks


@pytest.fixture(scope="module")
def data():
    torch.set_num_threads(2)
    return brains(64)


@pytest.fixture(scope="module")
def wolleb(data):
    train, _ = data
    torch.manual_seed(0)
    method = Wolleb(Wolleb.make_config("smoke", {"steps": 20, "classifier_steps": 60, "lr": 2e-3}), "cpu", MODALITIES)
    method.fit(train, train, NullLog())
    return method


# -- the pure functions ------------------------------------------------------------------------------


def test_ddim_times_end_at_the_noise_level():
    assert S.ddim_times(600, 50) == list(range(0, 601, 50))
    assert S.ddim_times(250, 100) == [0, 100, 200, 250]
    with pytest.raises(ValueError):
        S.ddim_times(0, 10)


def test_ddim_step_is_exact_for_the_ideal_denoiser_of_one_image():
    """If eps(x_t, t) is the true noise of a single image x0, encoding then decoding returns x0 exactly
    (the input counts as the sample at t = 0, so its own 'noise' e is (x0 - sqrt(abar_0) x0) / sqrt(1 - abar_0))."""
    _, abar = S.linear_schedule(1000)
    x0 = torch.rand(2, 3, 8, 8) * 2 - 1
    eps = lambda x, t: (x - abar[t].view(-1, 1, 1, 1).sqrt() * x0) / (1 - abar[t].view(-1, 1, 1, 1)).sqrt()  # noqa: E731
    times = S.ddim_times(700, 100)
    latent = S.ddim_encode(eps, x0, times, abar)
    e = (x0 - abar[0].sqrt() * x0) / (1 - abar[0]).sqrt()
    assert torch.allclose(latent, abar[700].sqrt() * x0 + (1 - abar[700]).sqrt() * e, atol=1e-5)
    assert torch.allclose(S.guided_ddim_decode(eps, latent, times, abar), x0, atol=1e-5)


def test_guided_eps_follows_the_classifier_gradient():
    eps, grad = torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2)
    out = S.guided_eps(eps, grad, abar_t=0.75, scale=4.0)
    assert torch.allclose(out, torch.full_like(eps, -math.sqrt(0.25) * 4.0))


def _guided_decode_by_hand(eps_fn, grad_fn, x, times, abar, scale, clip_x0):
    """The guided DDIM decoding written out step by step (the authors' ``condition_score2`` + ``ddim_sample``
    for "unguided"), independent of the sampler's functions."""
    for t, t_prev in zip(times[::-1][:-1], times[::-1][1:]):
        a, a_prev = float(abar[t]), float(abar[t_prev])
        tt = torch.full((x.shape[0],), t, dtype=torch.long)
        eps, grad = eps_fn(x, tt), grad_fn(x, tt)
        if clip_x0 == "unguided":
            x0 = ((x - math.sqrt(1 - a) * eps) / math.sqrt(a)).clamp(-1, 1)  # the model's x0, clipped
            eps = (x - math.sqrt(a) * x0) / math.sqrt(1 - a)  # eps re-derived from it
            eps = eps - math.sqrt(1 - a) * scale * grad  # then the guidance
            x0 = (x - math.sqrt(1 - a) * eps) / math.sqrt(a)  # the guided x0, unclipped
        else:
            eps = eps - math.sqrt(1 - a) * scale * grad
            x0 = ((x - math.sqrt(1 - a) * eps) / math.sqrt(a)).clamp(-1, 1)  # the guided x0, clipped
            eps = (x - math.sqrt(a) * x0) / math.sqrt(1 - a)
        x = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev) * eps
    return x


def test_guided_decoding_clips_the_unguided_x0_then_guides_by_default():
    """The authors' order (clip the model's x0, re-derive eps, add the guidance, leave the guided x0 unclipped)
    is the default of the sampler and of wolleb; the former order is the option clip_x0="guided"."""
    _, abar = S.linear_schedule(1000)
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)  # a latent at L = 300
    eps_fn = lambda x, t: 1.5 * x - 0.4  # noqa: E731  a denoiser whose x0 leaves [-1, 1]: clipping matters
    grad_fn = lambda x, t: torch.tanh(x.flip(-1))  # noqa: E731  a gradient that varies over the image
    times = S.ddim_times(300, 100)
    outputs = {}
    for order in S.CLIP_X0:
        expected = _guided_decode_by_hand(eps_fn, grad_fn, x, times, abar, 20.0, order)
        outputs[order] = S.guided_ddim_decode(eps_fn, x, times, abar, grad_fn, 20.0, clip_x0=order)
        torch.testing.assert_close(outputs[order], expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(S.guided_ddim_decode(eps_fn, x, times, abar, grad_fn, 20.0), outputs["unguided"])
    assert float((outputs["unguided"] - outputs["guided"]).abs().max()) > 0.1  # the orders differ on this model
    assert float(outputs["unguided"].abs().max()) > 1.0  # the guided x0 is left unclipped
    assert Wolleb.make_config("quick").clip_x0 == "unguided"
    with pytest.raises(ValueError, match="clip_x0 must be one of"):
        Wolleb(Wolleb.make_config("smoke", {"clip_x0": "both"}))


def test_hybrid_loss_is_finite_and_reduces_to_mse_plus_vlb():
    betas, abar = S.linear_schedule(1000)
    x0 = torch.rand(4, 2, 8, 8) * 2 - 1
    noise = torch.randn_like(x0)
    t = torch.tensor([0, 1, 500, 999])
    x_t = S.q_sample(x0, t, noise, abar)
    output = torch.cat([noise, torch.zeros_like(x0)], 1)  # perfect eps, v = 0
    loss, vlb = S.hybrid_loss(output, x0, x_t, t, noise, betas, abar, vlb_weight=0.001)
    assert torch.isfinite(loss) and vlb >= 0
    assert math.isclose(loss.item(), 0.001 * 1000 * vlb.item(), rel_tol=1e-5)  # L_simple is 0 here


# -- wolleb on tiny brains ---------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [Wolleb, DDPM])
def test_fit_sees_only_images_labels_and_brain(cls, data):
    """Masks never reach training: the SliceSet has no mask, and fit reads nothing else of it."""
    train, _ = data
    assert not any("mask" in f or "lesion" in f for f in SliceSet.__dataclass_fields__)
    overrides = {"steps": 1, "classifier_steps": 1} if cls is Wolleb else {"steps": 1}
    read = fields_read_by_fit(cls(cls.make_config("smoke", overrides), "cpu", MODALITIES), train)
    assert read <= {"images", "labels", "brain", "modalities", "healthy"}, read


def fields_read_by_fit(method, train: SliceSet) -> set[str]:
    """The SliceSet attributes that ``method.fit`` reads (train and val both ``train``)."""
    read = set()

    class Recording(SliceSet):
        def __getattribute__(self, name):
            if not name.startswith("__"):
                read.add(name)
            return super().__getattribute__(name)

    recorded = Recording(train.images, train.labels, train.brain, train.modalities)
    method.fit(recorded, recorded, NullLog())
    return read


def test_ddim_encoding_then_unguided_decoding_recovers_the_input(wolleb, data):
    train, _ = data
    saved = wolleb.config.noise_level, wolleb.config.stride
    wolleb.config.noise_level, wolleb.config.stride = 100, 10
    try:
        x = wolleb.to_network_input(train.images[:8])
        x_hat = wolleb.translate(x, scale=0.0)
    finally:
        wolleb.config.noise_level, wolleb.config.stride = saved
    error = (x_hat - x).abs().mean().item()
    assert error < INVERSION_TOLERANCE, error
    # and the latent is noisy: the round trip is not the identity by doing nothing
    latent = S.ddim_encode(wolleb.eps_fn(HEALTHY), x, S.ddim_times(100, 10), wolleb.alphas_cumprod)
    assert (latent - x).abs().mean() > 0.05


def test_scale_zero_gives_exactly_the_unguided_result(wolleb, data):
    train, _ = data
    x = wolleb.to_network_input(train.images[:6])
    times = S.ddim_times(200, 50)
    eps = wolleb.eps_fn(HEALTHY)
    latent = S.ddim_encode(eps, x, times, wolleb.alphas_cumprod)
    calls = []

    def grad(x_t, t):
        calls.append(t)
        return torch.ones_like(x_t)

    unguided = S.guided_ddim_decode(eps, latent, times, wolleb.alphas_cumprod)
    assert torch.equal(S.guided_ddim_decode(eps, latent, times, wolleb.alphas_cumprod, grad, 0.0), unguided)
    assert not calls
    guided = S.guided_ddim_decode(eps, latent, times, wolleb.alphas_cumprod, grad, 5.0)
    assert len(calls) == len(times) - 1 and not torch.equal(guided, unguided)


def test_guidance_raises_the_classifiers_p_healthy(wolleb, data):
    train, _ = data
    x = wolleb.to_network_input(train.images[train.labels == 1][:8])
    t0 = torch.zeros(x.shape[0], dtype=torch.long)

    def p_healthy(images):
        with torch.no_grad():
            return torch.softmax(wolleb.logits_fn(images, t0), 1)[:, HEALTHY].mean().item()

    plain, guided = p_healthy(wolleb.translate(x, scale=0.0)), p_healthy(wolleb.translate(x, scale=100.0))
    assert guided > plain + 0.2, (plain, guided)


def test_predict_maps_and_classifier_scores(wolleb, data):
    train, _ = data
    out = wolleb.predict(train.images[:5])
    assert out.maps.shape == (5, 32, 32) and torch.isfinite(out.maps).all() and (out.maps >= 0).all()
    assert out.scores is None
    wolleb.config.score = "classifier"
    try:
        scored = wolleb.predict(train.images[:5])
    finally:
        wolleb.config.score = "map"
    assert scored.scores.shape == (5,) and ((scored.scores >= 0) & (scored.scores <= 1)).all()
    assert torch.allclose(scored.maps, out.maps, atol=1e-5)  # deterministic: encode/decode has no noise


def test_state_dict_round_trip(wolleb, data):
    train, _ = data
    copy = Wolleb(wolleb.config, "cpu", MODALITIES)
    copy.load_state_dict(wolleb.state_dict())
    assert torch.allclose(copy.predict(train.images[:3]).maps, wolleb.predict(train.images[:3]).maps, atol=1e-5)


# -- ddpm -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ddpm(data):
    torch.manual_seed(0)
    healthy, _ = brains(48, seed=1, lesion_every=0)
    method = DDPM(DDPM.make_config("smoke", {"steps": 120, "lr": 3e-3, "batch_size": 16, "noise_level": 200}), "cpu", MODALITIES)
    method.fit(healthy, healthy, NullLog())
    return method


def test_ddpm_gives_the_same_map_twice_and_whatever_the_batch(ddpm, data):
    train, _ = data
    seed = ddpm.seed
    first = ddpm.predict(train.images[:6]).maps
    second = ddpm.predict(train.images[:6]).maps
    assert torch.equal(first, second)
    alone = ddpm.predict(train.images[2:3]).maps
    assert torch.allclose(alone[0], first[2], atol=1e-4)
    ddpm.seed = seed + 1  # another run seed draws other noise
    try:
        assert not torch.allclose(ddpm.predict(train.images[:6]).maps, first)
    finally:
        ddpm.seed = seed


def test_ddpm_map_is_higher_on_the_lesion(ddpm, data):
    train, masks = data
    lesion = train.labels == 1
    maps = ddpm.predict(train.images[lesion][:12]).maps
    inside = maps[masks[lesion][:12]].mean()
    elsewhere = maps[train.brain[lesion][:12] & ~masks[lesion][:12]].mean()
    assert inside > 1.5 * elsewhere, (inside.item(), elsewhere.item())


def test_ddpm_stochastic_noising_is_not_deterministic_encoding(ddpm, data):
    """Noising to L and denoising changes the image (unlike DDIM encoding, which would return it)."""
    train, _ = data
    assert ddpm.predict(train.images[:4]).maps.mean() > 0.01


# -- through the CLI --------------------------------------------------------------------------------


def test_smoke_run_through_the_cli_reuses_trained_parts(tmp_path):
    from lesionbench.cli import main

    workdir = tmp_path / "w"
    base = ["run", "--methods", "wolleb", "ddpm", "--datasets", "synth-tumor", "--seeds", "0", "--profile", "smoke",
            "--workdir", str(workdir), "--device", "cpu"]
    assert main(base) == 0
    assert main(["leaderboard", "--workdir", str(workdir), "--format", "md"]) == 0
    parts = sorted(p.name for p in (workdir / "parts").iterdir())
    assert len(parts) == 3 and sum(p.startswith("wolleb-") for p in parts) == 2  # ddpm + classifier, and ddpm's ddpm
    # changing only inference settings does not retrain
    assert main(base + ["--set", "wolleb.guidance_scale=20", "--set", "wolleb.noise_level=300"]) == 0
    assert sorted(p.name for p in (workdir / "parts").iterdir()) == parts


# -- training on the timesteps the sampler uses (train_max_t, classifier_max_t) ------------------------


class RecordsTimesteps(torch.nn.Module):
    """A stand-in network that remembers every timestep it is asked for."""

    def __init__(self, out_channels: int):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.out_channels, self.seen = out_channels, []

    def forward(self, x, t, class_labels=None):
        self.seen.append(t.clone())
        shape = (x.shape[0], self.out_channels, *x.shape[2:]) if self.out_channels > 2 else (x.shape[0], 2)  # eps or logits
        return torch.zeros(shape) + self.weight


@pytest.mark.parametrize("max_t, expected_top", [(0, 999), (150, 150)])
def test_training_draws_timesteps_up_to_max_t_only(max_t, expected_top):
    from lesionbench.methods.diffusion.training import Schedule, train_classifier, train_denoiser

    torch.manual_seed(0)
    betas, abar = S.linear_schedule(1000)
    x, labels = torch.zeros(16, 4, 8, 8), torch.arange(16) % 2
    schedule = Schedule(steps=200, batch_size=16, lr=1e-3, max_t=max_t)
    denoiser, classifier = RecordsTimesteps(4), RecordsTimesteps(2)
    train_denoiser(denoiser, x, labels, betas, abar, schedule, False, 0.0, torch.device("cpu"), NullLog(), "ddpm", seed=0)
    train_classifier(classifier, x, labels, abar, schedule, torch.device("cpu"), NullLog(), seed=0)
    for network in (denoiser, classifier):
        seen = torch.cat(network.seen)
        assert seen.min() == 0 and seen.max() == expected_top  # 3200 draws cover both ends of the range


@pytest.mark.parametrize("cls, key", [(Wolleb, "train_max_t"), (Wolleb, "classifier_max_t"), (DDPM, "train_max_t")])
def test_a_max_t_below_the_noise_level_is_refused_by_name(cls, key):
    with pytest.raises(ValueError, match=f"{key} 100 must lie in \\[noise_level \\(200\\)"):
        cls(cls.make_config("smoke", {key: 100, "noise_level": 200}), "cpu", MODALITIES)
    cls(cls.make_config("smoke", {key: 200, "noise_level": 200}), "cpu", MODALITIES)  # L itself is trained on


def test_max_t_is_part_of_the_cache_key_only_when_set():
    method = Wolleb(Wolleb.make_config("smoke", {}), "cpu", MODALITIES)
    method.build((4, 32, 32))
    ddpm_key, clf_key = method.part_keys()
    assert "train_max_t" not in ddpm_key and "classifier_max_t" not in clf_key  # parts cached before the keys existed still match
    method.config = Wolleb.make_config("smoke", {"train_max_t": 300, "classifier_max_t": 400})
    ddpm_key, clf_key = method.part_keys()
    assert ddpm_key["train_max_t"] == 300 and clf_key["classifier_max_t"] == 400


@pytest.mark.parametrize("profile", ["quick", "paper"])
@pytest.mark.parametrize("cls", [Wolleb, DDPM])
def test_every_search_space_suggestion_builds_a_method(cls, profile):
    """A study never suggests a noise level above the timesteps its profile's networks are trained on."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    levels = set()
    for _ in range(40):
        params = cls.search_space(study.ask())
        cls(cls.make_config(profile, params), "cpu", MODALITIES)
        levels.add(params["noise_level"])
    assert max(levels) == 500  # the paper's L is within reach
