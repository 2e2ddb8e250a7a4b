"""A variational autoencoder trained on healthy slices; the anomaly map is the reconstruction residual.

After Baur, Denner, Wiestler, Navab and Albarqouni (2021), "Autoencoders for unsupervised anomaly
segmentation in brain MR images: a comparative study", Medical Image Analysis 69:101952.

Theirs: a VAE with a dense bottleneck, trained on healthy slices only; anomaly map = |x - x_hat|.
From the authors' public code (github.com/StefanDenn3r/Unsupervised_Anomaly_Detection_Brain_MRI), which
the ``paper`` profile follows: loss = L1 error summed over pixels + KL divergence (weight 1), averaged
over the batch; 128x128 slices, latent size 128, four 5x5 stride-2 convolutions with 32-64-128-128
filters, batch norm and leaky ReLU; Adam with lr 1e-4 and beta1 0.5.

Ours: the network is MONAI's ``VarAutoEncoder`` (no 1x1 channel reduction before the dense layer;
the decoder ends in a transposed convolution and a sigmoid, since inputs lie in [0, 1]); all
modalities go in as channels (the authors use one: FLAIR, or T2) and the map sums the residual over
channels; inference decodes the posterior mean; training counts steps, not epochs, and early
stopping keeps the weights with the best harness validation score (the authors: validation loss,
patience 5 epochs); batch size 64 in ``paper`` is our GPU choice (the authors' example script uses 8).
The CPU profiles (defaults) weight the KL term 0.01 and train at lr 3e-3: with the paper's weight 1, a
few hundred CPU steps reconstruct a blurred mean brain (measured: docs/calibration.md#vae).
The authors' post-processing (positive residuals only, a hyperintensity prior, a median filter, an
eroded brain mask) is not applied: the map is the raw residual. Optionally (``loss_in_brain``) the
loss counts brain voxels only; the map is then zero wherever the input is zero in every channel
(outside the brain), where the output was never trained.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from lesionbench.method import AnomalyOutput, Method, SliceSet, Supervision
from lesionbench.training import KeepBest, autocast, out_of_time, pad_to_multiple, shuffled_batches


@dataclass
class VAEConfig:
    channels: tuple[int, ...] = (32, 64, 128, 128)  # encoder filters, top block first
    strides: tuple[int, ...] = (2, 2, 2, 2)  # one per block; the decoder mirrors them
    kernel_size: int = 3
    norm: str = "batch"  # any MONAI Norm name: "batch", "instance", ...
    act: str = "leakyrelu"  # any MONAI Act name
    latent_size: int = 128
    reconstruction: str = "l1"  # "l1" or "mse", summed over voxels
    loss_in_brain: bool = False  # count only brain voxels in the reconstruction loss
    kl_weight: float = 0.01  # KL (summed over the latent) against the summed residual; the paper's is 1
    lr: float = 3e-3
    beta1: float = 0.9  # Adam's first-moment decay
    batch_size: int = 32
    max_steps: int = 3000
    max_minutes: float = 0.0  # wall-clock budget of fit; 0 = none
    eval_every: int = 0  # steps between log.evaluate calls; 0 = never (keep the last weights)
    log_every: int = 10  # steps between training-loss points


class VAE(Method):
    name = "vae"
    description = "Baur et al. 2021: a VAE trained on healthy slices; the map is |x - reconstruction|"
    supervision = Supervision.NONE
    Config = VAEConfig
    profiles = {
        # seconds on 2 CPU cores, ~100 slices of 4x32x32: proves the code path
        "smoke": dict(channels=(8, 16, 32), strides=(2, 2, 2), latent_size=32, batch_size=16, max_steps=100,
                      log_every=5),
        # ~20-30 s on 2 idle CPU cores at 4x64x64
        "demo": dict(max_steps=600, eval_every=200),
        # a meaningful CPU result: ~2 min on 2 idle cores for ~700 healthy 4x64x64 slices (no wall-clock cap:
        # a cap would make the number of steps, and so the result, depend on the machine's load)
        "quick": dict(max_steps=3000, eval_every=500),
        # the authors' settings (see the module docstring), for a GPU and 128x128 slices
        "paper": dict(channels=(32, 64, 128, 128), strides=(2, 2, 2, 2), kernel_size=5, norm="batch", act="leakyrelu",
                      latent_size=128, reconstruction="l1", kl_weight=1.0, lr=1e-4, beta1=0.5, batch_size=64,
                      max_steps=50_000, eval_every=1000, log_every=50),
    }

    def __init__(self, config, device="cpu", modalities=(), seed=0):
        super().__init__(config, device, modalities, seed)
        if config.reconstruction not in ("l1", "mse"):
            raise ValueError(f"vae: reconstruction must be 'l1' or 'mse', not {config.reconstruction!r}")
        if len(config.channels) != len(config.strides):
            raise ValueError(f"vae: channels {config.channels} and strides {config.strides} differ in length")
        self.network = None  # built in fit (or load_state_dict), once the slice shape is known
        self.in_shape: tuple[int, int, int] | None = None  # (C, H, W) the network takes, after padding

    @classmethod
    def search_space(cls, trial):
        return {
            "lr": trial.suggest_float("lr", 1e-4, 3e-3, log=True),
            "latent_size": trial.suggest_categorical("latent_size", [32, 64, 128, 256]),
            "kl_weight": trial.suggest_float("kl_weight", 1e-3, 1.0, log=True),
            "reconstruction": trial.suggest_categorical("reconstruction", ["l1", "mse"]),
        }

    # -- network -------------------------------------------------------------------------------------

    def _build_network(self, in_shape: tuple[int, int, int]) -> None:
        from monai.networks.nets import VarAutoEncoder  # lazy: importing monai takes seconds

        c = self.config
        self.in_shape = tuple(int(v) for v in in_shape)
        self.network = VarAutoEncoder(
            spatial_dims=2,
            in_shape=self.in_shape,
            out_channels=self.in_shape[0],
            latent_size=c.latent_size,
            channels=tuple(c.channels),
            strides=tuple(c.strides),
            kernel_size=c.kernel_size,
            up_kernel_size=c.kernel_size,
            norm=c.norm,
            act=c.act,
            use_sigmoid=True,
        ).to(self.device)

    def _padded(self, x: torch.Tensor) -> torch.Tensor:
        """Zero-pad H and W (bottom, right) to a multiple of the total stride, so the decoder's output
        matches the input; zero is the background value."""
        return pad_to_multiple(x, math.prod(self.config.strides))

    def _reconstruct(self, x: torch.Tensor, sample: bool):
        """x [B, C, H, W] -> (x_hat [B, C, H, W] float32, mu, logvar); z is sampled when ``sample``,
        else the posterior mean."""
        h, w = x.shape[-2:]
        xp = self._padded(x)
        if tuple(xp.shape[1:]) != self.in_shape:
            raise ValueError(f"vae: slices of shape {tuple(x.shape[1:])} do not fit a network for {self.in_shape}")
        with autocast(self.device):
            mu, logvar = self.network.encode_forward(xp)
            z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if sample else mu
            x_hat = self.network.decode_forward(z, use_sigmoid=True)
        return x_hat[..., :h, :w].float(), mu.float(), logvar.float()

    # -- training ------------------------------------------------------------------------------------

    def _loss(self, x: torch.Tensor, brain: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-image sums, averaged over the batch (Baur et al.): (total, reconstruction, kl)."""
        x_hat, mu, logvar = self._reconstruct(x, sample=True)
        residual = (x - x_hat).abs() if self.config.reconstruction == "l1" else (x - x_hat).square()
        if self.config.loss_in_brain:
            residual = residual * brain[:, None]
        reconstruction = residual.sum(dim=(1, 2, 3)).mean()
        kl = 0.5 * (mu.square() + logvar.exp() - logvar - 1).sum(dim=1).mean()
        return reconstruction + self.config.kl_weight * kl, reconstruction, kl

    def fit(self, train: SliceSet, val: SliceSet, log) -> None:
        c = self.config
        started = time.monotonic()
        train = train.healthy()  # the harness gives healthy slices only; this keeps it so
        n = len(train)
        if n == 0:
            raise ValueError("vae: no healthy training slices")
        self._build_network(self._padded(train.images[:1]).shape[1:])
        optimizer = torch.optim.Adam(self.network.parameters(), lr=c.lr, betas=(c.beta1, 0.999))
        batches = shuffled_batches(n, c.batch_size, self.seed)  # shuffling follows the run seed
        keep = KeepBest(self.network)
        step = 0
        self.network.train()
        while step < c.max_steps:
            index = next(batches)
            x = train.images[index].to(self.device, torch.float32)
            brain = train.brain[index].to(self.device)
            loss, reconstruction, kl = self._loss(x, brain)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1

            timed_out = out_of_time(started, c.max_minutes)
            last = step == c.max_steps or timed_out
            if step % c.log_every == 0 or last:
                log.metric("loss", loss.item(), step)
                log.metric("reconstruction", reconstruction.item(), step)
                log.metric("kl", kl.item(), step)
            if c.eval_every > 0 and (step % c.eval_every == 0 or last):
                keep.offer(log.evaluate(step))  # predicts on validation: switches the network to eval
                self.network.train()
            if timed_out:
                break

        keep.restore()  # the best-scored weights (none a number: the last ones)
        self.network.eval()

    # -- inference -----------------------------------------------------------------------------------

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> AnomalyOutput:
        if self.network is None:
            raise RuntimeError("vae: predict before fit or load_state_dict")
        self.network.eval()
        x = images.to(self.device, torch.float32)
        x_hat, _, _ = self._reconstruct(x, sample=False)
        maps = (x - x_hat).abs().sum(dim=1)
        if self.config.loss_in_brain:
            maps = maps * (x.abs().amax(dim=1) > 0)  # outside the brain the output was never trained
        return AnomalyOutput(maps=maps.float().to(images.device))

    # -- checkpoints ---------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        if self.network is None:
            return {}
        weights = {k: v.detach().cpu().clone() for k, v in self.network.state_dict().items()}
        return {"in_shape": list(self.in_shape), "network": weights}

    def load_state_dict(self, state: dict) -> None:
        if not state:
            self.network, self.in_shape = None, None
            return
        self._build_network(tuple(state["in_shape"]))
        self.network.load_state_dict(state["network"])
        self.network.eval()
