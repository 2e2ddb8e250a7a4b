"""Training loops of a DDPM and of a noise-conditioned classifier (``wolleb``, ``wolleb-wargnier``, ``ddpm``,
``cfg-diffusion``).

Both take images in [-1, 1] as an indexable ``x`` (``x[index]`` gives a batch: a tensor, or a
:class:`~lesionbench.methods.diffusion.base.NetworkInput` converting a streamed split batch by batch) and
the run seed, which orders the batches; both return plain state dicts (for ``FitLog.cached``)."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lesionbench.methods.diffusion.sampling import hybrid_loss, q_sample
from lesionbench.training import autocast, out_of_time, shuffled_batches


@dataclass
class Schedule:
    """Optimisation budget of one part: steps, batch, learning rate, an optional wall-clock cap, EMA decay."""

    steps: int
    batch_size: int
    lr: float
    max_minutes: float = 0.0
    ema: float = 0.0  # 0 = no EMA; the paper uses 0.9999
    log_every: int = 10
    max_t: int = 0  # train on t ~ U{0, ..., max_t} only; 0 = U[0, T) (the papers)


def check_max_t(owner: str, key: str, max_t: int, noise_level: int, timesteps: int) -> None:
    """A network trained on t <= ``max_t`` only (0 = all) must cover the sampler's noise level L."""
    if max_t and not noise_level <= max_t < timesteps:
        raise ValueError(f"{owner}: {key} {max_t} must lie in [noise_level ({noise_level}), {timesteps}) "
                         "(the sampler would ask for timesteps the network was not trained on), or be 0 (all)")


def _timesteps(schedule: Schedule, timesteps: int) -> int:
    """The exclusive upper bound of the training timesteps."""
    if schedule.max_t < 0 or schedule.max_t >= timesteps:
        raise ValueError(f"max_t must lie in [0, {timesteps}) (0 = all timesteps), not {schedule.max_t}")
    return schedule.max_t + 1 if schedule.max_t else timesteps


def _cpu_state(network) -> dict:
    return {k: v.detach().cpu().clone() for k, v in network.state_dict().items()}


def train_denoiser(network, x: torch.Tensor, labels: torch.Tensor | None, betas: torch.Tensor, alphas_cumprod: torch.Tensor,
                   schedule: Schedule, learn_sigma: bool, vlb_weight: float, device: torch.device, log, prefix: str,
                   *, seed: int) -> dict:
    """epsilon-MSE (Ho et al. 2020, L_simple) or, with ``learn_sigma``, the hybrid loss; t ~ U[0, T), or
    U{0, ..., schedule.max_t} when set (a sampler that never goes above L needs no larger t). ``labels``
    condition the network (class-conditional DDPM) unless None; ``seed`` (the run seed) orders the batches.
    Returns the (EMA) weights."""
    network.to(device).train()
    optimizer = torch.optim.AdamW(network.parameters(), lr=schedule.lr, weight_decay=0.0)
    ema = copy.deepcopy(network).eval() if schedule.ema > 0 else None
    timesteps = _timesteps(schedule, len(betas))
    started = time.monotonic()
    batches = shuffled_batches(len(x), schedule.batch_size, seed)
    for step in range(1, schedule.steps + 1):
        index = next(batches)
        x0 = x[index].to(device, torch.float32)
        y = None if labels is None else labels[index].to(device)
        t = torch.randint(0, timesteps, (len(index),), device=device)
        noise = torch.randn_like(x0)
        x_t = q_sample(x0, t, noise, alphas_cumprod)
        with autocast(device):
            output = network(x_t, t, class_labels=y)
        if learn_sigma:
            loss, vlb = hybrid_loss(output.float(), x0, x_t, t, noise, betas, alphas_cumprod, vlb_weight)
        else:
            loss, vlb = F.mse_loss(output.float(), noise), None
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if ema is not None:
            with torch.no_grad():
                for p_ema, p in zip(ema.parameters(), network.parameters()):
                    p_ema.lerp_(p, 1 - schedule.ema)
        timed_out = out_of_time(started, schedule.max_minutes)
        if step % schedule.log_every == 0 or step == schedule.steps or timed_out:
            log.metric(f"{prefix}_loss", loss.item(), step)
            if vlb is not None:
                log.metric(f"{prefix}_vlb", vlb.item(), step)
        if timed_out:
            break
    network.eval()
    return _cpu_state(ema if ema is not None else network)


def train_classifier(network, x: torch.Tensor, labels: torch.Tensor, alphas_cumprod: torch.Tensor, schedule: Schedule,
                     device: torch.device, log, prefix: str = "classifier", constraint=None, *, seed: int) -> dict:
    """Cross-entropy on noisy slices x_t, t ~ U[0, T) (Wolleb et al. 2022, Sec. 2.1: the noise-conditioned classifier),
    or U{0, ..., schedule.max_t} when set (guidance only ever asks for t <= L).
    ``constraint(network, x_t, t, y, index)``, when given, returns a term added to the loss (``wolleb-wargnier``:
    the attribution constraint, weighted), logged as ``<prefix>_constraint``."""
    network.to(device).train()
    optimizer = torch.optim.AdamW(network.parameters(), lr=schedule.lr, weight_decay=0.05)  # guided-diffusion's classifier_train defaults
    timesteps = _timesteps(schedule, len(alphas_cumprod))
    started = time.monotonic()
    batches = shuffled_batches(len(x), schedule.batch_size, seed)
    for step in range(1, schedule.steps + 1):
        index = next(batches)
        x0 = x[index].to(device, torch.float32)
        y = labels[index].to(device)
        t = torch.randint(0, timesteps, (len(index),), device=device)
        x_t = q_sample(x0, t, torch.randn_like(x0), alphas_cumprod)
        with autocast(device):
            logits = network(x_t, t)
        loss = F.cross_entropy(logits.float(), y)
        extra = constraint(network, x_t, t, y, index) if constraint is not None else None
        if extra is not None:
            loss = loss + extra
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        timed_out = out_of_time(started, schedule.max_minutes)
        if step % schedule.log_every == 0 or step == schedule.steps or timed_out:
            log.metric(f"{prefix}_loss", loss.item(), step)
            log.metric(f"{prefix}_accuracy", (logits.argmax(1) == y).float().mean().item(), step)
            if extra is not None:
                log.metric(f"{prefix}_constraint", extra.item(), step)
        if timed_out:
            break
    network.eval()
    return _cpu_state(network)
