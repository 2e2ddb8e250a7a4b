"""Building blocks of a method's training loop, for built-in and third-party methods alike.

A method that trains a network usually needs the same few pieces; use these rather than writing them again::

    from lesionbench.training import KeepBest, autocast, pad_to_multiple, shuffled_batches

    def fit(self, train, val, log):
        batches = shuffled_batches(len(train), self.config.batch_size, self.seed)
        keep = KeepBest(self.network)
        for step in range(1, self.config.steps + 1):
            index = next(batches)
            x = train.images[index].to(self.device)
            with autocast(self.device):
                loss = ...
            ...
            if step % self.config.eval_every == 0:
                keep.offer(log.evaluate(step))  # the harness scores the validation volumes
        keep.restore()  # the weights of the best-scored evaluation (none a number: the last weights)

- ``shuffled_batches``: endless full batches of shuffled indices; epochs run into each other, so every batch
  is full and the order depends on the run seed only (``Method.seed``).
- ``balanced_batches``: the same, with each batch split between the classes of ``labels``.
- ``KeepBest``: keep-the-best-validated-weights (early stopping without handing masks to the method).
- ``autocast``: bf16 autocast on CUDA, full precision elsewhere (design §3: mixed precision on GPU).
- ``pad_to_multiple``: pad slices (bottom, right) to what a network's strides need.
- ``out_of_time``: a wall-clock budget (``max_minutes``; 0 = none).
"""

from __future__ import annotations

import copy
import math
import time
from contextlib import nullcontext
from typing import Iterator

import torch
import torch.nn.functional as F


def shuffled_batches(n: int, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
    """Endless batches of ``min(batch_size, n)`` indices into ``range(n)``, reshuffled every epoch from a
    generator seeded with ``seed``; epochs run into each other so that every batch is full."""
    if n < 1:
        raise ValueError("shuffled_batches: no items to draw from")
    order = torch.Generator().manual_seed(seed)
    batch_size = min(batch_size, n)
    queue = torch.empty(0, dtype=torch.long)
    while True:
        if len(queue) < batch_size:
            queue = torch.cat([queue, torch.randperm(n, generator=order)])
        index, queue = queue[:batch_size], queue[batch_size:]
        yield index


def balanced_batches(labels: torch.Tensor, batch_size: int, generator: torch.Generator,
                     balanced: bool = True) -> Iterator[torch.Tensor]:
    """Endless batches with ``batch_size`` split evenly between the classes 0 and 1 of ``labels`` (the first
    class takes the remainder); each class is reshuffled every epoch of its own. Unless ``balanced``, or with
    one class empty: batches over all items, shuffled with the same generator."""
    groups = [torch.nonzero(labels == k).flatten() for k in (0, 1)] if balanced else []
    if not balanced or any(len(g) == 0 for g in groups):
        groups = [torch.arange(len(labels))]
    sizes = [batch_size // len(groups)] * len(groups)
    sizes[0] += batch_size - sum(sizes)
    queues = [torch.empty(0, dtype=torch.long) for _ in groups]
    while True:
        out = []
        for i, (group, size) in enumerate(zip(groups, sizes)):
            size = min(size, len(group))
            while len(queues[i]) < size:  # epochs run into each other so every batch is full
                queues[i] = torch.cat([queues[i], group[torch.randperm(len(group), generator=generator)]])
            out.append(queues[i][:size])
            queues[i] = queues[i][size:]
        yield torch.cat(out)


class KeepBest:
    """The weights of ``module`` at its best validation score so far (higher is better; NaN never counts)."""

    def __init__(self, module: torch.nn.Module):
        self.module = module
        self.score = -math.inf
        self.weights: dict | None = None

    def offer(self, score: float) -> bool:
        """Keep the module's current weights if ``score`` beats every earlier one; True when kept."""
        if math.isnan(score) or score <= self.score:
            return False
        self.score, self.weights = score, copy.deepcopy(self.module.state_dict())
        return True

    def restore(self) -> bool:
        """Load the kept weights into the module; False (the last weights stay) when none was kept."""
        if self.weights is None:
            return False
        self.module.load_state_dict(self.weights)
        return True


def autocast(device: torch.device):
    """bf16 autocast on CUDA; full precision elsewhere."""
    if torch.device(device).type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def pad_to_multiple(x: torch.Tensor, multiple: int, value: float = 0.0) -> torch.Tensor:
    """Pad H and W (bottom, right) to a multiple of ``multiple`` with ``value`` (the images' background)."""
    h, w = x.shape[-2:]
    return F.pad(x, (0, (-w) % multiple, 0, (-h) % multiple), value=value)


def out_of_time(started: float, max_minutes: float) -> bool:
    """Whether a wall-clock budget of ``max_minutes`` (0 = none) since ``started`` (``time.monotonic()``) is spent."""
    return max_minutes > 0 and time.monotonic() - started > 60 * max_minutes
