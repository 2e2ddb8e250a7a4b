"""What the slice size costs `wolleb` (the diffusion methods' inference is a cell's cost on real data).

    python scripts/bench_slice_size.py [--sizes 64 96 128] [--threads 1]

For each in-plane size: seconds per slice of wolleb's guided DDIM inference (encoding to L and decoding, the
`quick` profile's networks and stride, untrained weights: the cost does not depend on them) and seconds per
training step of its DDPM (batch of the profile, forward and backward), each printed with its ratio to the
first size, measured in the same run. With n slices to predict per cell (validation and test volumes) the
inference part of a cell is about n times the first column.
"""

from __future__ import annotations

import argparse
import time

import torch

from lesionbench.methods.wolleb.method import HEALTHY, Wolleb


def seconds(fn, repeats: int) -> float:
    fn()  # warm-up (allocations, first-call paths)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 96, 128])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=16, help="slices per predict call")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = Wolleb.make_config("quick")
    rows = []
    for size in args.sizes:
        method = Wolleb(config, device="cpu", modalities=("t1", "t1ce", "t2", "flair"))
        method.build((4, size, size))  # the classifier's dense head depends on the slice size
        x = torch.rand(args.batch, 4, size, size)
        predict = seconds(lambda: method.predict(x), args.repeats) / args.batch
        batch = torch.rand(config.batch_size, 4, size, size)
        t = torch.randint(0, 500, (config.batch_size,))
        labels = torch.full((config.batch_size,), HEALTHY)

        def step():
            method.unet.zero_grad()
            method.unet(batch, t, class_labels=labels).square().mean().backward()

        rows.append((size, predict, seconds(step, args.repeats)))
    print(f"wolleb quick, {args.threads} thread(s), untrained weights")
    print("| size | s per slice (inference) | x | s per DDPM step | x |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for size, predict, step in rows:
        print(f"| {size} | {predict:.3f} | {predict / rows[0][1]:.2f} | {step:.3f} | {step / rows[0][2]:.2f} |")


if __name__ == "__main__":
    main()
