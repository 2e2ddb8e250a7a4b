"""wolleb's sampler against a peer, and map quality against the number of DDIM steps.

    python scripts/bench_sampler.py [--device cpu] [--sizes quick paper] [--quality] [--workdir DIR]

1. Speed (untrained weights: the cost does not depend on them). Ours: DDIM encoding to L and guided
   DDIM decoding, batched over --batch slices, one step every `stride` timesteps, no gradient except the
   classifier's, bf16 autocast on CUDA. Peer: the straightforward sampler as the reference code runs it:
   one slice at a time, every timestep (stride 1), fp32. Each side runs --timed-steps DDIM steps per
   direction and is extrapolated linearly to its full number of steps (each step costs the same), so the
   paper size is measurable on a CPU; the printout says so. Two ratios: per-step throughput (batching,
   precision) and per-slice (also the stride).
2. Quality (--quality): trains the `quick` DDPM and classifier on synth-tumor (seed 0) -- or reuses them
   from --workdir, where `lesionbench run ... --workdir DIR` cached them -- and prints validation
   auprc (pooled, brain voxels) against the stride, on the first --val-cases validation volumes.
"""

from __future__ import annotations

import argparse
import time

import torch

from lesionbench.methods.diffusion import sampling as S
from lesionbench.methods.wolleb.method import HEALTHY, Wolleb

SIZES = {  # (profile, slice size, channels, slices per batch of ours)
    "quick": ("quick", 64, 4, 32),
    "paper": ("paper", 256, 4, 8),
}


def reference_sample(method: Wolleb, x: torch.Tensor, steps: int) -> torch.Tensor:
    """The peer: per slice, every timestep from 0 to `steps` and back, fp32, no batching."""
    times = list(range(0, steps + 1))
    eps = lambda x_t, t: method.unet(x_t, t, class_labels=torch.full_like(t, HEALTHY))[:, : x.shape[1]].float()  # noqa: E731
    grad = S.class_log_prob_gradient(lambda x_t, t: method.classifier(x_t, t).float(), HEALTHY)
    out = []
    for one in x.split(1):
        latent = S.ddim_encode(eps, one, times, method.alphas_cumprod)
        out.append(S.guided_ddim_decode(eps, latent, times, method.alphas_cumprod, grad, method.config.guidance_scale))
    return torch.cat(out)


def ours_sample(method: Wolleb, x: torch.Tensor, steps: int) -> torch.Tensor:
    """Ours with the profile's stride, cut to `steps` DDIM steps per direction."""
    c = method.config
    saved = c.noise_level
    c.noise_level = min(c.noise_level, steps * c.stride)
    try:
        return method.translate(x)
    finally:
        c.noise_level = saved


def timed(fn, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def speed(size_name: str, device: torch.device, batch: int | None, timed_steps: int, ref_slices: int) -> None:
    profile, size, channels, default_batch = SIZES[size_name]
    batch = batch or default_batch
    method = Wolleb(Wolleb.make_config(profile), device, ("t1", "t1ce", "t2", "flair")[:channels])
    method.build((channels, size, size))
    c = method.config
    full_ours = len(S.ddim_times(c.noise_level, c.stride)) - 1  # DDIM steps per direction
    full_ref = c.noise_level
    x = torch.rand(batch, channels, size, size, device=device) * 2 - 1
    ours_steps, ref_steps = min(timed_steps, full_ours), min(timed_steps, full_ref)
    ours_sample(method, x[:2], 1)  # warm-up (kernels, allocator)
    reference_sample(method, x[:1], 1)
    t_ours = timed(lambda: ours_sample(method, x, ours_steps), device)
    t_ref = timed(lambda: reference_sample(method, x[:ref_slices], ref_steps), device)
    ours_step_rate = batch * ours_steps / t_ours  # slice-steps per second
    ref_step_rate = ref_slices * ref_steps / t_ref
    ours_sps, ref_sps = ours_step_rate / full_ours, ref_step_rate / full_ref
    print(f"\n[{size_name}] {size}x{size}x{channels}, UNet widths {c.widths}, L={c.noise_level}, s={c.guidance_scale}, device {device}")
    print(f"  ours: batch {batch}, stride {c.stride} ({full_ours} DDIM steps per direction), "
          f"{'bf16 autocast' if device.type == 'cuda' else 'fp32'}; timed {ours_steps} steps in {t_ours:.2f} s")
    print(f"  peer: batch 1, stride 1 ({full_ref} steps per direction), fp32; timed {ref_steps} steps x {ref_slices} slices in {t_ref:.2f} s")
    extrapolated = " (extrapolated from the timed steps)" if (ours_steps < full_ours or ref_steps < full_ref) else ""
    print(f"  per-step throughput: ours {ours_step_rate:.3g} vs peer {ref_step_rate:.3g} slice-steps/s -> x{ours_step_rate / ref_step_rate:.2g}")
    print(f"  slices per second{extrapolated}: ours {ours_sps:.3g} vs peer {ref_sps:.3g} -> x{ours_sps / ref_sps:.3g}")


def config_overrides(pairs: list[str]) -> dict:
    """``--set key=value`` pairs typed like ``lesionbench run --set wolleb.key=value``."""
    import typing

    from lesionbench.config import parse_value
    from lesionbench.methods.wolleb.method import WollebConfig

    types = typing.get_type_hints(WollebConfig)
    out = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        key = key.removeprefix("wolleb.")
        out[key] = parse_value(value, types[key], key)
    return out


def quality(device: torch.device, strides: list[int], workdir: str | None, val_cases: int, batch: int, overrides: dict) -> None:
    from pathlib import Path

    from lesionbench import metrics as M
    from lesionbench.config import resolve_data_config
    from lesionbench.datasets.synthetic import SynthTumor
    from lesionbench.method import Supervision
    from lesionbench.fitlog import HarnessLog
    from lesionbench.pipeline import PreparedDataset
    from lesionbench.prediction import predict_cases
    from lesionbench.seeding import seed_everything
    from lesionbench.splits import make_split, split_hash

    data = resolve_data_config("quick", {}, [])
    adapter = SynthTumor(subjects=data.subjects, size=data.size, depth=data.depth)
    split = make_split(adapter.cases(), 0, data.val_fraction, data.test_fraction)
    root = Path(workdir or "bench-sampler-work")
    dataset = PreparedDataset(adapter, data, split, root / "cache")
    seed = 0
    seed_everything(seed)
    method = Wolleb(Wolleb.make_config("quick", overrides), device, dataset.modalities)
    cases = dataset.val_cases()[:val_cases]
    log = HarnessLog(None, method, cases, batch, "auprc", parts_dir=root / "parts",
                     parts_key=[dataset.preprocessing, split_hash(split), seed, str(device.type)])  # the runner's key
    t0 = time.perf_counter()
    method.fit(dataset.slice_set("train", Supervision.IMAGE), dataset.slice_set("val", Supervision.IMAGE), log)
    print(f"\n[quality] synth-tumor, quick DDPM + classifier ({'reused from ' + str(root / 'parts') if log.parts_reused else f'trained in {time.perf_counter() - t0:.0f} s'}); "
          f"L={method.config.noise_level}, s={method.config.guidance_scale}; validation auprc on {len(cases)} volumes")
    print("  | stride | DDIM steps per direction | val auprc | val dice_best | s per slice |")
    print("  | ---: | ---: | ---: | ---: | ---: |")
    for stride in strides:
        method.config.stride = stride
        seed_everything(seed)
        t0 = time.perf_counter()
        scored, n = predict_cases(method, cases, batch)
        per_slice = (time.perf_counter() - t0) / max(n, 1)
        result = M.evaluate_split(scored)
        steps = len(S.ddim_times(method.config.noise_level, stride)) - 1
        print(f"  | {stride} | {steps} | {result['auprc']:.3f} | {result['dice_best']:.3f} | {per_slice:.3f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sizes", nargs="*", default=["quick", "paper"], choices=sorted(SIZES))
    parser.add_argument("--batch", type=int, default=None, help="slices per batch of our sampler (default: 32 quick, 8 paper)")
    parser.add_argument("--timed-steps", type=int, default=5, help="DDIM steps per direction actually timed")
    parser.add_argument("--ref-slices", type=int, default=2, help="slices the peer samples (one at a time)")
    parser.add_argument("--quality", action="store_true", help="also the steps-vs-quality table on synth-tumor")
    parser.add_argument("--strides", type=int, nargs="*", default=[200, 100, 50, 20, 10])
    parser.add_argument("--val-cases", type=int, default=6)
    parser.add_argument("--workdir", default=None, help="a `lesionbench run` workdir whose cached parts to reuse")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="quick-profile overrides for the quality table, as the run's --set wolleb.KEY=VALUE")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    for size in args.sizes:
        speed(size, device, args.batch, args.timed_steps, args.ref_slices)
    if args.quality:
        quality(device, args.strides, args.workdir, args.val_cases, 64, config_overrides(args.overrides))


if __name__ == "__main__":
    main()
