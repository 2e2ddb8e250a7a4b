"""The classifier: a small fully convolutional CNN whose output is a lesion-logit map, averaged to one
decision per image.

Ours (the authors' public code holds only the loss): plain 3x3 convolutions in stages separated by 2x2
average pooling, a smooth activation (SiLU by default, so the attribution is a smooth function of the
weights and double backpropagation has curvature to work with; ReLU's second derivative is zero almost
everywhere), a 1x1 convolution to one logit per location, and the spatial mean as the image's lesion
logit (the paper's "mean of the output"). No normalisation layer: batch norm mixes the samples of a
batch inside the attribution, and with group norm the mean-pooled classifier did not learn within a CPU
budget (docs/calibration.md#wargnier-and-saliency). About 74k weights with the default widths
(8, 16, 32, 64) and 4 input channels: few channels at full resolution, where a double-backpropagation step spends most of its time.
"""

from __future__ import annotations

import torch
from torch import nn

ACTIVATIONS = {"silu": nn.SiLU, "softplus": nn.Softplus, "relu": nn.ReLU, "leakyrelu": nn.LeakyReLU, "elu": nn.ELU}


class LogitMapClassifier(nn.Module):
    """x [B, C, H, W] -> logit map [B, 1, H / 2^(stages-1), W / 2^(stages-1)]; :meth:`lesion_logit` gives
    the image's lesion logit [B] (the mean of the map)."""

    def __init__(self, in_channels: int, widths: tuple[int, ...] = (8, 16, 32, 64), convs_per_stage: int = 2,
                 activation: str = "silu"):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, not {activation!r}")
        layers: list[nn.Module] = []
        channels = in_channels
        for i, width in enumerate(widths):
            if i > 0:
                layers.append(nn.AvgPool2d(2, ceil_mode=True))
            for _ in range(convs_per_stage):
                layers += [nn.Conv2d(channels, width, 3, padding=1), ACTIVATIONS[activation]()]
                channels = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Conv2d(channels, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def lesion_logit(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x).mean(dim=(1, 2, 3))
