"""The f-AnoGAN algorithm as small functions: the WGAN-GP gradient penalty, the izi_f residuals, the
divergence check and the sample grid logged during training."""

from __future__ import annotations

import math

import numpy as np
import torch


class TrainingDiverged(RuntimeError):
    """A training stage produced a NaN, an Inf or an exploding loss. Raised so that the harness marks the
    cell FAILED instead of reporting numbers from a broken GAN (GANs fail silently otherwise)."""


def check_losses(stage: str, step: int, losses: dict[str, float], max_abs_loss: float) -> None:
    """Raise :class:`TrainingDiverged` naming the stage, the step and the loss when a loss is NaN/Inf or
    its magnitude exceeds ``max_abs_loss``."""
    for name, value in losses.items():
        if not math.isfinite(value) or abs(value) > max_abs_loss:
            raise TrainingDiverged(
                f"fanogan: {stage} diverged at step {step}: {name} = {value:.4g} (the limit is |loss| <= "
                f"{max_abs_loss:g}, fanogan.max_abs_loss); no results are reported from this run. "
                f"Try a lower learning rate or more critic steps."
            )


def gradient_penalty(critic, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """Gulrajani et al. 2017, Eq. 3: E[(||grad D(x_hat)||_2 - 1)^2] at x_hat uniformly between real and fake."""
    alpha = torch.rand(real.shape[0], 1, 1, 1, device=real.device, dtype=real.dtype)
    between = (real + alpha * (fake - real)).requires_grad_(True)
    value, _ = critic(between)
    (grad,) = torch.autograd.grad(value.sum(), between, create_graph=True)
    norm = (grad.flatten(1).square().sum(dim=1) + 1e-12).sqrt()  # the epsilon keeps the gradient finite at 0
    return (norm - 1).square().mean()


def izi_f_residuals(x, x_hat, features_x, features_x_hat) -> tuple[torch.Tensor, torch.Tensor]:
    """Schlegl et al. 2019, izi_f: per image, the mean squared image residual (1/n ||x - G(E(x))||^2) and the
    mean squared critic-feature residual (1/n_d ||f(x) - f(G(E(x)))||^2). The training loss and the anomaly
    score are both image + kappa * feature."""
    image = (x - x_hat).square().flatten(1).mean(dim=1)
    feature = (features_x - features_x_hat).square().flatten(1).mean(dim=1)
    return image, feature


def image_grid(*panels: torch.Tensor, gap: int = 2) -> np.ndarray:
    """uint8 [H', W'] for MLflow: one row per image, its channels side by side; panels (e.g. inputs and
    their reconstructions) side by side, ``gap`` pixels apart. Each panel: [N, C, H, W] in [0, 1]."""
    columns = []
    for panel in panels:
        p = panel.detach().float().cpu().clamp(0, 1)
        n, c, h, w = p.shape
        columns.append(p.permute(0, 2, 1, 3).reshape(n * h, c * w))  # rows: images; columns: channels
        columns.append(torch.ones(n * h, gap))
    grid = torch.cat(columns[:-1], dim=1)
    return (grid.numpy() * 255).round().astype(np.uint8)
