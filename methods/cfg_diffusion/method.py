"""Classifier-free guided diffusion for weakly supervised lesion localisation: Ho & Salimans (2022),
"Classifier-free diffusion guidance", applied to anomaly detection as in Sanchez, Kascenas, Liu, O'Neil and
Tsaftaris (2022), "What is healthy? Generative counterfactual diffusion for lesion localization"
(DGM4MICCAI; code github.com/vios-s/Diff-SCM).

One class-conditional DDPM, trained on all training slices with their image labels, each label replaced by a
null label with probability ``label_dropout`` (p_uncond), so the same network is both the conditional model
eps(x_t, y) and the unconditional one eps(x_t, null). No classifier is trained. At inference a slice is
DDIM-encoded to level L with the **unconditional** model, then DDIM-decoded with
eps_hat = (1 + w) eps(x_t, healthy) - w eps(x_t, null); the map is |x - x_hat| summed over channels.

Why the encoding is unconditional: ``predict`` receives images only, so the slice's own label is unknown at
test time (conditioning on it would hand the method the test labels, and guessing it needs the classifier
that classifier-free guidance removes); the unconditional model has seen both classes, so it inverts healthy
and lesion slices alike, where a healthy-conditioned encoding (``wolleb``'s) is off its training class on
lesion slices. Sanchez et al.'s public code does the same: its encoding loop calls the model with the null
label (``sampling_utils.py``, ``model_fn`` sets y = num_classes), its decoding uses the combination above
with the target class 0 (healthy).

Following Ho & Salimans: per-sample Bernoulli label dropout (their Alg. 1); the combination (their eq. 6);
the null label as one more class embedding. Following Sanchez et al.'s code: unconditional encoding,
guided decoding towards healthy, the model's x0 clipped to [-1, 1] with eps re-derived *after* the
combination (guided-diffusion's ``p_mean_variance`` applied to the combined eps), and the ``paper`` profile
(their ``diff_scm/configs/brats_configs.py``, BraTS 2021 at 64 px). Their dropout draws int(0.35 B) indices
with replacement per batch (about 0.30 of the labels at B = 64); ours is per sample.

Ours: ``label_dropout`` 0.2 by default (Ho & Salimans found p_uncond 0.1-0.2 best and 0.5 worse; we take the
top of that range because here the unconditional model also does all of the encoding, and the CPU profiles
train for a few hundred steps only, so the null embedding needs its share of them); w = 2 by default
(Sanchez et al.'s ``norm_cond_scale`` 3 = 1 + w); ``wolleb``'s networks (MONAI's ``DiffusionModelUNet``, class
embedding added to the time embedding), schedule, training loop and DDIM functions, with its symmetric time
grid and encoding from x itself (see ``lesionbench.methods.diffusion.sampling``); plain clipping where their code
also clamps x0 to its 99th spatial percentile (``dynamic_sampling``); no resblock dropout (theirs 0.1) and
AdamW without weight decay (theirs 0.01), as ``wolleb``'s training loop has them. Decoding costs two UNet
passes a step (batched as one of 2 B) where ``wolleb``'s costs one UNet pass and a classifier forward and
backward: ``scripts/bench_guidance_cost.py`` measures the ratio.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lesionbench.method import SliceSet, Supervision
from lesionbench.methods.diffusion.base import DiffusionMethod
from lesionbench.parts import part_key, shapes
from lesionbench.methods.cfg_diffusion.guidance import LabelDropout, classifier_free_eps_fn, labelled_eps_fn
from lesionbench.methods.diffusion.networks import diffusion_unet
from lesionbench.methods.diffusion.sampling import ddim_encode, ddim_times, guided_ddim_decode, linear_schedule
from lesionbench.methods.diffusion.training import Schedule, check_max_t, train_denoiser
from lesionbench.training import autocast

HEALTHY, LESION, NULL = 0, 1, 2  # NULL: the dropped label, i.e. the unconditional model
DDPM_PART = "ddpm"


def shapes_ddpm(default):
    """A Config field that shapes the trained DDPM: it is part of the DDPM's cache key (``lesionbench.parts``)."""
    return shapes(DDPM_PART, default=default)


@dataclass
class CFGDiffusionConfig:
    # the DDPM (every field here shapes the trained weights)
    timesteps: int = shapes_ddpm(1000)  # T, linear schedule
    widths: tuple[int, ...] = shapes_ddpm((16, 32, 64))  # UNet channels per level
    res_blocks: int = shapes_ddpm(1)
    attention: tuple[bool, ...] = shapes_ddpm((False, False, True))  # attention per level (one head)
    norm_groups: int = shapes_ddpm(8)
    learn_sigma: bool = shapes_ddpm(False)  # learned variances with the hybrid loss (improved DDPM)
    vlb_weight: float = shapes_ddpm(0.001)
    lr: float = shapes_ddpm(1e-3)
    batch_size: int = shapes_ddpm(32)
    steps: int = shapes_ddpm(250)
    max_minutes: float = shapes_ddpm(0.0)  # wall-clock cap of training; 0 = none
    ema: float = shapes_ddpm(0.0)  # EMA decay of the weights; 0 = none
    train_max_t: int = shapes_ddpm(0)  # trained on t in {0, ..., train_max_t} only (>= L); 0 = all T
    label_dropout: float = shapes_ddpm(0.2)  # p_uncond: probability that a training label becomes the null label
    # inference
    noise_level: int = 200  # L
    guidance_scale: float = 2.0  # w of eps_hat = (1 + w) eps(x_t, healthy) - w eps(x_t, null)
    stride: int = 25  # timesteps per DDIM step
    clip_denoised: bool = True
    log_every: int = 10


class CFGDiffusion(DiffusionMethod):
    name = "cfg-diffusion"
    description = ("Classifier-free guidance (Ho & Salimans 2022; Sanchez et al. 2022): a DDPM with label dropout; "
                   "encode unconditionally to L, decode guided to 'healthy'; map = |x - x_hat|")
    supervision = Supervision.IMAGE
    Config = CFGDiffusionConfig
    profiles = {
        # seconds on 2 CPU cores: proves the code path (wolleb's smoke DDPM)
        "smoke": dict(widths=(8, 16), attention=(False, False), norm_groups=4, steps=6, batch_size=8,
                      noise_level=200, stride=100, log_every=2),
        # the README's job: wolleb's demo DDPM and sampler grid (a fixed number of steps, no wall-clock cap)
        "demo": dict(widths=(8, 16, 32), attention=(False, False, False), batch_size=16, steps=150,
                     noise_level=200, stride=50),
        # wolleb's quick DDPM and timesteps (three narrow levels, 250 steps on t <= 500, L = 200, stride 25), so
        # that the two rows differ in the guidance only; no classifier to train, so the fit takes about half of
        # wolleb's. w and p_uncond are the defaults (not tuned on this data).
        "quick": dict(widths=(8, 16, 32), attention=(False, False, False), steps=250, lr=1e-3, train_max_t=500,
                      noise_level=200, stride=25),
        # Sanchez et al.'s public settings (diff_scm/configs/brats_configs.py; GPU, 64 px BraTS 2021): UNet 64
        # channels x (1, 2, 3, 4), 2 res blocks, attention at 32, 16 and 8 px, one head, no learned variances;
        # lr 1e-4, batch 64, 50k iterations, EMA 0.9999; p_uncond 0.3 (their int(0.35 B) draws with replacement);
        # norm_cond_scale 3 (w = 2); DDIM over 100 respaced steps to 0.75 T (L = 750, stride 10)
        "paper": dict(widths=(64, 128, 192, 256), res_blocks=2, attention=(False, True, True, True), norm_groups=32,
                      learn_sigma=False, lr=1e-4, batch_size=64, steps=50_000, ema=0.9999, label_dropout=0.3,
                      noise_level=750, stride=10, guidance_scale=2.0, log_every=100),
    }

    def __init__(self, config, device="cpu", modalities=(), seed=0):
        super().__init__(config, device, modalities, seed)
        c = config
        if len(c.widths) != len(c.attention):
            raise ValueError(f"{self.name}: widths and attention must have one entry per level")
        if not 0 < c.noise_level < c.timesteps:
            raise ValueError(f"{self.name}: noise_level {c.noise_level} must lie in (0, {c.timesteps})")
        if not 0 < c.label_dropout < 1:  # 0 trains no unconditional model, 1 no conditional one
            raise ValueError(f"{self.name}: label_dropout must lie in (0, 1), not {c.label_dropout}")
        if c.guidance_scale < 0:
            raise ValueError(f"{self.name}: guidance_scale w must be >= 0 (0: the healthy-conditioned model alone), not {c.guidance_scale}")
        check_max_t(self.name, "train_max_t", c.train_max_t, c.noise_level, c.timesteps)
        self.betas, self.alphas_cumprod = linear_schedule(c.timesteps)

    @classmethod
    def search_space(cls, trial):
        # inference settings only: the trained DDPM is cached and shared by every trial (p_uncond would retrain it)
        return {
            # up to 500: quick trains its network on t <= 500 only
            "noise_level": trial.suggest_int("noise_level", 100, 500, step=50),
            # around Sanchez et al.'s w = 2; Ho & Salimans swept 0.1-4 (larger w: stronger edits, less fidelity)
            "guidance_scale": trial.suggest_float("guidance_scale", 0.25, 8.0, log=True),
            "stride": trial.suggest_categorical("stride", [10, 25, 50, 100]),
        }

    # -- networks --------------------------------------------------------------------------------------

    def build(self, in_shape) -> None:
        c = self.config
        self.in_shape = tuple(int(v) for v in in_shape)
        # three class embeddings: healthy, lesion, and the null label of the unconditional model
        self.unet = diffusion_unet(self.in_shape[0], c.widths, c.res_blocks, c.attention, c.norm_groups,
                                   c.learn_sigma, 3).to(self.device).eval()

    def ddpm_key(self) -> dict:
        """The DDPM's cache key: the fields declared to shape it, the slice shape and the modalities."""
        return part_key(self.config, DDPM_PART, in_shape=list(self.in_shape), modalities=list(self.modalities))

    # -- training --------------------------------------------------------------------------------------

    def fit(self, train: SliceSet, val: SliceSet, log) -> None:
        c = self.config
        if len(train) == 0 or train.labels.min() == train.labels.max():
            raise ValueError(f"{self.name}: training needs both healthy and lesion slices (image labels)")
        x = self.network_input(train.images)  # converted batch by batch
        self.build(x[:1].shape[1:])
        # its own stream from the run seed; the batch order's generator is seeded with the run seed itself
        dropout = torch.Generator().manual_seed(self.seed + 1)
        labels = LabelDropout(train.labels.long(), c.label_dropout, NULL, dropout)
        schedule = Schedule(c.steps, c.batch_size, c.lr, c.max_minutes, c.ema, c.log_every, c.train_max_t)
        state = log.cached(DDPM_PART, self.ddpm_key(), lambda: train_denoiser(
            self.unet, x, labels, self.betas, self.alphas_cumprod, schedule, c.learn_sigma, c.vlb_weight, self.device, log, "ddpm",
            seed=self.seed))
        self.unet.load_state_dict(state)
        self.unet.eval()

    # -- inference -------------------------------------------------------------------------------------

    def labelled_eps(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The DDPM as eps(x, t, y) (the first C output channels: eps; the rest, with learned variances: v)."""
        with autocast(self.device):
            return self.unet(x, t, class_labels=y)[:, : self.in_shape[0]].float()

    def translate(self, x: torch.Tensor, w: float | None = None) -> torch.Tensor:
        """x in [-1, 1] (padded) -> its healthy counterpart x_hat: unconditional DDIM encoding to L, then DDIM
        decoding with the classifier-free guided eps towards healthy."""
        c = self.config
        w = c.guidance_scale if w is None else w
        times = ddim_times(c.noise_level, c.stride)
        latent = ddim_encode(labelled_eps_fn(self.labelled_eps, NULL), x, times, self.alphas_cumprod, c.clip_denoised)
        guided = classifier_free_eps_fn(self.labelled_eps, HEALTHY, NULL, w)
        return guided_ddim_decode(guided, latent, times, self.alphas_cumprod, clip=c.clip_denoised)
