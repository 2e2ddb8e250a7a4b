"""Classifier-free guidance (Ho & Salimans 2022, "Classifier-free diffusion guidance") as small pure
functions: label dropout while training, the guided eps while decoding.

Only what differs from ``wolleb`` lives here; the networks, schedule, training loop and DDIM steps are the
shared ones of ``lesionbench.methods.diffusion``. A labelled model is passed as ``eps(x, t, y) -> epsilon`` with ``t`` and
``y`` int64 tensors [B]; the unconditional model is the same network given the null label.
"""

from __future__ import annotations

from typing import Callable

import torch

LabelledEps = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def drop_labels(labels: torch.Tensor, rate: float, null_label: int, generator: torch.Generator) -> torch.Tensor:
    # each label independently replaced by the null label with probability p_uncond (Ho & Salimans 2022, Alg. 1)
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"label dropout rate must lie in [0, 1], not {rate}")
    dropped = torch.rand(labels.shape, generator=generator) < rate
    return torch.where(dropped, torch.full_like(labels, null_label), labels)


class LabelDropout:
    """Training labels as ``train_denoiser`` reads them (``labels[index]``): every read drops labels anew,
    with ``generator`` (the method's own stream, so the batch order and the noise draws are untouched)."""

    def __init__(self, labels: torch.Tensor, rate: float, null_label: int, generator: torch.Generator):
        drop_labels(labels[:0], rate, null_label, generator)  # checks the rate before training starts
        self.labels, self.rate, self.null_label, self.generator = labels, rate, null_label, generator

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index) -> torch.Tensor:
        return drop_labels(self.labels[index], self.rate, self.null_label, self.generator)


def classifier_free_eps(eps_cond: torch.Tensor, eps_uncond: torch.Tensor, w: float) -> torch.Tensor:
    # eps_hat = (1 + w) eps(x_t, c) - w eps(x_t, null)  (Ho & Salimans 2022, eq. 6)
    return (1 + w) * eps_cond - w * eps_uncond


def classifier_free_eps_fn(model: LabelledEps, target: int, null_label: int, w: float) -> EpsFn:
    """``eps(x, t)`` guided towards class ``target`` with weight ``w``: the conditional and the unconditional
    pass run as one batch of 2 B (one network call per step). ``w = 0`` is the conditional model alone (one
    pass of B)."""

    def eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        y = torch.full_like(t, target)
        if w == 0:
            return model(x, t, y)
        both = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, torch.full_like(t, null_label)]))
        eps_cond, eps_uncond = both.chunk(2)
        return classifier_free_eps(eps_cond, eps_uncond, w)

    return eps


def labelled_eps_fn(model: LabelledEps, label: int) -> EpsFn:
    """``eps(x, t)`` of ``model`` conditioned on one ``label`` (the null label: the unconditional model)."""
    return lambda x, t: model(x, t, torch.full_like(t, label))
