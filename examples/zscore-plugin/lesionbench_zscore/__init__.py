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

    def fit(self, train, val, log) -> None:
        images, brains = train.images, train.brain  # [N, C, H, W], [N, H, W]: healthy slices only
        inside = brains.unsqueeze(1).expand_as(images)
        values = images.transpose(0, 1)[inside.transpose(0, 1)].reshape(images.shape[1], -1).double()
        self.mean, self.std = values.mean(dim=1).float(), values.std(dim=1).float().clamp_min(1e-6)
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
