"""An example third-party method plugin: how far each voxel lies from healthy tissue, in standard deviations.

Everything a plugin author needs is here: a ``Config`` dataclass, the four profiles, ``fit`` on the harness's
read-only training slices (healthy ones only: ``supervision = NONE``), ``predict`` returning one map per slice,
and the registration hook. The harness evaluates the maps, tracks the run and adds the row to the leaderboard.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

import lesionbench
from lesionbench.method import AnomalyOutput, Method, Supervision


@dataclass
class ZScoreConfig:
    positive_only: bool = True  # lesions of interest are hyperintense; False scores |z|


class ZScore(Method):
    name = "zscore"
    description = "per-modality z-score against healthy brain tissue, the largest over modalities (example plugin)"
    supervision = Supervision.NONE
    Config = ZScoreConfig
    profiles = {"smoke": {}, "demo": {}, "quick": {}, "paper": {}}

    def fit(self, train, val, log) -> None:  # healthy slices only, read 256 at a time (never the whole set)
        n = s1 = s2 = 0
        for start in range(0, len(train), 256):
            x = train.images[start:start + 256].double()  # [B, C, H, W]
            inside = train.brain[start:start + 256].unsqueeze(1).expand_as(x)  # [B, H, W] -> [B, C, H, W]
            n, s1, s2 = n + inside.sum((0, 2, 3)), s1 + (x * inside).sum((0, 2, 3)), s2 + (x * x * inside).sum((0, 2, 3))
        self.mean = (s1 / n).float()
        self.std = ((s2 - n * (s1 / n) ** 2) / (n - 1)).sqrt().float().clamp_min(1e-6)
        log.metric("healthy_std_mean", float(self.std.mean()), 0)

    def predict(self, images: torch.Tensor) -> AnomalyOutput:
        z = (images - self.mean.to(images.device)[:, None, None]) / self.std.to(images.device)[:, None, None]
        z = z if self.config.positive_only else z.abs()
        return AnomalyOutput(z.amax(dim=1))

    def state_dict(self) -> dict:
        return {"mean": self.mean, "std": self.std}

    def load_state_dict(self, state: dict) -> None:
        self.mean, self.std = state["mean"], state["std"]


@lesionbench.hookimpl
def lesionbench_register_methods(registry):
    registry.add(ZScore)
