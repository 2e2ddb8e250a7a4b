"""``wolleb-wargnier``: the attribution constraint of Wargnier-Dauchelle et al. (2023) inside the diffusion
anomaly detection of Wolleb et al. (2022). The suite's research question: does the constraint make
diffusion-based detection better, for tumours and for MS lesions?

Papers: Wolleb, Bieder, Sandkühler and Cattin (2022), "Diffusion models for medical anomaly detection",
MICCAI; Wargnier-Dauchelle, Grenier, Durand-Dubief, Cotton and Sdika (2023), "A weakly supervised gradient
attribution constraint for interpretable classification and anomaly detection", IEEE TMI 42(11);
Fontanella et al. (2024), "Diffusion models for counterfactual generation and anomaly detection in brain
images" (Dif-fuse: the saliency map decides where the diffusion may edit).

The variant is a hyperparameter (``variant``; ``--set wolleb-wargnier.variant=guidance,masked,fusion`` gives
each its own row):

- ``guidance``: the noise-conditioned classifier that guides the DDIM decoding is trained with the attribution
  constraint. Its lesion logit is f(x_t, t) = logit_lesion - logit_healthy (the log-odds of the two-class
  head); on the healthy slices of each batch, the plain gradient A = d f / d x_t (the paper's default
  attribution) is constrained on the brain voxels with the paper's BCE form (A <= 0) or the authors' squared
  form (A -> 0), by double backpropagation, at the batch's noise levels t ~ U[0, T). As in ``wargnier`` (with the
  authors' scale the constraint made a negligible share of this classifier's gradient:
  docs/calibration.md#wolleb-wargnier), by default each healthy
  slice's A is divided by its rms (``constraint_scale = "rms"``) and the constraint's gradient is capped at
  ``constraint_weight`` x the cross-entropy's (``constraint_weighting = "capped_share"``; its weight re-estimated at
  step 1 and every ``log_every`` steps, where ``train/classifier_constraint_grad_share`` is logged); ``"fixed"``
  with scale ``"none"`` is the paper's objective.
  Map = |x - x_hat| summed over channels, as ``wolleb``.
- ``masked``: as ``guidance``, and the constrained classifier's attribution map at t = 0 decides where the
  decoding may change the image: m = clamp(a / a_q, 0, 1), widened by a max filter of radius
  ``mask_dilation`` px; every decoding step keeps the encoded latent where m = 0 (x <- m x + (1 - m) x^enc),
  so the output equals the input there and the map is 0.
- ``fusion``: as ``guidance``, and the map is the weighted geometric mean (r / r_q)^(1 - w) (a / a_q)^w of the
  residual r and the attribution map a, w = ``fusion_weight`` (w = 0.5 ranks voxels as the product r a does).

The attribution map a (ours): the positive part of (x - b) * d f / d x at t = 0, summed over channels, with b
= -1 the background value of the [-1, 1] scaling (input x gradient against the background, the ``wargnier``
default); ``map_attribution = "gradient"`` uses the plain gradient. a_q and r_q are the ``scale_quantile``
quantiles of a and r over the brain voxels of ``scale_slices`` training slices drawn with the run's seed: one
scale per trained model and dataset, never per slice or volume, so pooled thresholds keep their meaning.

Shared trained parts (design §3): the DDPM is ``wolleb``'s own part (``parts_owner = "wolleb"``, the same
part name and key), so a ``wolleb`` run on the same data, split and seed and this method train it once; the
constrained classifier is this method's part ``constrained_classifier``, shared by the three variants (its
key holds the classifier's and the constraint's hyperparameters, not the variant or the inference settings).

Ours, not the papers': the constraint on noisy inputs x_t (Wargnier-Dauchelle et al. constrain a classifier
of clean images), the log-odds as the lesion logit, the attribution map of a noise-conditioned classifier at
t = 0, the soft mask and its dilation (Dif-fuse thresholds and dilates its saliency map), the scales, and (as in
``wargnier``) the constraint's rms attribution scale and its capped gradient share.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lesionbench.method import SliceSet
from lesionbench.parts import part_key, shapes
from lesionbench.training import autocast, pad_to_multiple
from lesionbench.regularisation import TermWatch
from lesionbench.methods.wargnier import attribution as attr
from lesionbench.methods.wolleb.method import HEALTHY, LESION, Wolleb, WollebConfig
from lesionbench.methods.wargnier.method import CONSTRAINT_WEIGHTINGS
from lesionbench.methods.diffusion.base import BACKGROUND, NetworkInput
from lesionbench.methods.diffusion.training import Schedule, train_classifier

VARIANTS = ("guidance", "masked", "fusion")
CONSTRAINED = "constrained_classifier"  # this method's trained part: wolleb's classifier fields and the constraint's
MAP_ATTRIBUTIONS = ("input_x_gradient", "gradient")


@dataclass
class WollebWargnierConfig(WollebConfig):
    variant: str = "guidance"  # "guidance", "masked" or "fusion" (module docstring)
    # the constraint on the guiding classifier (Wargnier-Dauchelle et al.; the plain gradient, on x_t)
    # lambda (capped_share: the constraint's largest share of an update; wargnier's)
    constraint_weight: float = shapes(CONSTRAINED, default=0.1)
    constraint: str = shapes(CONSTRAINED, default="bce")  # "bce" (the authors': A <= 0) or "squared" (the authors' "ross": A -> 0)
    # bce: "rms" (ours: A / rms(A) per healthy slice, so it binds) or "none" (the authors')
    constraint_scale: str = shapes(CONSTRAINED, default="rms")
    # "fixed": loss = CE + lambda C (the paper's); "capped_share" (ours): CE + w C, w = min(1, lambda ||grad CE|| /
    # ||grad C||) re-estimated at step 1 and every log_every steps (C's gradient at most lambda x CE's)
    constraint_weighting: str = shapes(CONSTRAINED, default="capped_share")
    log_every: int = shapes(CONSTRAINED, default=10)  # also when the capped weight is re-estimated
    # the attribution map at t = 0 (masked, fusion)
    map_attribution: str = "input_x_gradient"  # against the background -1, or "gradient"
    mask_dilation: int = 1  # masked: max-filter radius of the mask, px
    fusion_weight: float = 0.5  # fusion: w, the attribution's weight in the geometric mean
    scale_quantile: float = 0.99  # the per-dataset scales a_q, r_q
    scale_slices: int = 32  # training slices the scales are computed from


class WollebWargnier(Wolleb):
    name = "wolleb-wargnier"
    description = ("Wolleb et al. 2022 guided by a classifier trained with the attribution constraint of "
                   "Wargnier-Dauchelle et al. 2023; variants: guidance, masked (Dif-fuse-style), fusion")
    Config = WollebWargnierConfig
    parts_owner = "wolleb"  # the DDPM is wolleb's part: trained once for both methods
    label_keys = ("variant",)  # rows: wolleb-wargnier[variant=...]
    profiles = {name: dict(values) for name, values in Wolleb.profiles.items()}

    def __init__(self, config, device="cpu", modalities=(), seed=0):
        super().__init__(config, device, modalities, seed)
        c = config
        if c.variant not in VARIANTS:
            raise ValueError(f"{self.name}: variant must be one of {VARIANTS}, not {c.variant!r}")
        try:
            attr.check_constraint(c.constraint, c.constraint_scale)
        except ValueError as exc:
            raise ValueError(f"{self.name}: {exc}") from None
        if c.map_attribution not in MAP_ATTRIBUTIONS:
            raise ValueError(f"{self.name}: map_attribution must be one of {MAP_ATTRIBUTIONS}, not {c.map_attribution!r}")
        if c.constraint_weight < 0:
            raise ValueError(f"{self.name}: constraint_weight must be >= 0")
        if c.constraint_weighting not in CONSTRAINT_WEIGHTINGS:
            raise ValueError(f"{self.name}: constraint_weighting must be one of {CONSTRAINT_WEIGHTINGS}, not {c.constraint_weighting!r}")
        if not 0.0 <= c.fusion_weight <= 1.0:
            raise ValueError(f"{self.name}: fusion_weight must lie in [0, 1], not {c.fusion_weight}")
        if not 0.0 < c.scale_quantile <= 1.0 or c.scale_slices < 1 or c.mask_dilation < 0:
            raise ValueError(f"{self.name}: scale_quantile must lie in (0, 1], scale_slices >= 1, mask_dilation >= 0")
        self.scales: dict[str, float] = {}  # "attribution" (a_q), "residual" (r_q)

    @classmethod
    def search_space(cls, trial, fixed=None):
        """``wolleb``'s inference settings and what the variant uses. With ``variant`` fixed by the study
        (``--set wolleb-wargnier.variant=masked``) only that variant's settings are tuned, so each variant keeps
        its own tuned row; else one study compares the variants. The constraint (form and capped share) is
        tuned with ``guidance``, and when the variant is open; ``masked`` and ``fusion`` with a fixed variant
        tune only inference settings, on the constrained classifier the study fixes (or the default), trained
        once and cached for every trial."""
        fixed = fixed or {}
        space = dict(Wolleb.search_space(trial))
        variant = fixed.get("variant")
        if variant is None:
            variant = space["variant"] = trial.suggest_categorical("variant", list(VARIANTS))
        if ("variant" not in fixed or variant == "guidance") and "constraint_weight" not in fixed:
            # the default form (bce, rms-scaled, capped share): its weight is a share of the update. Not the
            # squared form: it needs the authors' scale, where A ~ 1e-9 and a weight capped at 1 never binds
            # (docs/calibration.md#wolleb-wargnier); above ~0.3 the guiding classifier collapses at quick.
            space["constraint_weight"] = trial.suggest_float("constraint_weight", 0.02, 0.5, log=True)
        if variant in ("masked", "fusion"):
            space["map_attribution"] = trial.suggest_categorical("map_attribution", list(MAP_ATTRIBUTIONS))
        if variant == "masked":
            space["mask_dilation"] = trial.suggest_int("mask_dilation", 0, 3)
        if variant == "fusion":
            space["fusion_weight"] = trial.suggest_float("fusion_weight", 0.1, 0.9)
        return space

    # -- training ----------------------------------------------------------------------------------------

    def classifier_part(self, train: SliceSet, x: NetworkInput, labels: torch.Tensor, key: dict, schedule: Schedule, log) -> dict:
        c = self.config
        key = {**key, **part_key(c, CONSTRAINED)}

        watch = TermWatch("classifier_constraint")
        steps = itertools.count(1)
        capped = c.constraint_weighting == "capped_share"
        weight = [1.0 if capped else c.constraint_weight]  # capped: set at step 1, then every log_every steps

        def constraint(network, x_t, t, y, index):
            step = next(steps)
            brain = self._padded_brain(train.brain[index]).to(self.device)
            term = noisy_attribution_constraint(network, x_t, t, y, brain, c.constraint_weight,
                                                c.constraint, c.constraint_scale)
            if term is None:
                return None
            unweighted = term / c.constraint_weight
            logged = step % schedule.log_every == 0  # train_classifier logs the term itself at these steps
            if logged or (capped and step == 1):
                raw = classifier_gradient_share(network, x_t, t, y, unweighted)  # ||grad C|| / ||grad CE||
                if capped:
                    weight[0] = min(1.0, c.constraint_weight / raw) if raw > 0 else 1.0
                if logged:
                    log.metric("classifier_constraint_grad_share", weight[0] * raw, step)  # ||lambda grad C|| / ||grad CE||
                    watch.record(unweighted.item(), weight[0] * raw)
            return weight[0] * unweighted

        def train_part():
            state = train_classifier(self.classifier, x, labels, self.alphas_cumprod, schedule, self.device, log, "classifier",
                                     constraint, seed=self.seed)
            watch.check(log)
            return state

        return log.cached(CONSTRAINED, key, train_part)

    def _padded_brain(self, brain: torch.Tensor) -> torch.Tensor:
        return pad_to_multiple(brain.float().unsqueeze(1), self.multiple(), value=0.0).squeeze(1) > 0.5

    def fit(self, train: SliceSet, val: SliceSet, log) -> None:
        super().fit(train, val, log)
        self._fit_scales(train)
        for name, value in self.scales.items():
            log.metric(f"scale_{name}", value, 0)

    def _fit_scales(self, train: SliceSet) -> None:
        """a_q and r_q over the brain voxels of ``scale_slices`` training slices (the variant's own only)."""
        c = self.config
        self.scales = {}
        if c.variant == "guidance":
            return
        generator = torch.Generator().manual_seed(self.seed)
        pick = torch.randperm(len(train), generator=generator)[: c.scale_slices]
        chunks = [(self.to_network_input(train.images[part]), self._padded_brain(train.brain[part]).to(self.device))
                  for part in pick.split(8)]  # the sampler's memory grows with the batch
        self.scales["attribution"] = _scale(torch.cat([self.attribution_map(x)[b] for x, b in chunks]), c.scale_quantile)
        if c.variant == "fusion":
            self.scales["residual"] = _scale(torch.cat([self.residual(x)[b] for x, b in chunks]), c.scale_quantile)

    # -- inference ---------------------------------------------------------------------------------------

    def attribution_map(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] in [-1, 1] -> [B, H, W]: the positive attributions of the constrained classifier's lesion
        logit at t = 0, summed over channels (input x gradient against the background -1, or the gradient)."""
        t0 = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)

        def lesion_logit(z):
            logits = self.logits_fn(z, t0)
            return logits[:, LESION] - logits[:, HEALTHY]

        params = list(self.classifier.parameters())
        for p in params:  # gradients with respect to the input only
            p.requires_grad_(False)
        try:
            with torch.enable_grad():
                grad, _ = attr.gradient_attribution(lesion_logit, x)
        finally:
            for p in params:
                p.requires_grad_(True)
        a = grad if self.config.map_attribution == "gradient" else (x - BACKGROUND) * grad
        return attr.anomaly_map(a.detach(), "positive_sum")

    def edit_mask(self, x: torch.Tensor) -> torch.Tensor:
        """``masked``: [B, 1, H, W] in [0, 1], where the decoding may change the image."""
        c = self.config
        m = (self.attribution_map(x) / self.scales.get("attribution", 1.0)).clamp(0, 1).unsqueeze(1)
        if c.mask_dilation > 0:
            k = 2 * c.mask_dilation + 1
            m = F.max_pool2d(m, k, stride=1, padding=c.mask_dilation)
        return m

    def anomaly_maps(self, x: torch.Tensor) -> torch.Tensor:
        c = self.config
        if c.variant == "masked":
            return self.residual(x, mask=self.edit_mask(x))
        residual = self.residual(x)
        if c.variant == "guidance":
            return residual
        w = c.fusion_weight
        r = residual / self.scales.get("residual", 1.0)
        a = self.attribution_map(x) / self.scales.get("attribution", 1.0)
        return r.pow(1 - w) * a.pow(w)

    # -- checkpoints -------------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        state = super().state_dict()
        if state:
            state["scales"] = dict(self.scales)
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.scales = {k: float(v) for k, v in (state or {}).get("scales", {}).items()}


def noisy_attribution_constraint(network, x_t: torch.Tensor, t: torch.Tensor, labels: torch.Tensor, brain: torch.Tensor,
                                 weight: float, form: str = "bce", scale: str = "rms") -> torch.Tensor | None:
    """weight x the attribution constraint of Wargnier-Dauchelle et al. on a noise-conditioned classifier
    ``network(x_t, t) -> [B, 2]``: the plain gradient of the lesion logit (logit_lesion - logit_healthy) with
    respect to x_t, on the brain voxels of the healthy slices (labels 0) only, kept differentiable with respect to
    the weights (double backpropagation); ``scale`` as in ``attr.attribution_constraint`` ("rms": each healthy
    slice's attributions divided by their rms, ours). None when the weight is 0 or the batch holds no healthy slice."""
    healthy = labels == HEALTHY
    if weight == 0 or not bool(healthy.any()):
        return None
    t_h = t[healthy]

    def lesion_logit(z):
        with autocast(z.device):
            logits = network(z, t_h).float()
        return logits[:, LESION] - logits[:, HEALTHY]

    a, _ = attr.gradient_attribution(lesion_logit, x_t[healthy], create_graph=True)
    return weight * attr.attribution_constraint(a, brain[healthy], labels[healthy], form, scale)


def classifier_gradient_share(network, x_t: torch.Tensor, t: torch.Tensor, labels: torch.Tensor, term: torch.Tensor) -> float:
    """||grad term|| / ||grad cross-entropy|| on the weights, the cross-entropy recomputed on the same (x_t, t, labels)
    as ``train_classifier``'s; ``term``'s graph is kept for the training step's own backward pass."""
    params = [p for p in network.parameters() if p.requires_grad]
    with autocast(x_t.device):
        logits = network(x_t, t).float()
    g_cls = torch.autograd.grad(F.cross_entropy(logits, labels), params, allow_unused=True)
    g_term = torch.autograd.grad(term, params, retain_graph=True, allow_unused=True)
    norm = lambda gs: float(torch.sqrt(sum(g.float().square().sum() for g in gs if g is not None)))  # noqa: E731
    main = norm(g_cls)
    return norm(g_term) / main if main > 0 else float("inf")


def _scale(values: torch.Tensor, q: float) -> float:
    """The q-quantile of ``values`` (a subsample of 1e6 when larger), or the largest value when that is 0;
    1.0 when every value is 0 (the map then keeps its own units)."""
    values = values.detach().float().flatten()
    if values.numel() == 0:
        return 1.0
    scale = float(torch.quantile(values[:1_000_000], q))
    if scale <= 0:
        scale = float(values.max())
    return scale if scale > 0 else 1.0

