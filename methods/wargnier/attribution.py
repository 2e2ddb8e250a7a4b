"""Gradient attributions of the lesion logit, and the attribution constraint of Wargnier-Dauchelle et al.

Wargnier-Dauchelle, Grenier, Durand-Dubief, Cotton and Sdika (2023), "A Weakly Supervised Gradient
Attribution Constraint for Interpretable Classification and Anomaly Detection", IEEE TMI 42(11).

Every function here is pure: it takes a ``logit_fn`` (images [B, C, H, W] -> one lesion logit per image,
[B]) and tensors, and returns tensors. Attributions are taken of ``logit_fn(x).sum()`` with respect to x:
since the classifier has no layer that mixes samples (no batch norm, design §3 of the method), row b of
the gradient is d f(x_b) / d x_b, the per-image attribution.

The paper's: the constraint (healthy images: every brain voxel's attribution must push the decision
towards "healthy"), its BCE-with-logits form against target 0 (the authors' public loss code), the
plain gradient as the default attribution, double backpropagation, expected gradients as an option.
Ours: the squared form (sum of A^2, which pulls A to zero instead of below it), averaging over the
constrained entries (BCE) or per-slice sums averaged over healthy slices (squared), and the integrated
gradients used at inference only.
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


def attribution_constraint(attribution: torch.Tensor, brain: torch.Tensor, labels: torch.Tensor,
                           form: str = "bce") -> torch.Tensor:
    """The constraint on attributions A [B, C, H, W] of the lesion logit, over every channel of the brain
    voxels of healthy slices (labels 0).

    ``bce``: BCE-with-logits of A against target 0, averaged over the constrained entries (the authors'
    form): softplus(A), which pushes every A below zero, i.e. towards "healthy".
    ``squared``: sum of A^2 per healthy slice, averaged over healthy slices (ours): pulls A to zero.
    Zero (still attached to the graph) when the batch holds no healthy slice.
    """
    if form not in CONSTRAINT_FORMS:
        raise ValueError(f"constraint form must be one of {CONSTRAINT_FORMS}, not {form!r}")
    mask = constrained_voxels(brain, labels).unsqueeze(1).expand_as(attribution)
    if not bool(mask.any()):
        return attribution.sum() * 0.0
    values = attribution[mask]
    if form == "bce":
        return F.binary_cross_entropy_with_logits(values, torch.zeros_like(values))
    n_healthy = int((labels == 0).sum())
    return values.square().sum() / n_healthy


def classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """BCE-with-logits of the lesion logit against the image labels (0 healthy, 1 lesion)."""
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))


def constrained_loss(logit_fn: LogitFn, x: torch.Tensor, labels: torch.Tensor, brain: torch.Tensor,
                     lam: float, form: str = "bce", attribution: str = "gradient",
                     references: torch.Tensor | None = None, alpha: torch.Tensor | None = None):
    """Total loss = classification + lam * constraint (the paper's objective). Returns
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
    constraint = attribution_constraint(a, brain_h, labels_h, form)
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
