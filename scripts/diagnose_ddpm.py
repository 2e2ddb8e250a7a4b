"""Why does the `quick` ddpm give maps at chance? (issue 19, item 3)

    OMP_NUM_THREADS=1 python scripts/diagnose_ddpm.py --dataset synth-tumor --checkpoints 75,150,300,600

Builds the dataset as `lesionbench run --profile quick` does (quick data profile, stratified split with split
seed 0, the harness's PreparedDataset, run seed 0), trains the quick DDPM once through ``DDPM.fit`` (so the
same training loop, batches and random numbers as a cell) up to the last checkpoint and keeps the weights at
every checkpoint (constant learning rate: the weights at step 150 are those of a 150-step fit). At each
checkpoint, on the VALIDATION split (diagnostic only: the method never sees masks):

* voxel auprc (``lesionbench.metrics``, pooled over brain voxels) of the maps for each noise level L, plain
  (the method's map) and post-processed variants: brain-masked then smoothed (median 3x3 and 5x5, gaussian sigma 1 and 1.5),
  and the FLAIR channel alone;
* the denoising quality: eps-MSE of the network at t = L on healthy validation slices, the x0 error
  |x - x_hat| averaged over healthy brain voxels and over lesion voxels, and their ratio (lesion contrast of
  the residual: 1 = the lesion is reconstructed as well as the tissue, i.e. kept);
* references that need no model: the auprc of the raw FLAIR intensity and of |x - mean healthy slice|.

Prints a markdown table with the training wall time (one thread) per checkpoint; with --png writes, for the
most lesioned validation slice, x, x_hat and the residual per checkpoint (FLAIR) to /tmp/ddpm_diag_*.png.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from lesionbench.streaming import in_memory


def build(dataset_name: str, workdir: Path):
    from lesionbench.config import resolve_data_config
    from lesionbench.datasets.synthetic import SynthMS, SynthTumor
    from lesionbench.pipeline import PreparedDataset
    from lesionbench.preparation import dataset_splits, make_adapter

    cls = {"synth-tumor": SynthTumor, "synth-ms": SynthMS}[dataset_name]
    data = resolve_data_config("quick", {}, [])
    adapter = make_adapter(cls, None, data)
    [(split, _)], _ = dataset_splits(adapter, data, 0, None, 0, workdir / "cache")
    return PreparedDataset(adapter, data, split, workdir / "cache")


class CheckpointLog:
    """A FitLog that keeps the network's weights (and the elapsed time) at the checkpoint steps."""

    def __init__(self, method, checkpoints):
        self.method, self.checkpoints = method, set(checkpoints)
        self.states, self.times, self.losses = {}, {}, {}
        self.t0 = time.perf_counter()

    def metric(self, name, value, step=None):
        self.losses[step] = value
        if step in self.checkpoints:
            self.times[step] = time.perf_counter() - self.t0
            self.states[step] = {k: v.detach().clone() for k, v in self.method.unet.state_dict().items()}
            print(f"  step {step}: loss {value:.4f}, {self.times[step]:.0f} s", flush=True)

    def cached(self, part, key, train):
        return train()

    def evaluate(self, step):
        return float("nan")

    def warn(self, message):
        print("warn:", message)

    def artifact_image(self, name, image):
        pass


def smooth(maps: np.ndarray, brain: np.ndarray, kind: str, size: float = 0) -> np.ndarray:
    from scipy import ndimage

    m = np.where(brain, maps, 0.0)
    if kind == "median":
        return np.stack([ndimage.median_filter(s, size=int(size or 5)) for s in m])
    return np.stack([ndimage.gaussian_filter(s, size or 1.5) for s in m])


def scored(case, maps):
    from lesionbench import metrics as M

    idx = case.brain_slices
    brain = case.brain[idx]
    scores = np.array([np.percentile(m[b], 99) for m, b in zip(maps, brain)])
    return M.ScoredVolume(case.case_id, maps.astype(np.float32), brain, case.lesion[idx], scores, case.labels[idx])


def auprc(cases, maps_per_case) -> float:
    import warnings

    from lesionbench import metrics as M

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return M.evaluate_split([scored(c, m) for c, m in zip(cases, maps_per_case)])["auprc"]


def evaluate(method, cases, levels, flair: int, healthy_val: torch.Tensor, png_rows: list | None, label: str):
    from lesionbench.seeding import seed_everything

    rows = []
    for level in levels:
        method.config.noise_level = level
        seed_everything(0)
        residuals, recon = [], []
        t0 = time.perf_counter()
        with torch.no_grad():
            for case in cases:
                idx = case.brain_slices
                images = torch.from_numpy(np.ascontiguousarray(case.image[:, idx].transpose(1, 0, 2, 3)))
                h, w = images.shape[-2:]
                res, xh = [], []
                for start in range(0, len(images), 64):
                    x = method.to_network_input(images[start:start + 64])
                    x_hat = method.translate(x)
                    res.append((x - x_hat).abs()[:, :, :h, :w].numpy())
                    xh.append(x_hat[:, :, :h, :w].numpy())
                residuals.append(np.concatenate(res))  # [D, C, H, W]
                recon.append(np.concatenate(xh))
        infer_s = time.perf_counter() - t0
        plain = [r.sum(1) for r in residuals]
        brains = [c.brain[c.brain_slices] for c in cases]
        lesions = [c.lesion[c.brain_slices] for c in cases]
        healthy_err = np.concatenate([r.sum(1)[b & ~l] for r, b, l in zip(residuals, brains, lesions)]).mean()
        lesion_err = np.concatenate([r.sum(1)[l] for r, l in zip(residuals, lesions)]).mean()
        # eps-MSE of the network at t = L on healthy validation slices (fixed noise)
        g = torch.Generator().manual_seed(0)
        x0 = method.to_network_input(healthy_val)
        noise = torch.randn(x0.shape, generator=g)
        abar = float(method.alphas_cumprod[level])
        x_t = abar**0.5 * x0 + (1 - abar) ** 0.5 * noise
        with torch.no_grad():
            eps = torch.cat([method.unet(x_t[i:i + 64], torch.full((len(x_t[i:i + 64]),), level))[:, :x0.shape[1]]
                             for i in range(0, len(x_t), 64)])
        eps_mse = float((eps - noise).square().mean())
        row = dict(label=label, L=level, auprc=auprc(cases, plain),
                   median=auprc(cases, [smooth(m, b, "median") for m, b in zip(plain, brains)]),
                   gauss=auprc(cases, [smooth(m, b, "gauss") for m, b in zip(plain, brains)]),
                   median3=auprc(cases, [smooth(m, b, "median", 3) for m, b in zip(plain, brains)]),
                   gauss1=auprc(cases, [smooth(m, b, "gauss", 1.0) for m, b in zip(plain, brains)]),
                   flair=auprc(cases, [r[:, flair] for r in residuals]),
                   flair_gauss=auprc(cases, [smooth(r[:, flair], b, "gauss") for r, b in zip(residuals, brains)]),
                   eps_mse=eps_mse, err_healthy=healthy_err, err_lesion=lesion_err, ratio=lesion_err / healthy_err,
                   infer_s=infer_s)
        rows.append(row)
        print("  " + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
        if png_rows is not None:
            ci, si = max(((i, j) for i, l in enumerate(lesions) for j in range(len(l))), key=lambda ij: lesions[ij[0]][ij[1]].sum())
            x = cases[ci].image[flair, cases[ci].brain_slices[si]]
            png_rows.append((f"{label} L={level}", x, (recon[ci][si, flair] + 1) / 2, residuals[ci][si, flair] / 2,
                             lesions[ci][si]))
    return rows


def save_png(rows, path: str):
    from PIL import Image

    tiles = []
    for _, x, x_hat, res, lesion in rows:
        edge = lesion.astype(np.float32)
        tiles.append(np.concatenate([x, x_hat, res, edge], axis=1))
    grid = np.clip(np.concatenate(tiles, axis=0), 0, 1)
    Image.fromarray((grid * 255).astype(np.uint8)).resize((grid.shape[1] * 3, grid.shape[0] * 3), Image.NEAREST).save(path)
    print("wrote", path, "rows:", [r[0] for r in rows], "columns: x, x_hat, |x - x_hat| / 2, lesion (FLAIR)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="synth-tumor", choices=["synth-tumor", "synth-ms"])
    parser.add_argument("--checkpoints", default="75,150,300,600")
    parser.add_argument("--levels", default="100,200,400")
    parser.add_argument("--set", nargs="*", default=[], help="ddpm config overrides KEY=VALUE on the quick profile")
    parser.add_argument("--val-cases", type=int, default=0, help="first N validation volumes (0 = all)")
    parser.add_argument("--workdir", default="/tmp/ddpm_diag")
    parser.add_argument("--png", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)

    from lesionbench.config import parse_value
    from lesionbench.method import Supervision
    from lesionbench.methods.ddpm.method import DDPM, DDPMConfig
    from lesionbench.seeding import seed_everything
    import typing

    types = typing.get_type_hints(DDPMConfig)
    overrides = {k: parse_value(v, types[k], k) for k, v in (s.split("=", 1) for s in args.set)}
    checkpoints = [int(s) for s in args.checkpoints.split(",")]
    levels = [int(s) for s in args.levels.split(",")]
    dataset = build(args.dataset, Path(args.workdir))
    cases = dataset.val_cases()
    if args.val_cases:
        cases = cases[: args.val_cases]
    flair = dataset.modalities.index("flair") if "flair" in dataset.modalities else 0
    # in memory: this script indexes whole splits (quick's synthetic sets: tens of MB)
    train, val = (in_memory(dataset.slice_set(part, Supervision.NONE)) for part in ("train", "val"))
    print(f"{args.dataset}: {len(train)} healthy train slices, {len(val)} healthy val slices, {len(cases)} val volumes "
          f"({sum(len(c.brain_slices) for c in cases)} brain slices); overrides {overrides}", flush=True)

    # references without a model
    mean_healthy = train.images.mean(0).numpy()
    raw = [c.image[flair, c.brain_slices] for c in cases]
    dev = [np.abs(c.image[:, c.brain_slices] - mean_healthy[:, None]).sum(0) for c in cases]
    print(f"references: auprc(FLAIR intensity) {auprc(cases, raw):.4f}, auprc(|x - mean healthy train slice|) {auprc(cases, dev):.4f}, "
          f"prevalence {np.mean(np.concatenate([c.lesion[c.brain][:] for c in cases])):.4f}", flush=True)

    seed_everything(0)
    config = DDPM.make_config("quick", {**overrides, "steps": max(checkpoints), "log_every": 5})
    method = DDPM(config, modalities=dataset.modalities)
    log = CheckpointLog(method, checkpoints)
    t0 = time.perf_counter()
    method.fit(train, val, log)
    fit_s = time.perf_counter() - t0
    print(f"trained {max(checkpoints)} steps in {fit_s:.0f} s ({fit_s / max(checkpoints):.2f} s a step, "
          f"{torch.get_num_threads()} thread)", flush=True)

    torch.save({"states": log.states, "times": log.times}, Path(args.workdir) / f"checkpoints-{args.dataset}.pt")
    rows, png_rows = [], ([] if args.png else None)
    for step in checkpoints:
        method.unet.load_state_dict(log.states[step])
        method.unet.eval()
        for row in evaluate(method, cases, levels, flair, val.images, png_rows, f"step {step}"):
            rows.append({**row, "step": step, "train_s": log.times[step]})
    print(f"\n{args.dataset}, quick ddpm {overrides}, validation split ({len(cases)} volumes), stride {config.stride}")
    print("| steps | train s (1 thr) | L | auprc | median3 | median5 | gauss1 | gauss1.5 | flair | flair+gauss1.5 | eps-MSE@L | err healthy | err lesion | ratio |")
    print("|" + " ---: |" * 14)
    for r in rows:
        print(f"| {r['step']} | {r['train_s']:.0f} | {r['L']} | {r['auprc']:.4f} | {r['median3']:.4f} | {r['median']:.4f} | {r['gauss1']:.4f} | {r['gauss']:.4f} | "
              f"{r['flair']:.4f} | {r['flair_gauss']:.4f} | {r['eps_mse']:.4f} | {r['err_healthy']:.4f} | "
              f"{r['err_lesion']:.4f} | {r['ratio']:.2f} |")
    if png_rows:
        save_png(png_rows, f"/tmp/ddpm_diag_{args.dataset}.png")


if __name__ == "__main__":
    main()
