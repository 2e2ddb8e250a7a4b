"""wolleb-wargnier: the attribution constraint on a noise-conditioned classifier, the masked decoding, the
fused map on one per-dataset scale, and trained parts shared with wolleb without changing any number."""

import pytest
import torch
from mlflow.tracking import MlflowClient

from lesionbench.method import NullLog
from lesionbench.methods.diffusion import sampling as S
from lesionbench.methods.diffusion.networks import noise_conditioned_classifier
from lesionbench.methods.diffusion.training import Schedule, train_classifier
from lesionbench.methods.wolleb_wargnier.method import WollebWargnier, noisy_attribution_constraint
from test_wolleb import MODALITIES, brains, fields_read_by_fit


@pytest.fixture(scope="module")
def data():
    torch.set_num_threads(2)
    return brains(48)


def _classifier(seed=0):
    torch.manual_seed(seed)
    return noise_conditioned_classifier(4, (32, 32), (8, 16), 1, (False, False), 4)


def test_the_noisy_constraint_has_gradients_for_the_weights(data):
    train, _ = data
    net = _classifier()
    x = train.images[:8] * 2 - 1
    t = torch.randint(0, 1000, (8,), generator=torch.Generator().manual_seed(0))
    term = noisy_attribution_constraint(net, x, t, train.labels[:8], train.brain[:8], 1.0, "bce")
    grads = torch.autograd.grad(term, list(net.parameters()), allow_unused=True)
    assert sum(float(g.abs().sum()) for g in grads if g is not None) > 0  # double backprop reaches the weights
    # nothing to constrain: no healthy slice in the batch, or a zero weight
    lesion = train.labels == 1
    assert noisy_attribution_constraint(net, x[lesion[:8]], t[lesion[:8]], train.labels[:8][lesion[:8]], train.brain[:8][lesion[:8]], 1.0) is None
    assert noisy_attribution_constraint(net, x, t, train.labels[:8], train.brain[:8], 0.0) is None


def test_the_bce_constraint_leaves_healthy_attributions_lower_than_no_constraint(data):
    """Trained 80 steps each, same seed: the constrained classifier's gradient attribution of the lesion logit on
    healthy brain voxels (noisy inputs at the noise levels it is trained on) is negative, the unconstrained one's
    is not (measured: +5.6e-5 against -3.1e-3 with lambda 100)."""
    train, _ = data
    x = train.images * 2 - 1
    _, abar = S.linear_schedule(1000)
    healthy = train.labels == 0
    xs, brain = x[healthy], train.brain[healthy]
    t = torch.randint(0, 1000, (len(xs),), generator=torch.Generator().manual_seed(1))
    x_t = S.q_sample(xs, t, torch.randn(xs.shape, generator=torch.Generator().manual_seed(2)), abar)
    means = {}
    for weight in (0.0, 100.0):
        net = _classifier()
        constraint = lambda n, xt, tt, y, index: noisy_attribution_constraint(n, xt, tt, y, train.brain[index], weight)  # noqa: E731
        torch.manual_seed(0)
        net.load_state_dict(train_classifier(net, x, train.labels, abar, Schedule(80, 8, 2e-3), torch.device("cpu"), NullLog(),
                                             constraint=constraint, seed=0))
        point = x_t.clone().requires_grad_(True)
        logits = net(point, t)
        (grad,) = torch.autograd.grad((logits[:, 1] - logits[:, 0]).sum(), point)
        means[weight] = float(grad.permute(1, 0, 2, 3)[:, brain].mean())
    assert means[100.0] < 0 < means[0.0], means


def test_masked_decoding_keeps_the_input_where_the_mask_is_zero():
    torch.manual_seed(0)
    x0 = torch.rand(2, 3, 8, 8) * 2 - 1
    _, abar = S.linear_schedule(1000)
    times = S.ddim_times(300, 50)
    eps = lambda x, t: 0.3 * x + 0.1  # noqa: E731  any deterministic "denoiser"
    path = S.ddim_encode_trajectory(eps, x0, times, abar)
    assert len(path) == len(times) and torch.equal(path[0], x0) and torch.equal(path[-1], S.ddim_encode(eps, x0, times, abar))
    plain = S.guided_ddim_decode(eps, path[-1], times, abar)
    assert (plain - x0).abs().max() > 1e-3  # a visible edit to keep out
    mask = torch.zeros(2, 1, 8, 8)
    mask[..., :4] = 1
    masked = S.guided_ddim_decode(eps, path[-1], times, abar, mask=mask, trajectory=path)
    assert torch.equal(masked[..., 4:], x0[..., 4:])  # outside the mask: the input itself
    assert torch.equal(S.guided_ddim_decode(eps, path[-1], times, abar, mask=torch.ones(2, 1, 8, 8), trajectory=path), plain)
    with pytest.raises(ValueError, match="needs both the mask and the encoding trajectory"):
        S.guided_ddim_decode(eps, path[-1], times, abar, mask=mask)


def _fitted(train, variant, **overrides):
    torch.manual_seed(0)
    config = WollebWargnier.make_config("smoke", {"steps": 20, "classifier_steps": 30, "lr": 2e-3, "variant": variant, **overrides})
    method = WollebWargnier(config, "cpu", MODALITIES)
    method.fit(train, train, NullLog())
    return method


def test_fit_sees_only_images_labels_and_brain(data):
    train, _ = data
    method = WollebWargnier(WollebWargnier.make_config("smoke", {"steps": 1, "classifier_steps": 1, "variant": "fusion"}), "cpu", MODALITIES)
    read = fields_read_by_fit(method, train)
    assert read <= {"images", "labels", "brain", "modalities", "healthy"}, read


def test_fused_and_masked_maps_use_one_scale_per_dataset(data):
    """A slice's map does not depend on the other slices of the batch (no per-batch or per-slice normalisation),
    the scales are measured at fit and travel with the state; the masked map is 0 wherever the mask is."""
    train, _ = data
    images = train.images[:6]
    fused = _fitted(train, "fusion")
    masked = WollebWargnier(WollebWargnier.make_config("smoke", {**vars(fused.config), "variant": "masked"}), "cpu", MODALITIES)
    masked.load_state_dict(fused.state_dict())  # the same trained parts: only the scales are the variant's
    masked._fit_scales(train)
    assert set(fused.scales) == {"attribution", "residual"} and set(masked.scales) == {"attribution"}
    assert masked.scales["attribution"] == fused.scales["attribution"] > 0 and fused.scales["residual"] > 0
    for method in (fused, masked):
        together = method.predict(images).maps
        alone = torch.cat([method.predict(images[i : i + 1]).maps for i in range(len(images))])
        torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)
        assert float(together.max()) > 0
        restored = WollebWargnier(method.config, "cpu", MODALITIES)
        restored.load_state_dict(method.state_dict())
        assert restored.scales == method.scales
        torch.testing.assert_close(restored.predict(images).maps, together)
    outside = masked.edit_mask(masked.to_network_input(images))[:, 0, :32, :32] == 0
    assert bool(outside.any()) and float(masked.predict(images).maps[outside].abs().max()) == 0.0


def test_without_the_constraint_the_guiding_classifier_and_the_maps_are_wolleb_s(data):
    """constraint_weight = 0 (#22's post hoc control docs/rq-controls/masked-without-constraint.toml): the
    classifier trains exactly as wolleb's, same data and seed, so a variant at weight 0 differs from wolleb only
    by what the variant does at inference; the guidance variant's maps are then wolleb's, number for number."""
    from lesionbench.methods.wolleb.method import Wolleb

    train, _ = data
    overrides = {"steps": 2, "classifier_steps": 12, "lr": 2e-3}
    plain = Wolleb(Wolleb.make_config("smoke", overrides), "cpu", MODALITIES)
    off = WollebWargnier(WollebWargnier.make_config("smoke", {**overrides, "constraint_weight": 0.0}), "cpu", MODALITIES)
    on = WollebWargnier(WollebWargnier.make_config("smoke", {**overrides, "constraint_weight": 0.3}), "cpu", MODALITIES)
    for method in (plain, off, on):
        torch.manual_seed(0)
        method.fit(train, train, NullLog())
    for name, value in plain.classifier.state_dict().items():
        torch.testing.assert_close(off.classifier.state_dict()[name], value, rtol=0, atol=0)
    assert any(not torch.equal(on.classifier.state_dict()[n], v) for n, v in plain.classifier.state_dict().items())
    images = train.images[:4]
    torch.testing.assert_close(off.predict(images).maps, plain.predict(images).maps, rtol=0, atol=0)


def test_bad_variant_is_a_clear_error():
    with pytest.raises(ValueError, match="wolleb-wargnier: variant must be one of .* not 'mask'"):
        WollebWargnier(WollebWargnier.make_config("smoke", {"variant": "mask"}))


def test_variants_share_the_trained_parts_and_reusing_wolleb_s_ddpm_changes_no_number(tmp_path):
    from lesionbench.cli import main

    def run(workdir, *args):
        base = ["run", "--datasets", "synth-tumor", "--seeds", "0", "--profile", "smoke", "--workdir", str(workdir), "--device", "cpu"]
        assert main(base + list(args)) == 0
        client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
        runs = client.search_runs([client.get_experiment_by_name("lesionbench").experiment_id])
        return {r.data.tags["label"]: r for r in runs}

    alone = run(tmp_path / "a", "--methods", "wolleb-wargnier", "--set", "wolleb-wargnier.variant=masked,fusion")
    assert sorted(alone) == ["wolleb-wargnier[variant=fusion]", "wolleb-wargnier[variant=masked]"]
    assert alone["wolleb-wargnier[variant=fusion]"].data.tags.get("reused.constrained_classifier")
    parts = sorted(p.name.rsplit("-", 1)[0] for p in (tmp_path / "a" / "parts").iterdir())
    assert parts == ["wolleb-constrained_classifier", "wolleb-ddpm"]  # one DDPM and one classifier for both variants
    # after a wolleb run the DDPM comes from wolleb's cache entry, and the numbers are those of a fresh training
    after = run(tmp_path / "b", "--methods", "wolleb", "wolleb-wargnier", "--set", "wolleb-wargnier.variant=fusion")
    fused = after["wolleb-wargnier[variant=fusion]"]
    assert fused.data.tags.get("reused.ddpm") and not after["wolleb"].data.tags.get("reused.ddpm")
    for key in ("test/auprc", "test/dice_best"):
        assert fused.data.metrics[key] == alone["wolleb-wargnier[variant=fusion]"].data.metrics[key]


def test_the_default_constraint_binds_on_the_quick_guiding_classifier_at_64_px():
    """The quick profile's noise-conditioned classifier at 64 px, one constrained step: the constraint makes at least
    a tenth of the update (its logged gradient share), where the authors' raw attribution scale with lambda = 1 makes
    a negligible part of it (issue 19: < 1 %)."""
    train, _ = brains(16, size=64)
    shares = {}
    for name, overrides in (("default", {}), ("authors_scale", {"constraint_scale": "none", "constraint_weighting": "fixed",
                                                                "constraint_weight": 1.0})):
        config = WollebWargnier.make_config("quick", {"classifier_steps": 1, "classifier_batch_size": 8, "log_every": 1, **overrides})
        method = WollebWargnier(config, "cpu", MODALITIES)
        torch.manual_seed(0)
        x = method.to_network_input(train.images).cpu()
        method.build(x.shape[1:])
        _, key = method.part_keys()
        schedule = Schedule(1, 8, config.classifier_lr, log_every=1, max_t=config.classifier_max_t)
        log = _MetricLog()
        method.classifier_part(train, x, train.labels.long(), key, schedule, log)
        shares[name] = log.values["classifier_constraint_grad_share"]
    assert len(shares["default"]) == 1 and shares["default"][0] >= 0.1 - 1e-6, shares
    assert max(shares["authors_scale"]) < 1e-2, shares


class _MetricLog(NullLog):
    def __init__(self):
        self.values = {}

    def metric(self, name, value, step=None):
        self.values.setdefault(name, []).append(float(value))


@pytest.mark.parametrize("fixed, tuned", [
    ({}, {"variant", "constraint_weight"}),
    ({"variant": "guidance"}, {"constraint_weight"}),
    ({"variant": "masked"}, {"map_attribution", "mask_dilation"}),
    ({"variant": "fusion"}, {"map_attribution", "fusion_weight"}),
    ({"variant": "masked", "constraint_weight": 0.2}, {"map_attribution", "mask_dilation"}),
])
def test_a_fixed_variant_tunes_only_what_it_uses(fixed, tuned):
    """#22: per-variant studies. guidance tunes the constraint; masked and fusion tune only inference settings
    (their constrained classifier is trained once and cached); the variant stays fixed, never suggested."""
    import optuna

    from lesionbench.tuning import search_keys

    inference = {"noise_level", "guidance_scale", "stride"}  # wolleb's own, in every study
    optional = {"map_attribution", "mask_dilation", "fusion_weight"}  # per variant: an open study may draw any
    keys = search_keys(WollebWargnier, "quick", fixed)
    if fixed:
        assert keys == inference | tuned
    else:
        assert inference | tuned <= keys <= inference | tuned | optional
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(12):  # every suggestion builds a method
        params = WollebWargnier.search_space(study.ask(), fixed=fixed)
        assert not set(params) & set(fixed)
        WollebWargnier(WollebWargnier.make_config("quick", {**fixed, **params}), "cpu", MODALITIES)
        if "constraint_weight" in params:
            assert 0.02 <= params["constraint_weight"] <= 0.5
