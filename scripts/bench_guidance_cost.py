"""Decoding cost of classifier-free guidance (`cfg-diffusion`) against classifier guidance (`wolleb`).

    python scripts/bench_guidance_cost.py [--profile quick] [--batch 16] [--repeats 5] [--threads 1]

Both methods at the same profile's sizes (quick: 4 x 64 x 64 slices, L = 200, stride 25: 8 DDIM steps each
way), untrained weights (the cost does not depend on them), CPU, `--threads` intra-op threads. Per step,
`wolleb` decodes with one UNet pass of B slices plus a forward and backward pass of its noise-conditioned
classifier; `cfg-diffusion` with one UNet pass of 2 B slices (conditional and unconditional batched).
Both encode with one UNet pass of B a step. Prints seconds per slice (median of --repeats, the two methods
timed alternately) for the encoding, the decoding and the whole translation, and the ratios cfg-diffusion / wolleb.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from lesionbench.methods.cfg_diffusion.guidance import classifier_free_eps_fn, labelled_eps_fn
from lesionbench.methods.cfg_diffusion.method import HEALTHY as CFG_HEALTHY, NULL, CFGDiffusion
from lesionbench.methods.diffusion import sampling as S
from lesionbench.methods.wolleb.method import HEALTHY, Wolleb

MODALITIES = ("t1", "t1ce", "t2", "flair")


def paired_medians(fn_a, fn_b, repeats: int) -> tuple[float, float]:
    """Median seconds of each, timed alternately (a, b, a, b, ...) so that a load change hits both alike."""
    fn_a(), fn_b()  # warm-up (kernels, allocator)
    a, b = [], []
    for _ in range(repeats):
        for fn, out in ((fn_a, a), (fn_b, b)):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return statistics.median(a), statistics.median(b)


def parameters(network) -> int:
    return sum(p.numel() for p in network.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    shape = (len(MODALITIES), args.size, args.size)
    wolleb = Wolleb(Wolleb.make_config(args.profile), "cpu", MODALITIES)
    wolleb.build(shape)
    cfg = CFGDiffusion(CFGDiffusion.make_config(args.profile), "cpu", MODALITIES)
    cfg.build(shape)
    for a, b in (("noise_level", "noise_level"), ("stride", "stride")):
        assert getattr(wolleb.config, a) == getattr(cfg.config, b), f"the profiles differ in {a}: not comparable"
    wc, cc = wolleb.config, cfg.config
    times = S.ddim_times(cc.noise_level, cc.stride)
    x = torch.rand(args.batch, *shape) * 2 - 1

    w_eps = wolleb.eps_fn(HEALTHY)
    w_grad = S.class_log_prob_gradient(wolleb.logits_fn, HEALTHY)
    c_enc = labelled_eps_fn(cfg.labelled_eps, NULL)
    c_dec = classifier_free_eps_fn(cfg.labelled_eps, CFG_HEALTHY, NULL, cc.guidance_scale)
    w_latent = S.ddim_encode(w_eps, x, times, wolleb.alphas_cumprod)
    c_latent = S.ddim_encode(c_enc, x, times, cfg.alphas_cumprod)

    rows = {
        "encode": (lambda: S.ddim_encode(w_eps, x, times, wolleb.alphas_cumprod, wc.clip_denoised),
                   lambda: S.ddim_encode(c_enc, x, times, cfg.alphas_cumprod, cc.clip_denoised)),
        "decode": (lambda: S.guided_ddim_decode(w_eps, w_latent, times, wolleb.alphas_cumprod, w_grad, wc.guidance_scale, wc.clip_denoised),
                   lambda: S.guided_ddim_decode(c_dec, c_latent, times, cfg.alphas_cumprod, clip=cc.clip_denoised)),
        "translate": (lambda: wolleb.translate(x), lambda: cfg.translate(x)),
    }
    print(f"profile {args.profile}: slices {shape}, batch {args.batch}, L = {cc.noise_level}, stride {cc.stride} "
          f"({len(times) - 1} DDIM steps each way), {torch.get_num_threads()} thread(s), untrained weights")
    print(f"  wolleb: UNet {wc.widths} attention {wc.attention} ({parameters(wolleb.unet):,} parameters), "
          f"classifier {wc.classifier_widths} attention {wc.classifier_attention} ({parameters(wolleb.classifier):,}), s = {wc.guidance_scale}")
    print(f"  cfg-diffusion: UNet {cc.widths} attention {cc.attention} ({parameters(cfg.unet):,} parameters), w = {cc.guidance_scale}")
    print(f"{'':10s} {'wolleb s/slice':>15s} {'cfg s/slice':>12s} {'cfg / wolleb':>13s}")
    for name, (w_fn, c_fn) in rows.items():
        t_w, t_c = (t / args.batch for t in paired_medians(w_fn, c_fn, args.repeats))
        print(f"{name:10s} {t_w:15.4f} {t_c:12.4f} {t_c / t_w:13.2f}")


if __name__ == "__main__":
    main()
