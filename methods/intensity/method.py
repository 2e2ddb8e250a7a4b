"""The intensity baseline of Meissen et al. (2021), "Challenging current semi-supervised anomaly
segmentation methods for brain MRI": the anomaly map is one modality's normalised intensity."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lesionbench.method import AnomalyOutput, Method, Supervision


@dataclass
class IntensityConfig:
    modality: str = "flair"  # which channel is the map


class Intensity(Method):
    name = "intensity"
    description = "Meissen et al. 2021 baseline: the normalised FLAIR (or another modality) is the map; no training"
    supervision = Supervision.NONE
    Config = IntensityConfig
    profiles = {"smoke": {}, "demo": {}, "quick": {}, "paper": {}}

    def __init__(self, config, device="cpu", modalities=(), seed=0):
        super().__init__(config, device, modalities, seed)
        if config.modality not in self.modalities:
            raise ValueError(
                f"intensity: modality {config.modality!r} is not among the data's modalities {self.modalities}"
            )
        self.channel = self.modalities.index(config.modality)

    @classmethod
    def search_space(cls, trial):
        return {}

    def fit(self, train, val, log) -> None:
        pass  # nothing to learn

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> AnomalyOutput:
        return AnomalyOutput(maps=images[:, self.channel].float())
