"""Cost of one training step of a classifier with the attribution constraint (double backpropagation)
against one without it, measured in the same run.

    python scripts/bench_constraint_step.py [--network wargnier|noise-conditioned] [--size 64] [--batch 32]
                                            [--steps 20] [--threads 2]

``wargnier``: the wargnier classifier against lambda = 0 (the saliency baseline), for each attribution.
``noise-conditioned``: the guiding classifier of ``wolleb-wargnier`` (wolleb's ``quick`` network, cross-entropy on
x_t at t ~ U[0, T)) with the constraint on its lesion logit's gradient (lambda = 1, BCE form) against the plain
one of ``wolleb``.

Prints the median seconds per step of each arm (interleaved, so that load on a shared machine hits both)
and their ratio. Random images of 4 channels, half the batch healthy.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import torch.nn.functional as F

from lesionbench.methods.wargnier import attribution as attr
from lesionbench.methods.wargnier.networks import LogitMapClassifier


def timed_step(optimizer, compute_loss) -> float:
    start = time.perf_counter()
    loss = compute_loss()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return time.perf_counter() - start


def wargnier_arms(args, x, labels, brain):
    """(name, loss function) per arm, the network and its optimizer: lambda = 0, then lambda = 1 per attribution."""
    refs, alpha = x.flip(0), torch.rand(args.batch)
    network = LogitMapClassifier(4)

    def arm(lam, kind):
        return lambda: attr.constrained_loss(network.lesion_logit, x, labels, brain, lam, "bce", kind, refs, alpha)[0]

    arms = [("lambda=0 (saliency)", arm(0.0, "gradient"))] + [(f"lambda=1, {k}", arm(1.0, k)) for k in args.attributions]
    return arms, network


def noise_conditioned_arms(args, x, labels, brain):
    """wolleb's plain classifier step against wolleb-wargnier's constrained one (same network, same x_t)."""
    from lesionbench.methods.wolleb.method import Wolleb, WollebConfig
    from lesionbench.methods.diffusion.networks import noise_conditioned_classifier
    from lesionbench.methods.diffusion.sampling import linear_schedule, q_sample
    from lesionbench.methods.wolleb_wargnier.method import noisy_attribution_constraint

    c = WollebConfig(**Wolleb.profiles["quick"])
    network = noise_conditioned_classifier(4, (args.size, args.size), c.classifier_widths, c.classifier_res_blocks,
                                           c.classifier_attention, c.norm_groups)
    _, alphas_cumprod = linear_schedule(c.timesteps)
    t = torch.randint(0, c.timesteps, (args.batch,))
    x_t = q_sample(x * 2 - 1, t, torch.randn_like(x), alphas_cumprod)

    def arm(lam):
        def loss():
            out = F.cross_entropy(network(x_t, t).float(), labels)
            extra = noisy_attribution_constraint(network, x_t, t, labels, brain, lam, "bce") if lam else None
            return out if extra is None else out + extra
        return loss

    return [("plain (wolleb)", arm(0.0)), ("lambda=1, gradient on x_t", arm(1.0))], network


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--network", choices=["wargnier", "noise-conditioned"], default="wargnier")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--attributions", nargs="+", default=["gradient", "input_x_gradient", "expected_gradients"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    x = torch.rand(args.batch, 4, args.size, args.size)
    labels = (torch.arange(args.batch) % 2).long()
    brain = torch.ones(args.batch, args.size, args.size, dtype=torch.bool)
    arms, network = (wargnier_arms if args.network == "wargnier" else noise_conditioned_arms)(args, x, labels, brain)
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-4)
    n_weights = sum(p.numel() for p in network.parameters())
    print(f"network: {args.network}, {n_weights} weights; batch {args.batch} x 4 x {args.size} x {args.size}; "
          f"{args.steps} timed steps per arm after 3 warm-up; torch {torch.__version__}, {args.threads} threads")

    times: dict[str, list[float]] = {name: [] for name, _ in arms}
    for i in range(args.steps + 3):
        for name, compute_loss in arms:  # interleaved: the machine's load falls on every arm alike
            t = timed_step(optimizer, compute_loss)
            if i >= 3:
                times[name].append(t)
    base = statistics.median(times[arms[0][0]])
    print(f"{'arm':32s} {'median s/step':>14s} {'ratio':>7s}")
    for name, _ in arms:
        med = statistics.median(times[name])
        print(f"{name:32s} {med:14.4f} {med / base:7.2f}x")


if __name__ == "__main__":
    main()
