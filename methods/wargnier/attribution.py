"""Gradient attributions of the lesion logit, and the attribution constraint of Wargnier-Dauchelle et al.

Wargnier-Dauchelle, Grenier, Durand-Dubief, Cotton and Sdika (2023), "A Weakly Supervised Gradient
Attribution Constraint for Interpretable Classification and Anomaly Detection", IEEE TMI 42(11).

Every function here is pure: it takes a ``logit_fn`` (images [B, C, H, W] -> one lesion logit per image,
[B]) and tensors, and returns tensors. Attributions are taken of ``logit_fn(x).sum()`` with respect to x:
since the classifier has no layer that mixes samples (no batch norm, design §3 of the method), row b of
the gradient is d f(x_b) / d x_b, the per-image attribution.

The paper's: the constraint (healthy images: every brain voxel's attribution must push the decision
towards "healthy"), its BCE-with-logits form against target 0 averaged over the constrained entries
(``BCEwL`` in the authors' ``loss.py``), the squared form sum A^2 (their ``ross`` option, after Ross et al.
2017: pulls A to zero instead of below it), the plain gradient as the default attribution, double
backpropagation, expected gradients as an option.

Ours: the attribution's scale in the BCE form (``scale = "rms"``, the default), the squared form's sum per
healthy slice averaged over healthy slices (theirs: summed over the batch), and the integrated gradients
used at inference only. Why the scale: the attribution of a logit averaged over a map is
O(1 / number of input entries), tiny with our network before and after training, so the authors' BCE stays in
its linear range, softplus(A) ~ ln 2 + A / 2: it acts on the mean attribution only (every voxel weighs 1/2
whatever its sign), its value stays at ln 2 and its gradient is a negligible share of the classification's
(the measured sizes: docs/calibration.md#wargnier-and-saliency). Dividing each healthy
slice's attributions by their root mean square over its constrained entries (inside the graph: the
constraint then depends on the sign pattern of A, not on its size) puts A on a unit scale where softplus
weighs each voxel by sigmoid(A / rms): positive voxels are pushed down hardest. The value runs from ~0.8
(random signs) to its floor softplus(-1) = 0.31 (every entry equally negative). ``scale = "none"`` is the
authors' raw scale. The squared form keeps the raw scale (dividing A by its own size would make it
constant) and needs its own lambda range. How strongly the constraint weighs (its gradient grows as
1 / |A|) is the training loop's business: ``wargnier``'s ``constraint_weighting``.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

LogitFn = Callable[[torch.Tensor], torch.Tensor]

#: attribution types usable in training (the constraint) and at inference (the map)
TRAIN_ATTRIBUTIONS = ("gradient", "input_x_gradient", "expected_gradients")
MAP_ATTRIBUTIONS = ("gradient", "input_x_gradient", "expected_gradients", "integrated_gradients")
CONSTRAINT_FORMS = ("bce", "squared")
#: the BCE form's attribution scale: "rms" (ours: per healthy slice, A / rms(A)) or "none" (the authors')
CONSTRAINT_SCALES = ("rms", "none")


def input_gradient(logit_fn: LogitFn, x: torch.Tensor, create_graph: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(d f(x) / d x [B, C, H, W], f(x) [B]). With ``create_graph`` the gradient stays differentiable with
    respect to the network weights: double backpropagation (the paper's training; Captum cannot do it)."""
    if not x.requires_grad:
        x = x.detach().requires_grad_(True)
    logits = logit_fn(x)
    (grad,) = torch.autograd.grad(logits.sum(), x, create_graph=create_graph)
    return grad, logits


def gradient_attribution(logit_fn: LogitFn, x: torch.Tensor, create_graph: bool = False):
    """The plain gradient A = d f / d x (the paper's default). Returns (A, f(x))."""
    return input_gradient(logit_fn, x, create_graph)


def input_x_gradient_attribution(logit_fn: LogitFn, x: torch.Tensor, create_graph: bool = False):
    """A = x * d f / d x: the gradient against the zero baseline, which is the background value of the
    normalised images (0 outside the brain). Returns (A, f(x))."""
    x = x.detach().requires_grad_(True)
    grad, logits = input_gradient(logit_fn, x, create_graph)
    return x.detach() * grad, logits


def expected_gradients_attribution(logit_fn: LogitFn, x: torch.Tensor, references: torch.Tensor,
                                   alpha: torch.Tensor, create_graph: bool = False):
    """One Monte-Carlo sample of expected gradients (Erion et al. 2021), as the paper uses it:
    A = (x - r) * d f / d x evaluated at r + alpha (x - r), with r a reference image [B, C, H, W] and
    alpha [B] in [0, 1]. Averaging calls over random (r, alpha) gives the expectation.
    Returns (A, f at the interpolated point)."""
    a = alpha.reshape(-1, 1, 1, 1).to(x)
    delta = x - references
    point = (references + a * delta).detach().requires_grad_(True)
    grad, logits = input_gradient(logit_fn, point, create_graph)
    return delta * grad, logits


def integrated_gradients_attribution(logit_fn: LogitFn, x: torch.Tensor, baseline: torch.Tensor | None = None,
                                     steps: int = 16) -> torch.Tensor:
    """Integrated gradients (Sundararajan et al. 2017), midpoint rule with ``steps`` points from the
    ``baseline`` (default zero, the background value) to x. Inference only (no graph kept)."""
    baseline = torch.zeros_like(x) if baseline is None else baseline
    delta = x - baseline
    total = torch.zeros_like(x)
    for k in range(steps):
        point = (baseline + (k + 0.5) / steps * delta).detach().requires_grad_(True)
        grad, _ = input_gradient(logit_fn, point, create_graph=False)
        total += grad
    return delta * total / steps


def sample_references(pool: torch.Tensor, n: int, generator: torch.Generator | None = None,
                      zero_fraction: float = 0.0) -> torch.Tensor:
    """n references drawn from ``pool`` [M, C, H, W] (the batch itself, or a background set of healthy
    slices), with probability ``zero_fraction`` replaced by the zero (background) image."""
    index = torch.randint(len(pool), (n,), generator=generator)
    refs = pool[index.to(pool.device)].clone()
    if zero_fraction > 0:
        zero = torch.rand(n, generator=generator) < zero_fraction
        refs[zero.to(refs.device)] = 0
    return refs


def constrained_voxels(brain: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """bool [B, H, W]: the brain voxels of healthy slices, the only voxels the constraint sees
    (voxels of lesion slices are unconstrained: we do not know where their lesions are)."""
    return brain.bool() & (labels == 0).reshape(-1, 1, 1)


def check_constraint(form: str, scale: str) -> None:
    """A clear error for an unknown form or scale, or a combination that means nothing."""
    if form not in CONSTRAINT_FORMS:
        raise ValueError(f"constraint form must be one of {CONSTRAINT_FORMS}, not {form!r}")
    if scale not in CONSTRAINT_SCALES:
        raise ValueError(f"constraint scale must be one of {CONSTRAINT_SCALES}, not {scale!r}")
    if form == "squared" and scale != "none":
        raise ValueError("the squared constraint is a penalty on A's size: dividing A by its own size would make it "
                         "constant; use constraint_scale 'none' with it")


def rms_normalised(attribution: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A / rms(A) per slice, the root mean square taken over the slice's entries where ``mask`` is true
    (slices without any keep their values); the division stays in the graph."""
    m = mask.to(attribution.dtype)
    count = m.sum(dim=(1, 2, 3))
    mean_square = (attribution.square() * m).sum(dim=(1, 2, 3)) / count.clamp_min(1)
    # clamped, not + eps: an exactly-zero attribution must not make sqrt's backward infinite
    rms = torch.where(count > 0, mean_square.clamp_min(1e-30).sqrt(), torch.ones_like(mean_square))
    return attribution / rms.view(-1, 1, 1, 1)


def attribution_constraint(attribution: torch.Tensor, brain: torch.Tensor, labels: torch.Tensor,
                           form: str = "bce", scale: str = "rms") -> torch.Tensor:
    """The constraint on attributions A [B, C, H, W] of the lesion logit, over every channel of the brain
    voxels of healthy slices (labels 0).

    ``bce``: BCE-with-logits of A against target 0, averaged over the constrained entries (the authors'
    form): softplus(A), which pushes every A below zero, i.e. towards "healthy". With ``scale = "rms"``
    (ours, module docstring) of A / rms(A), the rms per healthy slice over its constrained entries.
    ``squared``: sum of A^2 per healthy slice, averaged over healthy slices (the authors' ``ross`` form,
    raw scale only): pulls A to zero.
    Zero (still attached to the graph) when the batch holds no healthy slice.
    """
    check_constraint(form, scale)
    mask = constrained_voxels(brain, labels).unsqueeze(1).expand_as(attribution)
    if not bool(mask.any()):
        return attribution.sum() * 0.0
    if form == "bce":
        values = (rms_normalised(attribution, mask) if scale == "rms" else attribution)[mask]
        return F.binary_cross_entropy_with_logits(values, torch.zeros_like(values))
    n_healthy = int((labels == 0).sum())
    return attribution[mask].square().sum() / n_healthy


def classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """BCE-with-logits of the lesion logit against the image labels (0 healthy, 1 lesion)."""
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))


def constrained_loss(logit_fn: LogitFn, x: torch.Tensor, labels: torch.Tensor, brain: torch.Tensor,
                     lam: float, form: str = "bce", attribution: str = "gradient",
                     references: torch.Tensor | None = None, alpha: torch.Tensor | None = None, scale: str = "rms"):
    """Total loss = classification + lam * constraint (the paper's objective; ``scale``: the BCE form's, see
    :func:`attribution_constraint`). Returns
    (total, classification, constraint); the constraint is a detached zero when lam == 0 or the batch has
    no healthy slice, so that the unconstrained baseline costs one ordinary backward pass."""
    logits = logit_fn(x)
    cls = classification_loss(logits, labels)
    healthy = labels == 0
    if lam == 0 or not bool(healthy.any()):
        return cls, cls, torch.zeros((), device=x.device)
    # Attributions of the healthy slices only: the constraint sees nothing else, and the double
    # backpropagation (the expensive part) then runs over about half a balanced batch.
    xh, brain_h, labels_h = x[healthy], brain[healthy], labels[healthy]
    if attribution == "gradient":
        a, _ = gradient_attribution(logit_fn, xh, create_graph=True)
    elif attribution == "input_x_gradient":
        a, _ = input_x_gradient_attribution(logit_fn, xh, create_graph=True)
    elif attribution == "expected_gradients":
        if references is None or alpha is None:
            raise ValueError("expected gradients need references and alpha")
        a, _ = expected_gradients_attribution(logit_fn, xh, references[healthy], alpha[healthy], create_graph=True)
    else:
        raise ValueError(f"training attribution must be one of {TRAIN_ATTRIBUTIONS}, not {attribution!r}")
    constraint = attribution_constraint(a, brain_h, labels_h, form, scale)
    return cls + lam * constraint, cls, constraint


#: how the channels (modalities) of an attribution become one map
CHANNEL_REDUCTIONS = ("positive_sum", "sum_positive")


def anomaly_map(attribution: torch.Tensor, channels: str = "positive_sum") -> torch.Tensor:
    """[B, C, H, W] -> [B, H, W]: the positive attributions of the lesion logit (the paper: positive
    attributions are the anomaly). How modalities combine is ours: ``positive_sum`` sums each channel's
    positive part (a voxel counts when any modality pushes towards "lesion"); ``sum_positive`` takes the
    positive part of the channel sum (modalities pushing in opposite directions cancel)."""
    if channels == "positive_sum":
        return attribution.clamp_min(0).sum(dim=1)
    if channels == "sum_positive":
        return attribution.sum(dim=1).clamp_min(0)
    raise ValueError(f"map channels must be one of {CHANNEL_REDUCTIONS}, not {channels!r}")
