"""An unsupervised diffusion baseline in the style of AnoDDPM (Wyatt et al. 2022) and pDDPM
(Behrendt et al. 2023): a DDPM trained on healthy slices only; at inference each slice is noised
**stochastically** to level L (x_L ~ q(x_L | x_0), Gaussian noise seeded per slice) and denoised back;
the anomaly map is the residual |x - x_hat| summed over channels.

Ours: the denoising runs with deterministic DDIM steps (``stride`` timesteps each) instead of the full
ancestral chain, for speed; the noise of a slice is drawn from a generator seeded by (the harness's run
seed, ``noise_seed``, the slice's content), so a map does not depend on batching and predicting twice
gives the same map. Not ``wolleb`` with s = 0: deterministic DDIM encoding would return the input.

Post-processing of the residual (inference only; in no cache key). ``median_filter`` k > 1: the residual,
zeroed outside the brain, is median-filtered with a k x k window and masked again. This follows pDDPM's
post-processing (Behrendt et al. 2023, MIDL; their code, FinnBehrendt/patched-Diffusion-Models-UAD: the
difference masked with the brain mask, then a median filter of size ``kernelsize_median`` = 5, as in Baur et al.
2021, MedIA, "Autoencoders for unsupervised anomaly segmentation in brain MR images: a comparative study");
theirs is 3D over the volume, ours 2D per slice (predict is given slices). ``gaussian_sigma`` s > 0
(ours): the same with a Gaussian of s pixels (after the median when both are set). The brain mask is ours
too: predict is not given one, so it is the voxels where some channel is above 0 (the harness's images are 0
outside the brain). Why (issue 19, scripts/diagnose_ddpm.py): at the quick budget the reconstruction keeps
most of a tumour (its residual is only 1.1-1.4 times the healthy tissue's) and the raw residual is a speckle of
voxel-wise reconstruction error all over the brain, so its voxel auprc stays near chance; averaging the
residual over a few pixels lifts the tumour's slightly higher error above the speckle.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from lesionbench.method import SliceSet, Supervision
from lesionbench.methods.diffusion.base import DiffusionMethod
from lesionbench.methods.diffusion.networks import diffusion_unet
from lesionbench.methods.diffusion.sampling import ddim_times, guided_ddim_decode, linear_schedule
from lesionbench.methods.diffusion.training import Schedule, check_max_t, train_denoiser
from lesionbench.parts import part_key, shapes
from lesionbench.training import autocast

DDPM_PART = "ddpm"  # the trained part (cached by FitLog.cached)


@dataclass
class DDPMConfig:
    # the DDPM (shapes(): the fields its cached weights depend on, lesionbench.parts)
    timesteps: int = shapes(DDPM_PART, default=1000)  # T, linear schedule
    widths: tuple[int, ...] = shapes(DDPM_PART, default=(16, 32, 64))
    res_blocks: int = shapes(DDPM_PART, default=1)
    attention: tuple[bool, ...] = shapes(DDPM_PART, default=(False, False, True))
    norm_groups: int = shapes(DDPM_PART, default=8)
    learn_sigma: bool = shapes(DDPM_PART, default=False)
    vlb_weight: float = shapes(DDPM_PART, default=0.001)
    lr: float = shapes(DDPM_PART, default=1e-3)
    batch_size: int = shapes(DDPM_PART, default=32)
    steps: int = shapes(DDPM_PART, default=220)
    max_minutes: float = shapes(DDPM_PART, default=0.0)
    ema: float = shapes(DDPM_PART, default=0.0)
    # trained on t in {0, ..., train_max_t} only (>= L); 0 = all T
    train_max_t: int = shapes(DDPM_PART, default=0, omit_default=True)
    # inference
    noise_level: int = 400  # L
    stride: int = 50  # timesteps per DDIM denoising step
    noise_seed: int = 0  # mixed with the run seed and the slice's content
    clip_denoised: bool = True
    median_filter: int = 0  # k x k median of the brain-masked residual (pDDPM: 5); 0 or 1 = none
    gaussian_sigma: float = 0.0  # Gaussian smoothing of the brain-masked residual, in pixels (ours); 0 = none
    log_every: int = 10


class DDPM(DiffusionMethod):
    name = "ddpm"
    description = "AnoDDPM/pDDPM-style baseline: a DDPM on healthy slices; noise each slice to level L (seeded), denoise; map = residual"
    supervision = Supervision.NONE
    Config = DDPMConfig
    profiles = {
        "smoke": dict(widths=(8, 16), attention=(False, False), norm_groups=4, steps=6, batch_size=8,
                      noise_level=200, stride=100, log_every=2),
        # the README's main job: a fixed number of steps; three narrow levels without attention (MONAI's middle block
        # attends over every position of the lowest level, which dominates a CPU step; docs/calibration.md#wolleb)
        "demo": dict(widths=(8, 16, 32), attention=(False, False, False), batch_size=16, steps=150,
                     noise_level=400, stride=200),
        # within design §3's 5 min per cell. Issue 19 item 3 (scripts/diagnose_ddpm.py, validation of synth-tumor):
        # the raw residual stays near chance at any budget a cell affords, so the map is smoothed (gaussian_sigma);
        # the smoothed map improves steeply with training steps, so the narrow network without attention (about a
        # third of the wide one's step cost, docs/calibration.md#wolleb) takes 450 steps in the time 150 of the wide
        # one took; L = 100 beat 200 and 400 and needs 2 DDIM steps. The network trains only on t <= 500 (t <= 200
        # did worse). The measured curve: docs/calibration.md#ddpm.
        "quick": dict(widths=(8, 16, 32), attention=(False, False, False), steps=450, lr=1e-3, train_max_t=500,
                      noise_level=100, stride=50, gaussian_sigma=1.5),
        # pDDPM's / AnoDDPM's scale on a GPU: a full-width UNet, learned variances, EMA, fine DDIM steps
        "paper": dict(widths=(128, 128, 256, 256, 512, 512), res_blocks=2, attention=(False, False, False, False, True, False),
                      norm_groups=32, learn_sigma=True, lr=1e-4, batch_size=10, steps=50_000, ema=0.9999,
                      noise_level=400, stride=1, log_every=100, median_filter=5),
    }

    def __init__(self, config, device="cpu", modalities=(), seed=0):
        super().__init__(config, device, modalities, seed)
        c = config
        if len(c.widths) != len(c.attention):
            raise ValueError("ddpm: widths and attention must have one entry per level")
        if not 0 < c.noise_level < c.timesteps:
            raise ValueError(f"ddpm: noise_level {c.noise_level} must lie in (0, {c.timesteps})")
        check_max_t("ddpm", "train_max_t", c.train_max_t, c.noise_level, c.timesteps)
        if c.median_filter < 0 or c.gaussian_sigma < 0:
            raise ValueError("ddpm: median_filter and gaussian_sigma must be >= 0 (0 = none)")
        self.betas, self.alphas_cumprod = linear_schedule(c.timesteps)

    @classmethod
    def search_space(cls, trial):
        return {
            # up to 500: quick trains its network on t <= 500 only
            "noise_level": trial.suggest_int("noise_level", 100, 500, step=100),
            "stride": trial.suggest_categorical("stride", [10, 25, 50, 100]),
            "gaussian_sigma": trial.suggest_categorical("gaussian_sigma", [0.0, 1.0, 1.5, 2.0]),
        }

    def build(self, in_shape) -> None:
        c = self.config
        self.in_shape = tuple(int(v) for v in in_shape)
        self.unet = diffusion_unet(self.in_shape[0], c.widths, c.res_blocks, c.attention, c.norm_groups, c.learn_sigma, None)
        self.unet.to(self.device).eval()

    def fit(self, train: SliceSet, val: SliceSet, log) -> None:
        c = self.config
        train = train.healthy()  # the harness gives healthy slices only; this keeps it so
        if len(train) == 0:
            raise ValueError("ddpm: no healthy training slices")
        x = self.network_input(train.images)  # converted batch by batch
        self.build(x[:1].shape[1:])
        key = part_key(c, DDPM_PART, in_shape=list(self.in_shape), modalities=list(self.modalities))
        schedule = Schedule(c.steps, c.batch_size, c.lr, c.max_minutes, c.ema, c.log_every, c.train_max_t)
        state = log.cached(DDPM_PART, key, lambda: train_denoiser(
            self.unet, x, None, self.betas, self.alphas_cumprod, schedule, c.learn_sigma, c.vlb_weight, self.device, log, "ddpm",
            seed=self.seed))
        self.unet.load_state_dict(state)
        self.unet.eval()

    def slice_noise(self, x: torch.Tensor) -> torch.Tensor:
        """Gaussian noise per slice from a generator seeded by (run seed, noise_seed, the slice's bytes)."""
        run_seed = self.seed
        noise = torch.empty_like(x, device="cpu")
        for i, slice_ in enumerate(x.detach().cpu().numpy()):
            digest = hashlib.blake2b(np.ascontiguousarray(slice_).tobytes(), digest_size=8,
                                     key=f"{run_seed}-{self.config.noise_seed}".encode()).digest()
            generator = torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1)
            noise[i] = torch.randn(x.shape[1:], generator=generator)
        return noise.to(x.device)

    def translate(self, x: torch.Tensor) -> torch.Tensor:
        """Network input -> x_hat: noised to level L (seeded per slice), then denoised."""
        # x_L = sqrt(abar_L) x_0 + sqrt(1 - abar_L) eps (Ho et al. 2020, eq. 4), then DDIM steps back to t = 0
        c = self.config
        abar = float(self.alphas_cumprod[c.noise_level])
        x_level = abar**0.5 * x + (1 - abar) ** 0.5 * self.slice_noise(x)
        channels = self.in_shape[0]

        def eps(x_t, t):
            with autocast(self.device):
                return self.unet(x_t, t)[:, :channels].float()

        return guided_ddim_decode(eps, x_level, ddim_times(c.noise_level, c.stride), self.alphas_cumprod, clip=c.clip_denoised)

    def refine(self, maps: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """The residual post-processed inside the brain (the voxels where some channel is above 0)."""
        return self.post_process(maps, (images.to(maps.device) > 0).any(dim=1))

    def post_process(self, maps: torch.Tensor, brain: torch.Tensor) -> torch.Tensor:
        """The residual [B, H, W] zeroed outside ``brain``, median-filtered and/or Gaussian-smoothed, masked again
        (see the module's docstring); unchanged when neither filter is set."""
        c = self.config
        if c.median_filter <= 1 and c.gaussian_sigma <= 0:
            return maps
        maps = maps * brain
        if c.median_filter > 1:
            maps = median_filter(maps, c.median_filter)
        if c.gaussian_sigma > 0:
            maps = gaussian_filter(maps, c.gaussian_sigma)
        return maps * brain


def median_filter(maps: torch.Tensor, k: int) -> torch.Tensor:
    """k x k median of each map [B, H, W], borders reflected (for an even k the window reaches one pixel further up
    and left than down and right)."""
    lo, hi = k // 2, (k - 1) // 2
    x = F.pad(maps[:, None], (lo, hi, lo, hi), mode="reflect")
    return F.unfold(x, k).median(dim=1).values.view_as(maps)


def gaussian_filter(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian smoothing of each map [B, H, W] (separable, truncated at 4 sigma as scipy's, borders reflected)."""
    radius = max(int(4 * sigma + 0.5), 1)
    offsets = torch.arange(-radius, radius + 1, dtype=maps.dtype, device=maps.device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    x = F.pad(maps[:, None], (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1))
    x = F.conv2d(x, kernel.view(1, 1, -1, 1))
    return x[:, 0]
