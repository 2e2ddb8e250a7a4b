"""f-AnoGAN: a Wasserstein GAN of healthy slices, then an encoder onto its latent space; the anomaly map
is the residual of the encoder-generator reconstruction.

Schlegl, Seeböck, Waldstein, Langs and Schmidt-Erfurth (2019), "f-AnoGAN: fast unsupervised anomaly
detection with generative adversarial networks", Medical Image Analysis 54:30-44; benchmarked for brain
MRI by Baur, Denner, Wiestler, Navab and Albarqouni (2021), Medical Image Analysis 69:101952. The GAN is
Gulrajani, Ahmed, Arjovsky, Dumoulin and Courville (2017), "Improved training of Wasserstein GANs"
(WGAN-GP), NeurIPS.

Theirs (the paper and the authors' code, github.com/tSchlegl/f-AnoGAN, which ``paper`` follows):
- stage 1, WGAN-GP on healthy images: n_critic = 5 critic steps per generator step, gradient penalty
  weight 10, Adam(lr 1e-4, betas (0, 0.9)) for both, batch 64, z ~ N(0, I) of size 128, 64x64 images;
- stage 2, the izi_f encoder, G and D frozen: loss = 1/n ||x - G(E(x))||^2 + kappa / n_d ||f(x) - f(G(E(x)))||^2
  with f the critic's last feature layer, kappa = 1, Adam(lr 5e-5), 50 000 steps;
- the anomaly score of an image is the same izi_f residual; the map is the pixel residual |x - G(E(x))|.
Ours: the networks (see ``networks.py``: MONAI blocks, DCGAN-style, sigmoid output for [0, 1] images);
all modalities go in as channels and the map sums the residual over them (Baur et al.); training counts
steps, and an "epoch" (for sample grids) is len(train) / batch_size critic steps; early stopping of the
encoder on the harness's validation score (``eval_every``; keeps the best weights); the CPU profiles'
sizes, step counts and learning rates (chosen on validation, see ``profiles``); losses that turn NaN/Inf
or exceed ``max_abs_loss`` stop the run with :class:`TrainingDiverged` (the cell is FAILED, not reported).
The trained GAN is cached by its own hyperparameters (``FitLog.cached``): encoder variants (kappa, lr,
steps) reuse it. Training runs in float32 on every device (no autocast: the gradient penalty differentiates
twice). The authors' post-processing is not applied: the map is the raw residual.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lesionbench.method import AnomalyOutput, Method, SliceSet, Supervision
from lesionbench.parts import part_key, shapes
from lesionbench.training import KeepBest, pad_to_multiple, shuffled_batches
from lesionbench.methods.fanogan.training import TrainingDiverged, check_losses, gradient_penalty, image_grid, izi_f_residuals

__all__ = ["FAnoGAN", "FAnoGANConfig", "TrainingDiverged"]

GAN = "gan"  # the trained part of stage 1 (cached by FitLog.cached): G and D
GRID_ROWS = 8  # images in a logged sample grid


@dataclass
class FAnoGANConfig:
    # networks (shapes(GAN): the fields stage 1's cached weights depend on, lesionbench.parts)
    # critic/encoder widths per stride-2 stage; G mirrors them
    channels: tuple[int, ...] = shapes(GAN, default=(32, 64, 128, 256))
    res_units: int = shapes(GAN, default=0)  # MONAI residual units after each stage
    latent_size: int = shapes(GAN, default=128)
    batch_size: int = shapes(GAN, default=32)
    # stage 1: WGAN-GP
    gan_steps: int = shapes(GAN, default=1000)  # generator steps
    n_critic: int = shapes(GAN, default=5)  # critic steps per generator step
    gp_weight: float = shapes(GAN, default=10.0)  # lambda of the gradient penalty
    gan_lr: float = shapes(GAN, default=1e-4)
    beta1: float = shapes(GAN, default=0.0)  # Adam's betas for G and D (Gulrajani et al.: 0 and 0.9)
    beta2: float = shapes(GAN, default=0.9)
    # stage 2: izi_f encoder
    encoder_steps: int = 1000
    encoder_lr: float = 5e-5
    kappa: float = 1.0  # weight of the critic-feature residual, in the loss and in the score
    eval_every: int = 0  # encoder steps between log.evaluate calls; 0 = never (keep the last weights)
    # monitoring
    log_every: int = 10  # steps between loss points
    sample_every: int = 1  # epochs between logged sample grids (the last step always logs one)
    max_abs_loss: float = 1e4  # a loss beyond this (or NaN/Inf) is divergence: the run fails


class FAnoGAN(Method):
    name = "fanogan"
    description = "Schlegl et al. 2019: WGAN-GP on healthy slices + izi_f encoder; map = |x - G(E(x))|, score = izi_f"
    supervision = Supervision.NONE
    Config = FAnoGANConfig
    profiles = {
        # seconds on 2 CPU cores, ~100 slices of 4x32x32: proves the code path
        "smoke": dict(channels=(8, 16, 32), latent_size=16, batch_size=16, gan_steps=30, n_critic=2, gan_lr=2e-3,
                      encoder_steps=40, encoder_lr=3e-3, log_every=5, sample_every=5),
        # the README's main job, ~24 subjects of 24 4x64x64 slices: proves the pipeline in about a minute (a third
        # of the work of an earlier, too slow setting; see docs/calibration.md#fanogan)
        "demo": dict(channels=(8, 16, 32, 64), latent_size=64, n_critic=2, gan_steps=150, gan_lr=1e-3,
                     encoder_steps=150, encoder_lr=1e-3, eval_every=0, log_every=10, sample_every=20),
        # a meaningful CPU result in ~2-3 min on 2 idle cores for ~700 healthy 4x64x64 slices; fixed step counts (no
        # wall-clock cap: the result must not depend on the machine's load). 600 GAN steps: the GAN is the
        # bottleneck (its samples are still blurry at 600 steps, and more did not fit the budget); chosen on
        # synth-tumor's validation split, see docs/calibration.md#fanogan
        "quick": dict(channels=(8, 16, 32, 64), latent_size=64, n_critic=3, gan_steps=600, gan_lr=1e-3,
                      encoder_steps=600, encoder_lr=1e-3, eval_every=200, log_every=20, sample_every=20),
        # the authors' settings (module docstring), for a GPU: 64 x (1, 2, 4, 8) widths, z of size 128,
        # batch 64, n_critic 5, lambda 10, Adam 1e-4 (0, 0.9); encoder Adam 5e-5 for 50 000 steps, kappa 1.
        # Their GAN trains for 7 epochs of their data; 100 000 generator steps here is our choice.
        "paper": dict(channels=(64, 128, 256, 512), res_units=1, latent_size=128, batch_size=64, gan_steps=100_000,
                      n_critic=5, gp_weight=10.0, gan_lr=1e-4, beta1=0.0, beta2=0.9, encoder_steps=50_000,
                      encoder_lr=5e-5, kappa=1.0, eval_every=5000, log_every=100, sample_every=1),
    }

    def __init__(self, config, device="cpu", modalities=(), seed=0):
        super().__init__(config, device, modalities, seed)
        if config.n_critic < 1 or config.batch_size < 1 or not config.channels:
            raise ValueError("fanogan: n_critic and batch_size must be >= 1 and channels non-empty")
        self.generator = self.critic = self.encoder = None  # built once the slice shape is known
        self.in_shape: tuple[int, int, int] | None = None  # (C, H, W) the networks take, after padding

    @classmethod
    def search_space(cls, trial):
        return {
            "gan_lr": trial.suggest_float("gan_lr", 1e-4, 1e-3, log=True),
            "encoder_lr": trial.suggest_float("encoder_lr", 1e-4, 3e-3, log=True),
            "latent_size": trial.suggest_categorical("latent_size", [32, 64, 128]),
            "kappa": trial.suggest_float("kappa", 0.1, 10.0, log=True),
            "n_critic": trial.suggest_int("n_critic", 1, 5),
            "gp_weight": trial.suggest_categorical("gp_weight", [1.0, 10.0]),
        }

    # -- networks ------------------------------------------------------------------------------------

    def _padded(self, x: torch.Tensor) -> torch.Tensor:
        """Zero-pad H and W (bottom, right) to a multiple of the total stride; zero is the background."""
        return pad_to_multiple(x, 2 ** len(self.config.channels))

    def _build_gan(self, in_shape) -> None:
        from lesionbench.methods.fanogan.networks import Critic, Generator  # lazy: importing monai takes seconds

        c = self.config
        self.in_shape = tuple(int(v) for v in in_shape)
        self.generator = Generator(self.in_shape, tuple(c.channels), c.latent_size, c.res_units).to(self.device)
        self.critic = Critic(self.in_shape, tuple(c.channels), c.res_units).to(self.device)

    def _build_encoder(self) -> None:
        from lesionbench.methods.fanogan.networks import Encoder

        c = self.config
        self.encoder = Encoder(self.in_shape, tuple(c.channels), c.latent_size, c.res_units).to(self.device)

    # -- training ------------------------------------------------------------------------------------

    def fit(self, train: SliceSet, val: SliceSet, log) -> None:
        c = self.config
        train = train.healthy()  # the harness gives healthy slices only; this keeps it so
        if len(train) == 0:
            raise ValueError("fanogan: no healthy training slices")
        torch.manual_seed(self.seed)  # stage 1 draws from the run seed's stream
        self._build_gan(self._batch(train, torch.arange(1)).shape[1:])
        key = part_key(c, GAN, in_shape=list(self.in_shape), modalities=list(self.modalities))
        state = log.cached(GAN, key, lambda: self._train_gan(train, self.seed, log))
        self.generator.load_state_dict(state["generator"])
        self.critic.load_state_dict(state["critic"])

        torch.manual_seed((self.seed * 1_000_003 + 2) % 2**63)  # stage 2 draws from a stream of its own
        self._build_encoder()
        self._train_encoder(train, self.seed, log)

    def _batch(self, train: SliceSet, index: torch.Tensor) -> torch.Tensor:
        """Training slices ``index``, padded, on the method's device."""
        return self._padded(train.images[index].float()).to(self.device)

    def _train_gan(self, train: SliceSet, seed: int, log) -> dict:
        """Stage 1, WGAN-GP (Gulrajani et al. 2017, Algorithm 1); returns the trained G and D weights."""
        c = self.config
        G, D = self.generator, self.critic
        opt_g = torch.optim.Adam(G.parameters(), lr=c.gan_lr, betas=(c.beta1, c.beta2))
        opt_d = torch.optim.Adam(D.parameters(), lr=c.gan_lr, betas=(c.beta1, c.beta2))
        batches = shuffled_batches(len(train), c.batch_size, seed)
        steps_per_epoch = max(1, len(train) // min(c.batch_size, len(train)))
        fixed_z = torch.randn(GRID_ROWS, c.latent_size, generator=torch.Generator().manual_seed(seed)).to(self.device)
        stage = "stage 1 (WGAN-GP)"
        critic_steps, epochs_logged = 0, 0
        G.train(), D.train()
        for step in range(1, c.gan_steps + 1):
            D.requires_grad_(True)
            for _ in range(c.n_critic):
                real = self._batch(train, next(batches))
                z = torch.randn(len(real), c.latent_size, device=self.device)
                with torch.no_grad():
                    fake = G(z)
                d_real, _ = D(real)
                d_fake, _ = D(fake)
                penalty = gradient_penalty(D, real, fake)
                wasserstein = d_real.mean() - d_fake.mean()
                critic_loss = -wasserstein + c.gp_weight * penalty
                opt_d.zero_grad(set_to_none=True)
                critic_loss.backward()
                opt_d.step()
                critic_steps += 1
                check_losses(stage, step, {"critic_loss": critic_loss.item()}, c.max_abs_loss)

            D.requires_grad_(False)  # the generator step needs gradients through D, not for it
            z = torch.randn(len(real), c.latent_size, device=self.device)
            d_generated, _ = D(G(z))
            generator_loss = -d_generated.mean()
            opt_g.zero_grad(set_to_none=True)
            generator_loss.backward()
            opt_g.step()
            check_losses(stage, step, {"generator_loss": generator_loss.item()}, c.max_abs_loss)

            last = step == c.gan_steps
            if step % c.log_every == 0 or last:
                log.metric("gan/critic_loss", critic_loss.item(), step)
                log.metric("gan/generator_loss", generator_loss.item(), step)
                log.metric("gan/wasserstein", wasserstein.item(), step)
                log.metric("gan/gradient_penalty", penalty.item(), step)
            epoch = critic_steps // steps_per_epoch
            if (epoch >= epochs_logged + c.sample_every) or last:
                epochs_logged = epoch
                G.eval()
                with torch.no_grad():
                    log.artifact_image(f"gan_samples_epoch{epoch:04d}", image_grid(G(fixed_z)))
                G.train()
        D.requires_grad_(True)
        G.eval(), D.eval()
        return {"generator": _cpu(G.state_dict()), "critic": _cpu(D.state_dict())}

    def _train_encoder(self, train: SliceSet, seed: int, log) -> None:
        """Stage 2, izi_f (Schlegl et al. 2019): E trained with G and D frozen; keeps the best-evaluated E."""
        c = self.config
        G, D, E = self.generator, self.critic, self.encoder
        G.eval(), D.eval()
        G.requires_grad_(False), D.requires_grad_(False)
        optimizer = torch.optim.Adam(E.parameters(), lr=c.encoder_lr)
        batches = shuffled_batches(len(train), c.batch_size, seed + 1)
        steps_per_epoch = max(1, len(train) // min(c.batch_size, len(train)))
        shown = self._batch(train, torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:GRID_ROWS])
        stage = "stage 2 (izi_f encoder)"
        keep, epochs_logged = KeepBest(E), 0
        E.train()
        for step in range(1, c.encoder_steps + 1):
            x = self._batch(train, next(batches))
            x_hat = G(E(x))
            with torch.no_grad():
                _, features_x = D(x)
            _, features_x_hat = D(x_hat)
            image_residual, feature_residual = izi_f_residuals(x, x_hat, features_x, features_x_hat)
            loss = image_residual.mean() + c.kappa * feature_residual.mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            check_losses(stage, step, {"encoder_loss": loss.item()}, c.max_abs_loss)

            last = step == c.encoder_steps
            if step % c.log_every == 0 or last:
                log.metric("encoder/loss", loss.item(), step)
                log.metric("encoder/image_residual", image_residual.mean().item(), step)
                log.metric("encoder/feature_residual", feature_residual.mean().item(), step)
            epoch = step // steps_per_epoch
            if (epoch >= epochs_logged + c.sample_every) or last:
                epochs_logged = epoch
                E.eval()
                with torch.no_grad():
                    log.artifact_image(f"encoder_reconstructions_epoch{epoch:04d}", image_grid(shown, G(E(shown))))
                E.train()
            if c.eval_every > 0 and (step % c.eval_every == 0 or last):
                keep.offer(log.evaluate(step))  # predicts on validation: switches E to eval
                E.train()
        keep.restore()  # the best-scored encoder (none a number: the last one)
        E.eval()
        G.requires_grad_(True), D.requires_grad_(True)

    # -- inference -----------------------------------------------------------------------------------

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        """G(E(x)) [B, C, H, W] on the method's device, cropped to the input's size."""
        if self.encoder is None:
            raise RuntimeError("fanogan: predict before fit or load_state_dict")
        self.generator.eval(), self.encoder.eval()
        x = images.to(self.device, torch.float32)
        xp = self._padded(x)
        if tuple(xp.shape[1:]) != self.in_shape:
            raise ValueError(f"fanogan: slices of shape {tuple(x.shape[1:])} do not fit networks for {self.in_shape}")
        return self.generator(self.encoder(xp))[..., : x.shape[-2], : x.shape[-1]]

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> AnomalyOutput:
        x = images.to(self.device, torch.float32)
        x_hat = self.reconstruct(x)
        self.critic.eval()
        _, features_x = self.critic(self._padded(x))
        _, features_x_hat = self.critic(self._padded(x_hat))
        image_residual, feature_residual = izi_f_residuals(x, x_hat, features_x, features_x_hat)
        maps = (x - x_hat).abs().sum(dim=1)
        scores = image_residual + self.config.kappa * feature_residual
        return AnomalyOutput(maps=maps.float().to(images.device), scores=scores.float().to(images.device))

    # -- checkpoints ---------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        if self.encoder is None:
            return {}
        return {"in_shape": list(self.in_shape), "generator": _cpu(self.generator.state_dict()),
                "critic": _cpu(self.critic.state_dict()), "encoder": _cpu(self.encoder.state_dict())}

    def load_state_dict(self, state: dict) -> None:
        if not state:
            self.generator = self.critic = self.encoder = None
            self.in_shape = None
            return
        self._build_gan(tuple(state["in_shape"]))
        self._build_encoder()
        self.generator.load_state_dict(state["generator"])
        self.critic.load_state_dict(state["critic"])
        self.encoder.load_state_dict(state["encoder"])
        self.generator.eval(), self.critic.eval(), self.encoder.eval()


def _cpu(weights: dict) -> dict:
    return {k: v.detach().cpu().clone() for k, v in weights.items()}
