"""Wolleb, Bieder, Sandkühler and Cattin (2022), "Diffusion models for medical anomaly detection", MICCAI.

Theirs (and their code, github.com/JuliaWolleb/diffusion-anomaly): a DDPM (T = 1000, linear schedule,
learned variances) trained on all training slices, class-conditional on the image label, and a
noise-conditioned classifier (the encoder half of the UNet) trained with cross-entropy on x_t,
t ~ U[0, T). At inference the slice is encoded with deterministic DDIM to noise level L, then decoded with
DDIM guided towards "healthy": eps_hat = eps - sqrt(1 - abar_t) s grad_x log p(healthy | x_t), the gradient
taken at x_t with the model's own t; the DDPM is conditioned on "healthy" (y = 0) in both directions (their
README trains it with ``--class_cond True`` and passes y = 0 to both loops: the paper's setting). The model's
x0 is clipped to [-1, 1] with eps re-derived; in a guided step the unguided x0 is clipped before the
guidance is added and the guided x0 is left unclipped (``clip_x0 = "unguided"``, their ``condition_score2``;
``"guided"`` clips the guided x0 instead, this method's earlier order; the difference it makes is recorded in
docs/calibration.md#wolleb). The anomaly map is |x - x_hat|.

Ours: differences from their loops that ``sampling.py`` lists (encoding from x itself rather than x noised to
t = 0, a symmetric time grid, the classifier given the original t when timesteps are skipped);
MONAI's ``DiffusionModelUNet`` / ``DiffusionModelEncoder`` (the classifier's head is MONAI's
dense layer, not the authors' attention pooling); the number of DDIM steps is a hyperparameter
(``stride``: one step every ``stride`` timesteps; the paper: stride 1); the map sums |x - x_hat| over
channels in [-1, 1] units; the slice score is the harness's default (99th percentile of the map) or,
with ``score = "classifier"``, the classifier's p(lesion | x, t = 0). The trained DDPM and classifier are
cached by their own hyperparameters (``FitLog.cached``), so changing L, s or the stride does not retrain.
``train_max_t`` / ``classifier_max_t`` (``quick``: 500) train the networks on t <= that bound only, since
the sampler never goes above L; 0 (``paper``) is the authors' t ~ U[0, T).
Our pooled metrics are not the paper's table (theirs: per-slice Otsu Dice over diseased slices).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lesionbench.method import AnomalyOutput, SliceSet, Supervision
from lesionbench.methods.diffusion.base import DiffusionMethod, NetworkInput
from lesionbench.parts import part_key, shapes
from lesionbench.training import autocast
from lesionbench.methods.diffusion.networks import diffusion_unet, noise_conditioned_classifier
from lesionbench.methods.diffusion.sampling import (
    CLIP_X0, class_log_prob_gradient, ddim_encode, ddim_encode_trajectory, ddim_times, guided_ddim_decode, linear_schedule,
)
from lesionbench.methods.diffusion.training import Schedule, check_max_t, train_classifier, train_denoiser

HEALTHY, LESION = 0, 1
DDPM, CLASSIFIER = "ddpm", "classifier"  # the trained parts (cached by FitLog.cached)


@dataclass
class WollebConfig:
    # the DDPM (part "ddpm"; shapes(): the fields a part's cached weights depend on, lesionbench.parts). Both
    # networks are initialised before the DDPM trains, and the classifier trains on the random stream the DDPM's
    # training leaves (design §3: a part loaded from the cache leaves the stream where training would have):
    # so what changes the DDPM's draws shapes the classifier too, and the classifier's architecture the DDPM
    timesteps: int = shapes(DDPM, CLASSIFIER, default=1000)  # T, linear schedule
    widths: tuple[int, ...] = shapes(DDPM, CLASSIFIER, default=(16, 32, 64))  # UNet channels per level
    res_blocks: int = shapes(DDPM, CLASSIFIER, default=1)
    # attention per level (one head)
    attention: tuple[bool, ...] = shapes(DDPM, CLASSIFIER, default=(False, False, True))
    norm_groups: int = shapes(DDPM, CLASSIFIER, default=8)
    # learned variances with the hybrid loss (improved DDPM), as the authors train
    learn_sigma: bool = shapes(DDPM, CLASSIFIER, default=False)
    vlb_weight: float = shapes(DDPM, default=0.001)  # lambda of the hybrid loss
    lr: float = shapes(DDPM, default=1e-3)
    batch_size: int = shapes(DDPM, CLASSIFIER, default=32)
    steps: int = shapes(DDPM, CLASSIFIER, default=220)
    max_minutes: float = shapes(DDPM, CLASSIFIER, default=0.0)  # wall-clock cap of DDPM training; 0 = none
    ema: float = shapes(DDPM, default=0.0)  # EMA decay of the DDPM weights; 0 = none
    # DDPM trained on t in {0, ..., train_max_t} only (>= L); 0 = all T (the paper)
    train_max_t: int = shapes(DDPM, default=0, omit_default=True)
    # the noise-conditioned classifier (part "classifier")
    classifier_widths: tuple[int, ...] = shapes(CLASSIFIER, DDPM, default=(16, 32, 64))
    classifier_res_blocks: int = shapes(CLASSIFIER, DDPM, default=1)
    classifier_attention: tuple[bool, ...] = shapes(CLASSIFIER, DDPM, default=(False, False, True))
    classifier_lr: float = shapes(CLASSIFIER, default=1e-3)
    classifier_batch_size: int = shapes(CLASSIFIER, default=32)
    classifier_steps: int = shapes(CLASSIFIER, default=150)
    classifier_minutes: float = shapes(CLASSIFIER, default=0.0)  # wall-clock cap of classifier training; 0 = none
    # classifier trained on t in {0, ..., classifier_max_t} only (>= L); 0 = all T (the paper)
    classifier_max_t: int = shapes(CLASSIFIER, default=0, omit_default=True)
    # inference
    noise_level: int = 600  # L
    guidance_scale: float = 5.0  # s
    stride: int = 50  # timesteps per DDIM step (1 = no skipping, as the paper)
    clip_denoised: bool = True
    clip_x0: str = "unguided"  # guided steps clip the "unguided" x0, then guide (the authors' code), or the "guided" x0
    score: str = "map"  # slice score: "map" (harness default) or "classifier" (p(lesion | x, t = 0))
    log_every: int = 10


class Wolleb(DiffusionMethod):
    """The hooks a subclass may override or call (``wolleb-wargnier`` does): ``classifier_part`` (how the guiding
    classifier is trained and cached), ``anomaly_maps`` (network input -> maps), and the steps they build on:
    ``to_network_input``, ``translate``, ``residual``, ``eps_fn``, ``logits_fn``, ``part_keys``, ``build``,
    ``multiple``; ``fit``, ``state_dict`` and ``load_state_dict`` extend through ``super()``."""

    network_names = ("unet", "classifier")

    name = "wolleb"
    description = "Wolleb et al. 2022: DDIM-encode to level L, decode guided to 'healthy' by a noise-conditioned classifier; map = |x - x_hat|"
    supervision = Supervision.IMAGE
    Config = WollebConfig
    profiles = {
        # seconds on 2 CPU cores: proves the code path
        "smoke": dict(widths=(8, 16), attention=(False, False), norm_groups=4, steps=6, batch_size=8,
                      classifier_widths=(8, 16), classifier_attention=(False, False), classifier_steps=6,
                      classifier_batch_size=8, noise_level=200, stride=100, guidance_scale=5.0, log_every=2),
        # the README's job: a fixed number of steps (no wall-clock cap: results must not depend on machine load)
        # (three narrow levels without attention: MONAI's middle block attends over the whole lowest level, and
        # its CPU step cost dominates at this size; see docs/calibration.md#wolleb)
        "demo": dict(widths=(8, 16, 32), attention=(False, False, False), batch_size=16, steps=150,
                     classifier_widths=(8, 16, 32), classifier_attention=(False, False, False), classifier_steps=200,
                     classifier_batch_size=16, noise_level=200, stride=50, guidance_scale=100.0),
        # a meaningful CPU result within design §3's 5 min per cell. Both networks train only on the timesteps
        # the sampler uses (t <= 500 >= L; the paper: all T), which makes 250 steps of each enough; the DDPM has
        # three narrow levels without attention (8, 16, 32), much cheaper a step than (16, 32, 64) with
        # attention. Sizes, steps, L, s and the stride were chosen on synth-tumor's validation split; the
        # timings and scores: docs/calibration.md#wolleb.
        "quick": dict(widths=(8, 16, 32), attention=(False, False, False), steps=250, lr=1e-3, train_max_t=500,
                      classifier_widths=(16, 32, 64), classifier_steps=250, classifier_max_t=500,
                      noise_level=200, stride=25, guidance_scale=100.0),
        # the authors' settings (GPU; the paper uses 256x256 slices)
        "paper": dict(widths=(128, 128, 256, 256, 512, 512), res_blocks=2, attention=(False, False, False, False, True, False),
                      norm_groups=32, learn_sigma=True, lr=1e-4, batch_size=10, steps=50_000, ema=0.9999,
                      classifier_widths=(32, 32, 64, 64, 128, 128), classifier_res_blocks=2,
                      classifier_attention=(False, False, False, True, True, True), classifier_lr=3e-4,
                      classifier_batch_size=10, classifier_steps=5000, noise_level=500, guidance_scale=100.0,
                      stride=1, log_every=100),
    }

    def __init__(self, config, device="cpu", modalities=(), seed=0):
        super().__init__(config, device, modalities, seed)
        c = config
        if c.score not in ("map", "classifier"):
            raise ValueError(f"{self.name}: score must be 'map' or 'classifier', not {c.score!r}")
        if c.clip_x0 not in CLIP_X0:
            raise ValueError(f"{self.name}: clip_x0 must be one of {CLIP_X0}, not {c.clip_x0!r}")
        if len(c.widths) != len(c.attention) or len(c.classifier_widths) != len(c.classifier_attention):
            raise ValueError(f"{self.name}: widths and attention (and their classifier_ twins) must have one entry per level")
        if not 0 < c.noise_level < c.timesteps:
            raise ValueError(f"{self.name}: noise_level {c.noise_level} must lie in (0, {c.timesteps})")
        for key in ("train_max_t", "classifier_max_t"):
            check_max_t(self.name, key, getattr(c, key), c.noise_level, c.timesteps)
        self.unet = self.classifier = None  # built in fit (or load_state_dict), once the slice shape is known
        self.betas, self.alphas_cumprod = linear_schedule(c.timesteps)

    @classmethod
    def search_space(cls, trial):
        return {
            # up to 500 (the paper's L): quick trains its networks on t <= 500 only
            "noise_level": trial.suggest_int("noise_level", 100, 500, step=50),
            "guidance_scale": trial.suggest_float("guidance_scale", 1.0, 100.0, log=True),
            "stride": trial.suggest_categorical("stride", [10, 25, 50, 100]),
        }

    # -- networks --------------------------------------------------------------------------------------

    def multiple(self) -> int:
        return 2 ** max(len(self.config.widths) - 1, len(self.config.classifier_widths))

    def build(self, in_shape) -> None:
        c = self.config
        self.in_shape = tuple(int(v) for v in in_shape)
        channels = self.in_shape[0]
        self.unet = diffusion_unet(channels, c.widths, c.res_blocks, c.attention, c.norm_groups, c.learn_sigma, 2).to(self.device).eval()
        self.classifier = noise_conditioned_classifier(channels, self.in_shape[1:], c.classifier_widths, c.classifier_res_blocks,
                                                       c.classifier_attention, c.norm_groups).to(self.device).eval()

    def part_keys(self) -> tuple[dict, dict]:
        """Each trained part's cache key: the fields declared to shape it, the slice shape and the modalities."""
        data = {"in_shape": list(self.in_shape), "modalities": list(self.modalities)}
        return part_key(self.config, DDPM, **data), part_key(self.config, CLASSIFIER, **data)

    # -- training --------------------------------------------------------------------------------------

    def fit(self, train: SliceSet, val: SliceSet, log) -> None:
        c = self.config
        if len(train) == 0 or train.labels.min() == train.labels.max():
            raise ValueError(f"{self.name}: training needs both healthy and lesion slices (image labels)")
        x = self.network_input(train.images)  # converted batch by batch
        labels = train.labels.long()
        self.build(x[:1].shape[1:])
        ddpm_key, clf_key = self.part_keys()
        ddpm_schedule = Schedule(c.steps, c.batch_size, c.lr, c.max_minutes, c.ema, c.log_every, c.train_max_t)
        clf_schedule = Schedule(c.classifier_steps, c.classifier_batch_size, c.classifier_lr, c.classifier_minutes, 0.0, c.log_every,
                                c.classifier_max_t)
        unet_state = log.cached(DDPM, ddpm_key, lambda: train_denoiser(
            self.unet, x, labels, self.betas, self.alphas_cumprod, ddpm_schedule, c.learn_sigma, c.vlb_weight, self.device, log, "ddpm",
            seed=self.seed))
        clf_state = self.classifier_part(train, x, labels, clf_key, clf_schedule, log)
        self.unet.load_state_dict(unet_state)
        self.classifier.load_state_dict(clf_state)
        self.unet.eval(), self.classifier.eval()

    def classifier_part(self, train: SliceSet, x: NetworkInput, labels: torch.Tensor, key: dict, schedule: Schedule, log) -> dict:
        """The trained noise-conditioned classifier (cached); ``x[index]``: training slices as network input."""
        return log.cached(CLASSIFIER, key, lambda: train_classifier(
            self.classifier, x, labels, self.alphas_cumprod, schedule, self.device, log, seed=self.seed))

    # -- inference -------------------------------------------------------------------------------------

    def eps_fn(self, label: int = HEALTHY):
        """The DDPM as ``eps(x, t)`` conditioned on ``label`` (the first C output channels: eps; the rest: v)."""
        channels = self.in_shape[0]

        def eps(x, t):
            with autocast(self.device):
                return self.unet(x, t, class_labels=torch.full_like(t, label))[:, :channels].float()

        return eps

    def logits_fn(self, x, t):
        with autocast(self.device):
            return self.classifier(x, t).float()

    def translate(self, x: torch.Tensor, scale: float | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x in [-1, 1] (padded) -> its healthy counterpart x_hat: DDIM encoding to L, guided DDIM decoding.
        With ``mask`` [B, 1, H, W] in [0, 1] the decoding keeps the encoded latents where it is 0 (``wolleb-wargnier``)."""
        c = self.config
        scale = c.guidance_scale if scale is None else scale
        times = ddim_times(c.noise_level, c.stride)
        eps = self.eps_fn(HEALTHY)
        grad = class_log_prob_gradient(self.logits_fn, HEALTHY)
        if mask is None:
            latent = ddim_encode(eps, x, times, self.alphas_cumprod, c.clip_denoised)
            return guided_ddim_decode(eps, latent, times, self.alphas_cumprod, grad, scale, c.clip_denoised, clip_x0=c.clip_x0)
        path = ddim_encode_trajectory(eps, x, times, self.alphas_cumprod, c.clip_denoised)
        return guided_ddim_decode(eps, path[-1], times, self.alphas_cumprod, grad, scale, c.clip_denoised,
                                  mask=mask, trajectory=path, clip_x0=c.clip_x0)

    def residual(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """[B, C, H, W] in [-1, 1] (padded) -> [B, H, W]: |x - x_hat| summed over channels."""
        return (x - self.translate(x, mask=mask)).abs().sum(dim=1)

    def anomaly_maps(self, x: torch.Tensor) -> torch.Tensor:
        """The anomaly maps of padded inputs (``wolleb``: the residual)."""
        return self.residual(x)

    def predict(self, images: torch.Tensor) -> AnomalyOutput:
        if self.unet is None:
            raise RuntimeError(f"{self.name}: predict before fit or load_state_dict")
        h, w = images.shape[-2:]
        x = self.to_network_input(images)
        maps = self.anomaly_maps(x)[:, :h, :w]
        scores = None
        if self.config.score == "classifier":
            with torch.no_grad():
                t0 = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
                scores = torch.softmax(self.logits_fn(x, t0), dim=1)[:, LESION].to(images.device)
        return AnomalyOutput(maps=maps.float().to(images.device), scores=scores)
