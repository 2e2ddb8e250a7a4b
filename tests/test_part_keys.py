"""Trained-part cache keys, checked by experiment (design §3, issue 20 item 3).

For every field of every built-in method's Config: perturb it, fit at a tiny size, and compare each cached
part's key and trained state with the unperturbed fit's. If the state changes, the key must change (else a
cached part would be reused stale); if the key changes, the state must change (the field shapes training).
The test never reads the field declarations it checks: only what ``log.cached`` receives and what training
returns. Perturbations are generic by type; ``PERTURB`` names the ones a generic rule cannot make valid,
and ``CONTEXT`` the settings under which a field acts at all (applied to both fits).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lesionbench.method import SliceSet
from lesionbench.plugins import load_plugins
from lesionbench.seeding import seed_everything

PLUGINS = load_plugins(autoload=False)

#: methods whose fit caches no part (their checkpoints are not reused across runs)
NO_PARTS = {"intensity", "vae"}

#: the tiny budget of each method's fit (on top of its smoke profile)
TINY = {
    "wolleb": dict(steps=2, batch_size=4, classifier_steps=2, classifier_batch_size=4),
    "wolleb-wargnier": dict(steps=2, batch_size=4, classifier_steps=2, classifier_batch_size=4, log_every=1, scale_slices=2),
    "cfg-diffusion": dict(steps=2, batch_size=4),
    "ddpm": dict(steps=2, batch_size=4),
    "wargnier": dict(max_steps=3, batch_size=8, background_size=4, map_samples=2, log_every=1),
    "saliency": dict(max_steps=3, batch_size=8, background_size=4, map_samples=2, log_every=1),
    "fanogan": dict(gan_steps=2, encoder_steps=2, n_critic=1, batch_size=8, log_every=1, sample_every=1),
}

#: a field's perturbed value where the generic rule (below) gives an invalid or inert one
PERTURB = {
    "norm_groups": 8,
    "activation": "relu",
    "constraint": "squared",
    "constraint_scale": "none",
    "constraint_weighting": "fixed",
    "train_attribution": "input_x_gradient",
    "references": "background",
    "map_attributions": ("gradient",),
    "map_channels": "sum_positive",
    "map_attribution": "gradient",
    "clip_x0": "guided",
    "score": "classifier",
    "variant": "fusion",
    "beta1": 0.5,
    "beta2": 0.5,
    "scale_quantile": 0.9,
    "fusion_weight": 0.25,
    "max_minutes": 1e-9,  # stops after the first step
    "classifier_minutes": 1e-9,
    "timesteps": 900,
    "noise_level": 100,
    "train_max_t": 300,
    "classifier_max_t": 300,
    "widths": None,  # doubled (generic), attention kept as long
    "max_abs_loss": 1e-12,  # every loss counts as divergence: the fit fails (then both fits are compared as failed)
}

#: settings under which a field acts at all (``field: overrides`` applied to both fits)
CONTEXT = {
    "vlb_weight": dict(learn_sigma=True),
    "constraint": dict(constraint_scale="none"),
    "zero_reference": dict(train_attribution="expected_gradients", references="batch"),
    "references": dict(train_attribution="expected_gradients"),
    "map_samples": dict(map_attributions=("expected_gradients",), eval_every=1),
    "map_attributions": dict(eval_every=1),
    "map_channels": dict(eval_every=1),
    "ema": dict(ema=0.0),
    "eval_every": dict(eval_every=0),
    "keep_best_from": dict(eval_every=1),
    "scale_slices": dict(variant="masked"),
    "scale_quantile": dict(variant="masked"),
}
#: fields a method fixes to one value
FIXED = {("saliency", "constraint_weight")}
#: contexts per method where a field means something else there
METHOD_CONTEXT = {
    ("wolleb-wargnier", "log_every"): dict(constraint_weight=1e-4, classifier_steps=3),  # the capped weight is re-estimated every log_every steps
    ("saliency", "zero_reference"): dict(map_attributions=("expected_gradients",), eval_every=1),
    ("fanogan", "eval_every"): dict(eval_every=0),
    ("fanogan", "batch_size"): dict(batch_size=4),  # the tiny set has 8 healthy slices: larger batches are all of them
}


def _perturbed(name: str, value):
    if name in PERTURB and PERTURB[name] is not None:
        return PERTURB[name]
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1 if value else 2
    if isinstance(value, float):
        return value * 2 if value else 0.5
    if isinstance(value, tuple) and value and all(isinstance(v, bool) for v in value):
        return (*value[:-1], not value[-1])
    if isinstance(value, tuple) and value and all(isinstance(v, int) for v in value):
        return tuple(2 * v for v in value)
    raise AssertionError(f"no perturbation for a field {name}={value!r}: add one to PERTURB")


@pytest.fixture(scope="module")
def tiny_sets():
    g = torch.Generator().manual_seed(5)
    n, size = 16, 16
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    brain = (((yy - 7.5) ** 2 + (xx - 7.5) ** 2) < 7**2).expand(n, size, size).clone()
    images = torch.rand(n, 2, size, size, generator=g) * 0.3 + 0.3
    labels = torch.tensor([0, 1] * (n // 2))
    images[labels == 1, 1, 5:9, 5:9] += 0.5
    images = images * brain[:, None]
    train = SliceSet(images, labels, brain, ("t2", "flair"))
    return train, SliceSet(images[:4].clone(), labels[:4].clone(), brain[:4].clone(), ("t2", "flair"))


class RecordingLog:
    """Records what ``cached`` receives and returns, with the validation scores seen while the part trained:
    a part kept by its validation score is shaped by whatever changes those scores (the maps)."""

    def __init__(self, method, val: SliceSet):
        self.method, self.val, self.parts, self.scores = method, val, {}, []
        self.uses_objective: dict[str, bool] = {}

    def metric(self, name, value, step=None):
        pass

    def warn(self, message):
        pass

    def artifact_image(self, name, image):
        pass

    def evaluate(self, step):
        maps = self.method.predict(self.val.images).maps.detach()
        score = float((maps * torch.linspace(-1, 1, maps.numel()).view_as(maps)).sum())
        self.scores.append(score)
        return score

    def cached(self, part, key, train, uses_objective=False):
        self.scores = []
        state = train()
        self.parts[part] = (key, {"state": state, "validation_scores": list(self.scores)})
        self.uses_objective[part] = uses_objective
        return state


def _fit(cls, config, sets, with_flags=False):
    train, val = sets
    if cls.supervision.value == "none":
        train = train.healthy()
    seed_everything(0)
    method = cls(config, device="cpu", modalities=train.modalities, seed=0)
    log = RecordingLog(method, val)
    try:
        method.fit(train, val, log)
    except Exception as exc:  # a perturbation that makes the fit fail (e.g. divergence) is a result too
        return {"failed": (type(exc).__name__, str(exc)[:80])}
    return log.parts if not with_flags else (log.parts, log.uses_objective)


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


METHODS = [name for name in PLUGINS.methods.names() if name not in NO_PARTS]


def test_every_built_in_method_is_covered():
    builtin = {n for n in PLUGINS.methods.names() if PLUGINS.methods.get(n).__module__.startswith("lesionbench.")}
    assert builtin <= set(TINY) | NO_PARTS, f"add {sorted(builtin - set(TINY) - NO_PARTS)} to TINY or NO_PARTS"


@pytest.mark.parametrize("name", sorted(NO_PARTS))
def test_methods_without_parts_cache_none(name, tiny_sets):
    cls = PLUGINS.methods.get(name)
    parts = _fit(cls, cls.make_config("smoke"), tiny_sets)
    assert parts == {}, f"{name} caches {sorted(parts)}: give it a TINY budget and check its keys"


@pytest.mark.parametrize("name", sorted(set(METHODS) & set(TINY)))
def test_a_part_key_changes_exactly_when_the_trained_part_does(name, tiny_sets):
    cls = PLUGINS.methods.get(name)
    base_values = {**cls.profiles["smoke"], **TINY[name]}
    baselines: dict = {}
    problems = []
    for field in dataclasses.fields(cls.Config):
        if (name, field.name) in FIXED:
            continue
        context = {**CONTEXT.get(field.name, {}), **METHOD_CONTEXT.get((name, field.name), {})}
        context = {k: v for k, v in context.items() if k in {f.name for f in dataclasses.fields(cls.Config)}}
        base_config = cls.make_config("smoke", {**base_values, **context})
        old = getattr(base_config, field.name)
        new = _perturbed(field.name, old)
        if field.name == "widths" and hasattr(base_config, "attention"):
            new = tuple(2 * v for v in old)
        if new == old:
            problems.append(f"{field.name}: the perturbation leaves {old!r} unchanged")
            continue
        context_key = repr(sorted(context.items()))
        if context_key not in baselines:
            baselines[context_key] = _fit(cls, base_config, tiny_sets)
        before = baselines[context_key]
        assert "failed" not in before, f"{name}: the unperturbed fit failed: {before['failed']} (context {context})"
        try:
            config = cls.make_config("smoke", {**base_values, **context, field.name: new})
            cls(config, device="cpu", modalities=("t2", "flair"), seed=0)  # the method's own checks
        except (TypeError, ValueError) as exc:
            problems.append(f"{field.name}={new!r} is not a valid value ({exc}): add a perturbation to PERTURB")
            continue
        after = _fit(cls, config, tiny_sets)
        if "failed" in after:
            continue  # no part was cached: nothing to compare (the key cannot have been reused either)
        for part, (key, state) in before.items():
            if part not in after:
                continue
            key2, state2 = after[part]
            key_changed, state_changed = not _same(key, key2), not _same(state, state2)
            if state_changed and not key_changed:
                problems.append(f"{field.name}: changes the trained {part!r} but not its cache key (stale reuse)")
            if key_changed and not state_changed:
                problems.append(f"{field.name}: changes the {part!r} key but not its trained state (needless retraining)")
    assert not problems, f"{name}:\n  " + "\n  ".join(problems)


@pytest.mark.parametrize("name", sorted(set(METHODS) & set(TINY)))
def test_a_part_kept_on_validation_scores_is_cached_per_objective(name, tiny_sets):
    """A part whose training called evaluate (it keeps its best checkpoint on the validation objective) is
    declared ``uses_objective``, so a run under another objective does not reuse a checkpoint chosen on this
    one; a part that never evaluates is not, so runs under any objective share it."""
    cls = PLUGINS.methods.get(name)
    fields = {f.name for f in dataclasses.fields(cls.Config)}
    evaluating = 0
    for context in ({}, {"eval_every": 1, "keep_best_from": 0}):  # where the method can evaluate, both ways
        config = cls.make_config("smoke", {**cls.profiles["smoke"], **TINY[name], **{k: v for k, v in context.items() if k in fields}})
        parts, flags = _fit(cls, config, tiny_sets, with_flags=True)
        assert parts, f"{name}: no part cached"
        for part, (_, entry) in parts.items():
            evaluating += bool(entry["validation_scores"])
            assert flags[part] == bool(entry["validation_scores"]), (
                f"{name}: {part!r} {'evaluates' if entry['validation_scores'] else 'never evaluates'} while training "
                f"({context or 'smoke'}) but uses_objective={flags[part]}")
    # the check saw an evaluating part where there is one (fanogan evaluates while training its encoder, not cached)
    assert bool(evaluating) == (name in ("wargnier", "saliency"))
