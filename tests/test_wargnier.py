"""wargnier (Wargnier-Dauchelle et al. 2023) and saliency: the constraint and its double backpropagation,
what the constraint does to healthy attributions, what reaches training, and a run through the CLI."""

import hashlib
import math

import pytest
import torch

from lesionbench.method import NullLog, SliceSet
from lesionbench.methods.wargnier import attribution as attr
from lesionbench.methods.wargnier.method import Saliency, Wargnier
from lesionbench.methods.wargnier.networks import LogitMapClassifier

torch.set_num_threads(2)


def _toy_batch(n: int, size: int = 16, generator=None, channels: int = 1, lesion: int = 3):
    """A disc brain of noisy tissue; odd images carry a bright ``lesion`` x ``lesion`` square at a random place."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    brain = ((yy - size / 2 + 0.5) ** 2 + (xx - size / 2 + 0.5) ** 2 < (size / 2 - 1) ** 2).expand(n, size, size).clone()
    x = (0.4 + 0.1 * torch.rand(n, channels, size, size, generator=generator)) * brain[:, None]
    labels = torch.arange(n) % 2
    for i in range(1, n, 2):
        r, c = torch.randint(size // 2 - size // 4, size // 2 + size // 8, (2,), generator=generator).tolist()
        x[i, :, r : r + lesion, c : c + lesion] = 0.9
    return x, labels, brain


def test_the_constraint_has_non_zero_gradients_with_respect_to_the_weights():
    torch.manual_seed(0)
    network = LogitMapClassifier(1, widths=(4, 8))
    x, labels, brain = _toy_batch(8)
    for kind in ("gradient", "input_x_gradient", "expected_gradients"):
        for form, scale in (("bce", "rms"), ("bce", "none"), ("squared", "none")):
            refs, alpha = x.flip(0), torch.full((8,), 0.5)
            _, _, constraint = attr.constrained_loss(network.lesion_logit, x, labels, brain, 1.0, form, kind, refs, alpha, scale)
            names, params = zip(*network.named_parameters())
            grads = torch.autograd.grad(constraint, params, allow_unused=True)
            # the last bias shifts the logit but not its gradient: the only weight the attribution ignores
            assert [n for n, g in zip(names, grads) if g is None] == ["head.bias"], (kind, form)
            norms = {n: float(g.norm()) for n, g in zip(names, grads) if g is not None}
            assert min(norms.values()) > 0, (kind, form, norms)  # every conv, the first one included


def test_the_constraint_sees_brain_voxels_of_healthy_slices_only():
    x, labels, brain = _toy_batch(4)
    mask = attr.constrained_voxels(brain, labels)
    assert mask[labels == 1].sum() == 0
    assert torch.equal(mask[labels == 0], brain[labels == 0])
    # attributions outside that mask do not change the constraint
    a = torch.randn(4, 1, 16, 16)
    b = a.clone()
    b[labels == 1] += 100.0
    b[:, :, ~brain[0]] -= 50.0
    for form, scale in (("bce", "rms"), ("bce", "none"), ("squared", "none")):
        assert torch.allclose(attr.attribution_constraint(a, brain, labels, form, scale),
                              attr.attribution_constraint(b, brain, labels, form, scale))
    # the authors' form is softplus(A) averaged; the squared form is the per-slice sum of A^2, averaged
    assert torch.allclose(attr.attribution_constraint(a, brain, labels, "bce", "none"),
                          torch.nn.functional.softplus(a[:, 0][mask]).mean())
    assert torch.allclose(attr.attribution_constraint(a, brain, labels, "squared", "none"), a[:, 0][mask].square().sum() / 2)
    # ours (the default): each healthy slice's A divided by its rms over that slice's constrained voxels
    rms = torch.stack([a[i, 0][brain[i]].square().mean().sqrt() for i in range(4)]).view(4, 1, 1)
    assert torch.allclose(attr.attribution_constraint(a, brain, labels),
                          torch.nn.functional.softplus((a[:, 0] / rms)[mask]).mean())
    # the size of A does not matter to it, only its sign pattern; the authors' raw form sits at ln 2 for a tiny A
    assert torch.allclose(attr.attribution_constraint(2e-9 * a, brain, labels), attr.attribution_constraint(a, brain, labels))
    assert abs(float(attr.attribution_constraint(2e-9 * a, brain, labels, "bce", "none")) - math.log(2)) < 1e-6
    with pytest.raises(ValueError, match="squared constraint"):
        attr.attribution_constraint(a, brain, labels, "squared", "rms")


def _train_toy(lam: float, form: str, steps: int = 200) -> float:
    """Train a tiny classifier on the toy problem; return the mean gradient attribution over the brain
    voxels of fresh healthy slices."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    network = LogitMapClassifier(1, widths=(4, 8))
    optimizer = torch.optim.Adam(network.parameters(), lr=3e-3)
    for _ in range(steps):
        x, labels, brain = _toy_batch(16, generator=g)
        # the authors' raw scale and loss: this toy network's attributions are O(1), where the forms act per voxel
        loss, _, _ = attr.constrained_loss(network.lesion_logit, x, labels, brain, lam, form, "gradient", scale="none")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    x, labels, brain = _toy_batch(32, generator=g)
    a, logits = attr.gradient_attribution(network.lesion_logit, x)
    healthy = attr.constrained_voxels(brain, labels)
    acc = float(((logits > 0).long() == labels).float().mean())
    assert acc >= 0.9, f"the toy classifier did not learn (accuracy {acc})"
    return a[:, 0][healthy]


@pytest.fixture(scope="module")
def toy_attributions():
    return {
        "none": _train_toy(0.0, "bce"),
        "bce": _train_toy(1.0, "bce"),
        "squared": _train_toy(0.01, "squared"),  # its lambda scales with A^2 summed over a slice
    }


def test_the_bce_form_leaves_healthy_attributions_negative(toy_attributions):
    a = toy_attributions["bce"]
    assert float(a.mean()) < 0
    assert float(a.mean()) < float(toy_attributions["none"].mean())


def test_the_squared_form_shrinks_healthy_attributions(toy_attributions):
    assert float(toy_attributions["squared"].abs().mean()) < 0.5 * float(toy_attributions["none"].abs().mean())


class _RecordingLog(NullLog):
    def __init__(self):
        self.evaluations = 0

    def evaluate(self, step):
        self.evaluations += 1
        return float(step)  # later is "better": the last evaluated weights are kept


def test_fit_sees_images_labels_and_brain_masks_only(monkeypatch):
    x, labels, brain = _toy_batch(24)
    train = SliceSet(x.repeat(1, 2, 1, 1), labels, brain, ("t1", "flair"))
    assert {f for f in vars(train)} == {"images", "labels", "brain", "modalities"}  # no lesion mask to read
    seen = []
    original = attr.attribution_constraint

    def spy(attribution, brain_batch, labels_batch, *options):
        seen.append((brain_batch.clone(), labels_batch.clone()))
        return original(attribution, brain_batch, labels_batch, *options)

    monkeypatch.setattr(attr, "attribution_constraint", spy)
    config = Wargnier.make_config("smoke", {"widths": (4, 8), "max_steps": 6, "batch_size": 8, "eval_every": 3})
    method = Wargnier(config, "cpu", train.modalities)
    log = _RecordingLog()
    torch.manual_seed(0)
    method.fit(train, train, log)
    assert log.evaluations == 2
    rows = {hashlib.sha1(b.numpy().tobytes()).hexdigest() for b in brain}
    assert len(seen) == 6
    for brain_batch, labels_batch in seen:
        # balanced batches of 8: the constraint sees their 4 healthy slices, and nothing of the lesion slices
        assert len(brain_batch) == 4 and bool((labels_batch == 0).all())
        assert all(hashlib.sha1(b.numpy().tobytes()).hexdigest() in rows for b in brain_batch)
    out = method.predict(train.images[:5])
    assert out.maps.shape == (5, 16, 16) and (out.maps >= 0).all()
    assert out.scores is not None and ((out.scores > 0) & (out.scores < 1)).all()
    assert all(p.requires_grad for p in method.network.parameters())  # predict gives them back


def test_saliency_is_the_unconstrained_classifier():
    assert Saliency.make_config("quick").constraint_weight == 0
    assert Wargnier.make_config("quick").constraint_weight > 0
    # the constrained arm keeps only checkpoints its constraint has shaped; the unconstrained arm keeps any (issue 19)
    assert Wargnier.make_config("quick").keep_best_from > 0 and Saliency.make_config("quick").keep_best_from == 0
    with pytest.raises(ValueError, match="constraint_weight must be 0"):
        Saliency.make_config("quick", {"constraint_weight": 1.0})


def test_maps_combine_attributions_on_one_scale_and_round_trip_through_state():
    x, labels, brain = _toy_batch(16)
    train = SliceSet(x, labels, brain, ("flair",))
    kinds = ("gradient", "input_x_gradient", "expected_gradients", "integrated_gradients")
    config = Wargnier.make_config("smoke", {"widths": (4, 8), "max_steps": 3, "map_attributions": kinds})
    torch.manual_seed(0)
    method = Wargnier(config, "cpu", train.modalities)
    method.fit(train, train, NullLog())
    assert set(method.map_scales) == set(kinds) and all(s > 0 for s in method.map_scales.values())
    first = method.predict(x)
    again = Wargnier(config, "cpu", train.modalities)
    again.load_state_dict(method.state_dict())
    second = again.predict(x)
    assert torch.allclose(first.maps, second.maps) and torch.allclose(first.scores, second.scores)


def test_run_through_the_cli_in_the_smoke_profile(tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    from lesionbench.cli import main

    workdir = tmp_path / "runs"
    code = main(["run", "--methods", "wargnier", "saliency", "--datasets", "synth-ms", "--seeds", "0",
                 "--profile", "smoke", "--workdir", str(workdir), "--device", "cpu"])
    assert code == 0
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("lesionbench").experiment_id])
    assert sorted(r.data.tags["method"] for r in runs) == ["saliency", "wargnier"]
    for r in runs:
        assert r.info.status == "FINISHED"
        assert 0 < r.data.metrics["test/auprc"] <= 1
    assert main(["leaderboard", "--workdir", str(workdir), "--format", "md"]) == 0
    out = capsys.readouterr().out
    assert "| wargnier" in out and "| saliency" in out


def test_map_channel_reductions():
    a = torch.tensor([[[[2.0]], [[-3.0]]], [[[1.0]], [[0.5]]]])  # [B=2, C=2, 1, 1]
    assert attr.anomaly_map(a, "positive_sum").flatten().tolist() == [2.0, 1.5]  # a modality's push counts
    assert attr.anomaly_map(a, "sum_positive").flatten().tolist() == [0.0, 1.5]  # opposite pushes cancel
    with pytest.raises(ValueError, match="map channels"):
        attr.anomaly_map(a, "mean")
    with pytest.raises(ValueError, match="map_channels"):
        Wargnier(Wargnier.make_config("smoke", {"map_channels": "max"}), "cpu", ("t1", "flair"))


# -- the constraint binds at a realistic size (issue 19) -----------------------------------------------


class _MetricLog(NullLog):
    def __init__(self):
        self.values, self.warnings = {}, []

    def metric(self, name, value, step=None):
        self.values.setdefault(name, []).append(float(value))

    def warn(self, message):
        self.warnings.append(message)


def _healthy_positive_fraction(method, x, labels, brain) -> float:
    a, _ = attr.gradient_attribution(method._logit_fn, x[labels == 0])
    return float((a.permute(1, 0, 2, 3)[:, brain[labels == 0]] > 0).float().mean())


@pytest.fixture(scope="module")
def realistic():
    """64 px, 4 channels, the quick profile's network and batch, 20 steps: the default wargnier, saliency, and the
    authors' raw attribution scale with a fixed lambda = 1 (today's constraint before issue 19)."""
    g = torch.Generator().manual_seed(0)
    x, labels, brain = _toy_batch(48, size=64, generator=g, channels=4, lesion=6)
    train = SliceSet(x, labels, brain, ("t1", "t1ce", "t2", "flair"))
    held_out = _toy_batch(32, size=64, generator=g, channels=4, lesion=6)
    out = {}
    for name, cls, overrides in (("saliency", Saliency, {}), ("wargnier", Wargnier, {}),
                                 ("authors_scale", Wargnier, {"constraint_scale": "none", "constraint_weighting": "fixed",
                                                              "constraint_weight": 1.0})):
        config = cls.make_config("quick", {"max_steps": 20, "eval_every": 0, "log_every": 2, **overrides})
        torch.manual_seed(0)
        method = cls(config, "cpu", train.modalities)
        log = _MetricLog()
        method.fit(train, train, log)
        out[name] = (log, _healthy_positive_fraction(method, *held_out))
    return out


def test_the_default_constraint_makes_a_visible_part_of_every_update_and_moves(realistic):
    log, _ = realistic["wargnier"]
    shares = log.values["constraint_grad_share"]
    assert len(shares) == 10 and min(shares) >= 0.1 - 1e-6, shares  # ||grad of the term|| / ||grad L_cls|| (issue 19: 2e-6)
    curve = log.values["constraint"]
    assert (max(curve) - min(curve)) / (sum(curve) / len(curve)) > 0.05, curve  # issue 19: flat at ln 2
    assert log.warnings == []


def test_the_default_constraint_leaves_fewer_healthy_attributions_positive_than_saliency(realistic):
    _, saliency = realistic["saliency"]
    _, wargnier = realistic["wargnier"]
    assert wargnier <= 0.5 * saliency, (wargnier, saliency)


def test_the_authors_scale_is_inert_at_this_size_and_the_run_is_warned(realistic):
    log, _ = realistic["authors_scale"]
    shares = sorted(log.values["constraint_grad_share"])
    assert shares[len(shares) // 2] < 1e-2, shares  # the median step: the constraint is a negligible part of the update
    assert [w for w in log.warnings if "'constraint' never moved" in w], log.warnings  # flat at ln 2


class _ScoringLog(NullLog):
    """Scores each evaluation by a fixed sequence, so the kept checkpoint is known in advance."""

    def __init__(self, scores):
        self.scores, self.steps = list(scores), []

    def evaluate(self, step):
        self.steps.append(step)
        return self.scores[len(self.steps) - 1]


def test_checkpoints_before_keep_best_from_are_neither_evaluated_nor_kept():
    g = torch.Generator().manual_seed(0)
    x, labels, brain = _toy_batch(16, generator=g)
    train = SliceSet(x, labels, brain, ("flair",))
    states = {}
    for keep_from in (0, 3):
        config = Wargnier.make_config("smoke", {"max_steps": 5, "eval_every": 1, "keep_best_from": keep_from})
        log = _ScoringLog([0.9, 0.8, 0.1, 0.2, 0.3][-(6 - max(keep_from, 1)):])  # step 1 would be the best
        torch.manual_seed(0)
        method = Wargnier(config, "cpu", train.modalities)
        method.fit(train, train, log)
        states[keep_from] = method.state_dict()["network"]
        assert log.steps == list(range(max(keep_from, 1), 6))
    # from step 3 the best is step 5 (0.3), the last weights; from step 1 it is step 1's
    last = Wargnier(Wargnier.make_config("smoke", {"max_steps": 5, "eval_every": 0}), "cpu", train.modalities)
    torch.manual_seed(0)
    last.fit(train, train, NullLog())
    assert all(torch.equal(states[3][k], last.state_dict()["network"][k]) for k in states[3])
    assert not all(torch.equal(states[0][k], states[3][k]) for k in states[0])
