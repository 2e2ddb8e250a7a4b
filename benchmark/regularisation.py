"""Regularising loss terms that a method adds to its main loss: how much of the update they make, and a warning
when one never moves.

A term can sit in the loss at a large value and still steer nothing: the attribution constraint of ``wargnier``
was half of its loss value and a negligible share of its gradient (docs/calibration.md#regularisation-watch).
Two measures say so during fit:

- :func:`backward_with_gradient_share` backpropagates main + term and returns ||grad term|| / ||grad main|| on the
  weights (one backward pass each, over graphs that share nothing but the weights: the cost of one combined pass);
- :class:`TermWatch` records a term's logged values (and its gradient share) and, at the end of fit, warns through
  :func:`fit_warning` (a ``warning.*`` tag of the run) when the term's relative range stayed below ``tolerance``.
"""

from __future__ import annotations

import math
import warnings
from typing import Iterable

import torch


def fit_warning(log, message: str) -> None:
    """Record ``message`` with the run (``log.warn``); a FitLog without ``warn`` (a third party's) gets a
    Python warning instead, so the message is never lost."""
    warn = getattr(log, "warn", None)
    if callable(warn):
        warn(message)
    else:
        warnings.warn(message, RuntimeWarning, stacklevel=2)


def _norm(grads: Iterable[torch.Tensor | None]) -> float:
    return math.sqrt(sum(float(g.detach().square().sum()) for g in grads if g is not None))


def backward_with_gradient_share(main: torch.Tensor, term: torch.Tensor | None, params: list[torch.nn.Parameter],
                                 max_share: float | None = None) -> tuple[float, float]:
    """Accumulate grad (main + term) into ``p.grad`` over ``params``; returns (share, raw share): the raw share
    ||grad term|| / ||grad main|| as ``term`` stands, the share that of the gradient applied. With ``max_share`` the
    term's gradient is scaled down, when larger, to ``max_share`` x ||grad main||: the term never drowns the main
    loss, and a term near its minimum keeps its own small gradient. (0.0, 0.0) when ``term`` is None or holds no graph."""
    if term is None or not term.requires_grad:
        main.backward()
        return 0.0, 0.0
    g_main = torch.autograd.grad(main, params, retain_graph=True, allow_unused=True)
    g_term = torch.autograd.grad(term, params, allow_unused=True)
    main_norm, term_norm = _norm(g_main), _norm(g_term)
    raw = term_norm / main_norm if main_norm > 0 else math.inf
    factor = max_share / raw if max_share is not None and raw > max_share else 1.0
    for p, a, b in zip(params, g_main, g_term):
        b = None if b is None else b * factor
        total = a if b is None else (b if a is None else a + b)
        if total is None:
            continue
        p.grad = total if p.grad is None else p.grad + total
    return raw * factor, raw


class TermWatch:
    """A regularising term's values over fit; :meth:`check` warns when it never moved.

    "Never moved": (max - min) / mean |value| < ``tolerance`` over at least ``min_points`` recorded values (a
    tolerance above what a known inert term moved by; docs/calibration.md#regularisation-watch), or, when gradient
    shares were recorded, the largest share stayed below ``min_share`` (the term never made a visible part of any
    update)."""

    def __init__(self, name: str, tolerance: float = 0.02, min_share: float = 1e-3, min_points: int = 3):
        self.name, self.tolerance, self.min_share, self.min_points = name, tolerance, min_share, min_points
        self.values: list[float] = []
        self.shares: list[float] = []

    def record(self, value: float, share: float | None = None) -> None:
        self.values.append(float(value))
        if share is not None:
            self.shares.append(float(share))

    def relative_range(self) -> float:
        finite = [v for v in self.values if math.isfinite(v)]
        if not finite:
            return math.nan
        scale = sum(abs(v) for v in finite) / len(finite)
        return (max(finite) - min(finite)) / scale if scale > 0 else 0.0

    def problem(self) -> str | None:
        """Why the term looks inert, or None."""
        if len(self.values) < self.min_points:
            return None
        moved = self.relative_range()
        if moved < self.tolerance:
            return (f"regularising term {self.name!r} never moved: its range over fit was {moved:.2%} of its mean "
                    f"({len(self.values)} logged values, tolerance {self.tolerance:.0%}); it may not constrain anything")
        if self.shares and max(self.shares) < self.min_share:
            return (f"regularising term {self.name!r} never steered training: its largest gradient share "
                    f"||grad term|| / ||grad loss|| was {max(self.shares):.2g} (< {self.min_share:g})")
        return None

    def check(self, log) -> str | None:
        """Warn through ``log`` when :meth:`problem` finds one; returns the message."""
        message = self.problem()
        if message is not None:
            fit_warning(log, message)
        return message
