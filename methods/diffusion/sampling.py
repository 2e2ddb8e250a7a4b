"""Diffusion math as small pure functions, named after the papers' words.

References: Ho et al. 2020 (DDPM), Song et al. 2021 (DDIM), Nichol & Dhariwal 2021 (improved DDPM,
learned variances), Dhariwal & Nichol 2021 (classifier guidance), Wolleb et al. 2022 (their Sec. 2.1:
DDIM encoding to level L, then guided DDIM decoding).

Conventions: images lie in [-1, 1]; ``alphas_cumprod[t]`` is alpha-bar_t for t = 0 .. T-1 (MONAI's
linear schedule); the input image is treated as the sample at t = 0, so encoding and decoding run over
the same grid of times ``[0, stride, 2 stride, ..., L]``. A model is passed as a callable
``eps(x, t) -> epsilon`` with ``t`` an int64 tensor [B].

Against the authors' code (JuliaWolleb/diffusion-anomaly, ``gaussian_diffusion.py``,
``ddim_sample_loop_known``), cross-checked numerically (docs/calibration.md#wolleb). The same: the guidance
eps - sqrt(1 - abar_t) s grad_x log p(healthy | x_t) with the gradient taken at x_t and the model's own t;
clipping the model's x0 to [-1, 1] with eps re-derived from it (their ``p_mean_variance`` with
``clip_denoised``) while encoding and decoding; and, by default (``clip_x0 = "unguided"``), the guided
step's order: clip the unguided x0, re-derive eps, add the guidance, and leave the guided x0 unclipped
(their ``condition_score2`` then ``ddim_sample``). Ours: ``clip_x0 = "guided"`` (clip the guided x0,
eps re-derived: this module's earlier order); the symmetric grid (their encoder starts at t = 1
and takes L - 1 steps, their decoder starts at L - 2 and ends at abar = 1: index artefacts of their
loops); starting the encoding from x itself (their code first noises it to t = 0, N(0, 0.01^2)); with
skipped timesteps the classifier gets the original t (theirs, respaced, gets the respaced index).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
GradFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def linear_schedule(timesteps: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """(betas, alphas_cumprod) of the linear schedule, beta 1e-4 -> 2e-2 (Ho et al. 2020, Sec. 4), from MONAI."""
    from monai.networks.schedulers import DDPMScheduler  # lazy: importing monai takes seconds

    scheduler = DDPMScheduler(num_train_timesteps=timesteps, schedule="linear_beta")
    return scheduler.betas.double().float(), scheduler.alphas_cumprod.double().float()


def ddim_times(level: int, stride: int) -> list[int]:
    """The time grid ``[0, stride, ..., level]`` (the last gap shorter when stride does not divide level)."""
    if level < 1 or stride < 1:
        raise ValueError(f"noise level ({level}) and stride ({stride}) must be >= 1")
    times = list(range(0, level, stride))
    return times + [level]


def q_sample(x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    # x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps  (Ho et al. 2020, eq. 4)
    abar = alphas_cumprod.to(x0.device)[t].view(-1, *([1] * (x0.dim() - 1)))
    return abar.sqrt() * x0 + (1 - abar).sqrt() * noise


def predicted_x0(x_t: torch.Tensor, eps: torch.Tensor, abar_t: float, clip: bool) -> tuple[torch.Tensor, torch.Tensor]:
    # x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)  (DDIM, eq. 9); clipped to [-1, 1] with eps re-derived, as guided-diffusion does for the model's x0
    x0 = (x_t - math.sqrt(1 - abar_t) * eps) / math.sqrt(abar_t)
    if clip:
        x0 = x0.clamp(-1, 1)
        eps = (x_t - math.sqrt(abar_t) * x0) / math.sqrt(1 - abar_t)
    return x0, eps


def ddim_step(x_t: torch.Tensor, eps: torch.Tensor, abar_t: float, abar_next: float, clip: bool = True) -> torch.Tensor:
    # x_next = sqrt(abar_next) x0_hat + sqrt(1 - abar_next) eps  (DDIM, eq. 12 with sigma = 0); either direction in time
    x0, eps = predicted_x0(x_t, eps, abar_t, clip)
    return math.sqrt(abar_next) * x0 + math.sqrt(1 - abar_next) * eps


def _at(t: int, like: torch.Tensor) -> torch.Tensor:
    return torch.full((like.shape[0],), t, dtype=torch.long, device=like.device)


def _ddim_encode_steps(eps_fn: EpsFn, x0: torch.Tensor, times: Sequence[int], alphas_cumprod: torch.Tensor, clip: bool):
    # the reversed DDIM step, x_t -> x_{t+stride} (Song et al. 2021, eq. 13; Wolleb et al. 2022, Sec. 2.1), one latent per time after times[0]
    abar = alphas_cumprod.tolist()
    x = x0
    for t, t_next in zip(times[:-1], times[1:]):
        with torch.no_grad():  # per step: a generator must not leave grad mode switched off in its caller
            x = ddim_step(x, eps_fn(x, _at(t, x)).float(), abar[t], abar[t_next], clip)
        yield x


def ddim_encode(eps_fn: EpsFn, x0: torch.Tensor, times: Sequence[int], alphas_cumprod: torch.Tensor, clip: bool = True) -> torch.Tensor:
    """Deterministic DDIM encoding of x0 (at times[0]) to level times[-1]; keeps only the current latent."""
    x = x0
    for x in _ddim_encode_steps(eps_fn, x0, times, alphas_cumprod, clip):
        pass
    return x


def ddim_encode_trajectory(eps_fn: EpsFn, x0: torch.Tensor, times: Sequence[int], alphas_cumprod: torch.Tensor,
                           clip: bool = True) -> list[torch.Tensor]:
    """The same encoding's latents at every time of ``times`` (the first is x0 itself; len(times) tensors)."""
    return [x0, *_ddim_encode_steps(eps_fn, x0, times, alphas_cumprod, clip)]


def guided_eps(eps: torch.Tensor, grad_log_p: torch.Tensor, abar_t: float, scale: float) -> torch.Tensor:
    # eps_hat = eps - sqrt(1 - abar_t) * s * grad_x log p(y | x_t)  (Dhariwal & Nichol 2021, eq. 14 / Alg. 2)
    return eps - math.sqrt(1 - abar_t) * scale * grad_log_p


#: which x0 the guided decoding clips: "unguided" (the authors' code) or "guided" (this module's earlier order)
CLIP_X0 = ("unguided", "guided")


def guided_ddim_step(x_t: torch.Tensor, eps: torch.Tensor, grad_log_p: torch.Tensor, abar_t: float, abar_prev: float,
                     scale: float, clip: bool = True, clip_x0: str = "unguided") -> torch.Tensor:
    """One guided DDIM step x_t -> x_prev. ``clip_x0 = "unguided"`` (the authors' ``condition_score2`` and
    ``ddim_sample``): the model's x0 is clipped and eps re-derived, the guidance added to that eps, and the
    guided x0 left unclipped. ``"guided"``: the guidance is added to the model's eps and the guided x0 is
    clipped (eps re-derived). Without ``clip`` both are the plain guided step."""
    if clip_x0 not in CLIP_X0:
        raise ValueError(f"clip_x0 must be one of {CLIP_X0}, not {clip_x0!r}")
    if clip_x0 == "unguided":
        _, eps = predicted_x0(x_t, eps, abar_t, clip)
        return ddim_step(x_t, guided_eps(eps, grad_log_p, abar_t, scale), abar_t, abar_prev, clip=False)
    return ddim_step(x_t, guided_eps(eps, grad_log_p, abar_t, scale), abar_t, abar_prev, clip)


def guided_ddim_decode(eps_fn: EpsFn, x_level: torch.Tensor, times: Sequence[int], alphas_cumprod: torch.Tensor,
                       grad_fn: GradFn | None = None, scale: float = 0.0, clip: bool = True,
                       mask: torch.Tensor | None = None, trajectory: Sequence[torch.Tensor] | None = None,
                       clip_x0: str = "unguided") -> torch.Tensor:
    """DDIM decoding from times[-1] back to times[0] with classifier guidance (Wolleb et al. 2022, Alg. 1);
    scale 0 never calls grad_fn (and then ``clip_x0`` changes nothing). ``clip_x0``: which x0 a guided step
    clips (:func:`guided_ddim_step`). With ``mask`` (in [0, 1], broadcastable to x) and the encoding's
    ``trajectory`` (``ddim_encode_trajectory`` over the same times), each step keeps the encoded latent
    where the mask is 0: x_t <- m x_t + (1 - m) x_t^enc, so the output equals the input there (the
    masked inpainting of Dif-fuse, Fontanella et al. 2024)."""
    if (mask is None) != (trajectory is None):
        raise ValueError("a masked decoding needs both the mask and the encoding trajectory")
    if trajectory is not None and len(trajectory) != len(times):
        raise ValueError(f"the trajectory has {len(trajectory)} latents for {len(times)} times")
    if clip_x0 not in CLIP_X0:
        raise ValueError(f"clip_x0 must be one of {CLIP_X0}, not {clip_x0!r}")
    abar = alphas_cumprod.tolist()
    x = x_level
    for i in range(len(times) - 1, 0, -1):
        t, t_prev = times[i], times[i - 1]
        tt = _at(t, x)
        with torch.no_grad():
            eps = eps_fn(x, tt).float()
        if scale != 0 and grad_fn is not None:
            x = guided_ddim_step(x, eps, grad_fn(x, tt).float(), abar[t], abar[t_prev], scale, clip, clip_x0)
        else:
            x = ddim_step(x, eps, abar[t], abar[t_prev], clip)
        if mask is not None:
            x = mask * x + (1 - mask) * trajectory[i - 1]
    return x


def class_log_prob_gradient(logits_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], target: int) -> GradFn:
    """grad_x log p(target | x_t, t) of a noise-conditioned classifier, as a GradFn (the only gradient at inference)."""

    def grad(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            log_p = torch.log_softmax(logits_fn(x_in, t).float(), dim=1)[:, target].sum()
            (g,) = torch.autograd.grad(log_p, x_in)
        return g

    return grad


# -- training losses -------------------------------------------------------------------------------


def _normal_kl(mean1, logvar1, mean2, logvar2):
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    # the decoder term L_0 on 256 bins of [-1, 1] (Ho et al. 2020, eq. 13), as guided-diffusion computes it
    centred, inv_std = x - mean, torch.exp(-log_scale)
    cdf_plus = torch.special.ndtr(inv_std * (centred + 1 / 255))
    cdf_min = torch.special.ndtr(inv_std * (centred - 1 / 255))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1 - cdf_min).clamp(min=1e-12))
    log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))


def hybrid_loss(output: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
                betas: torch.Tensor, alphas_cumprod: torch.Tensor, vlb_weight: float = 0.001) -> tuple[torch.Tensor, torch.Tensor]:
    """L_hybrid = L_simple + lambda L_vlb (Nichol & Dhariwal 2021, eq. 16), for a network whose output is
    [eps, v] along channels: Sigma = exp(v' log beta_t + (1 - v') log beta~_t), v' = (v + 1) / 2 (their eq. 15).
    The mean is detached in L_vlb (their Sec. 3.1). Returns (loss, E_t[L_t]) with L_t in bits per dimension."""
    c = x0.shape[1]
    eps, v = output[:, :c].float(), output[:, c:].float()
    simple = (eps - noise).square().mean()
    dev = x0.device
    betas, abar = betas.to(dev), alphas_cumprod.to(dev)
    abar_prev = torch.cat([torch.ones(1, device=dev), abar[:-1]])
    shape = (-1, 1, 1, 1)
    b, a, ap = betas[t].view(shape), abar[t].view(shape), abar_prev[t].view(shape)
    # true posterior q(x_{t-1} | x_t, x_0) (Ho et al. 2020, eq. 7); beta~_0 = 0, so its log is clipped at beta~_1 as guided-diffusion does
    post_var = b * (1 - ap) / (1 - a)
    beta_tilde_1 = (betas[1] * (1 - abar[0]) / (1 - abar[1])).to(dev)
    post_logvar = torch.log(torch.maximum(post_var, beta_tilde_1))
    post_mean = (ap.sqrt() * b / (1 - a)) * x0 + ((1 - b).sqrt() * (1 - ap) / (1 - a)) * x_t
    frac = (v + 1) / 2
    model_logvar = frac * torch.log(b) + (1 - frac) * post_logvar
    x0_hat = ((x_t - (1 - a).sqrt() * eps.detach()) / a.sqrt()).clamp(-1, 1)
    model_mean = (ap.sqrt() * b / (1 - a)) * x0_hat + ((1 - b).sqrt() * (1 - ap) / (1 - a)) * x_t
    kl = _normal_kl(post_mean, post_logvar, model_mean, model_logvar).mean(dim=(1, 2, 3))
    nll = -discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_logvar).mean(dim=(1, 2, 3))
    vlb = torch.where(t == 0, nll, kl).mean() / math.log(2)  # bits per dimension, as guided-diffusion
    # L_vlb sums T per-step terms, so lambda L_vlb = lambda T E_t[L_t] (= E_t[L_t] for T = 1000, as the authors' code adds it)
    return simple + vlb_weight * len(betas) * vlb, vlb
