"""Cost of one training step of the wargnier classifier with the attribution constraint (double
backpropagation) against one without it (lambda = 0, the saliency baseline), measured in the same run.

    python scripts/bench_constraint_step.py [--size 64] [--batch 32] [--steps 20] [--threads 2]

Prints the median seconds per step of each arm (interleaved, so that load on a shared machine hits both)
and their ratio. Random images of 4 channels, half the batch healthy.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from lesionbench.methods.wargnier import attribution as attr
from lesionbench.methods.wargnier.networks import LogitMapClassifier


def one_step(network, optimizer, x, labels, brain, lam, form, kind, refs, alpha) -> float:
    start = time.perf_counter()
    loss, _, _ = attr.constrained_loss(network.lesion_logit, x, labels, brain, lam, form, kind, refs, alpha)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
    refs, alpha = x.flip(0), torch.rand(args.batch)
    network = LogitMapClassifier(4)
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-4)
    n_weights = sum(p.numel() for p in network.parameters())
    print(f"network: {n_weights} weights; batch {args.batch} x 4 x {args.size} x {args.size}; "
          f"{args.steps} timed steps per arm after 3 warm-up; torch {torch.__version__}, {args.threads} threads")

    arms = [("lambda=0 (saliency)", 0.0, "gradient")] + [(f"lambda=1, {k}", 1.0, k) for k in args.attributions]
    times: dict[str, list[float]] = {name: [] for name, _, _ in arms}
    for i in range(args.steps + 3):
        for name, lam, kind in arms:  # interleaved: the machine's load falls on every arm alike
            t = one_step(network, optimizer, x, labels, brain, lam, "bce", kind, refs, alpha)
            if i >= 3:
                times[name].append(t)
    base = statistics.median(times[arms[0][0]])
    print(f"{'arm':32s} {'median s/step':>14s} {'ratio':>7s}")
    for name, _, _ in arms:
        med = statistics.median(times[name])
        print(f"{name:32s} {med:14.4f} {med / base:7.2f}x")


if __name__ == "__main__":
    main()
