"""The three networks of f-AnoGAN, built from MONAI blocks: generator G, critic D (with the feature
layer f that the izi_f loss compares) and encoder E.

Theirs (Schlegl et al. 2019, after Gulrajani et al. 2017's 64x64 WGAN-GP): z -> G -> image; the critic's
features f(x) are the flattened output of its last convolutional stage, the input of its final linear
layer; E mirrors the critic's architecture and ends in a linear layer onto z (no squashing). Layer
normalisation in the critic (batch norm would couple the samples that the gradient penalty treats one
by one), batch norm in G and E.
Ours: DCGAN-style strided (transposed) convolutions, optionally followed by MONAI residual units, in place
of the authors' ResNet blocks with mean pooling and sub-pixel upsampling; the generator ends in a
sigmoid (our images lie in [0, 1]; theirs in [-1, 1] with tanh).
"""

from __future__ import annotations

import math

import torch
from monai.networks.blocks import Convolution, ResidualUnit
from torch import nn

LEAKY = ("leakyrelu", {"negative_slope": 0.2})
# for the residual units: layer norm over (C, H, W) with a per-channel affine
CRITIC_NORM = ("group", {"num_groups": 1})


class LayerNorm2d(nn.Module):
    """Layer norm over (C, H, W) with a per-channel affine, as in Gulrajani et al.'s critic. The same function
    as ``GroupNorm(1, C)``, whose double backward (the gradient penalty's) is ~10x slower on CPU in torch 2."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var, mean = torch.var_mean(x, dim=(1, 2, 3), keepdim=True, correction=0)
        return (x - mean) * torch.rsqrt(var + self.eps) * self.weight[:, None, None] + self.bias[:, None, None]


def bottom_shape(in_shape: tuple[int, int, int], depth: int) -> tuple[int, int]:
    """Spatial size after ``depth`` stride-2 stages (H and W must be multiples of 2**depth)."""
    _, h, w = in_shape
    step = 2**depth
    if h % step or w % step:
        raise ValueError(f"fanogan: slices {h}x{w} are not a multiple of {step}; pad them first")
    return h // step, w // step


def downsampling_stack(in_channels: int, channels: tuple[int, ...], res_units: int, norm: str) -> nn.Sequential:
    """One stride-2 convolution per entry of ``channels`` (each optionally followed by MONAI residual units),
    then flatten: the shared backbone of the critic (``norm="layer"``) and the encoder (``"batch"``)."""
    make_norm = LayerNorm2d if norm == "layer" else nn.BatchNorm2d
    unit_norm = CRITIC_NORM if norm == "layer" else "batch"
    layers: list[nn.Module] = []
    previous = in_channels
    for i, width in enumerate(channels):
        layers.append(Convolution(2, previous, width, strides=2, kernel_size=3, conv_only=True))
        # the first stage has no normalisation (DCGAN; the authors' first convolution is plain too)
        layers += [nn.Identity() if i == 0 else make_norm(width), nn.LeakyReLU(0.2)]
        for _ in range(res_units):
            layers.append(ResidualUnit(2, width, width, strides=1, kernel_size=3, subunits=2, act=LEAKY, norm=unit_norm))
        previous = width
    layers.append(nn.Flatten())
    return nn.Sequential(*layers)


class Critic(nn.Module):
    """x [B, C, H, W] -> (critic value [B], features f(x) [B, n_features])."""

    def __init__(self, in_shape: tuple[int, int, int], channels: tuple[int, ...], res_units: int = 0):
        super().__init__()
        h, w = bottom_shape(in_shape, len(channels))
        self.features = downsampling_stack(in_shape[0], channels, res_units, "layer")
        self.n_features = channels[-1] * h * w
        self.head = nn.Linear(self.n_features, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.features(x)
        return self.head(f).squeeze(1), f


class Encoder(nn.Module):
    """x [B, C, H, W] -> z [B, latent_size]: the critic's architecture with batch norm and a latent head."""

    def __init__(self, in_shape: tuple[int, int, int], channels: tuple[int, ...], latent_size: int, res_units: int = 0):
        super().__init__()
        h, w = bottom_shape(in_shape, len(channels))
        self.features = downsampling_stack(in_shape[0], channels, res_units, "batch")
        self.head = nn.Linear(channels[-1] * h * w, latent_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class Generator(nn.Module):
    """z [B, latent_size] -> image [B, C, H, W] in [0, 1]: a linear layer onto the bottom grid, then one
    stride-2 transposed convolution per entry of ``channels`` (widest first), then a 3x3 convolution."""

    def __init__(self, out_shape: tuple[int, int, int], channels: tuple[int, ...], latent_size: int, res_units: int = 0):
        super().__init__()
        self.bottom = (channels[-1], *bottom_shape(out_shape, len(channels)))
        self.project = nn.Sequential(nn.Linear(latent_size, math.prod(self.bottom)))
        self.project_act = nn.Sequential(nn.BatchNorm2d(channels[-1]), nn.ReLU())
        widths = list(reversed(channels))
        layers: list[nn.Module] = []
        for width_in, width_out in zip(widths, widths[1:] + widths[-1:]):
            layers.append(Convolution(2, width_in, width_out, strides=2, kernel_size=3, act="relu", norm="batch",
                                      is_transposed=True))
            for _ in range(res_units):
                layers.append(ResidualUnit(2, width_out, width_out, strides=1, kernel_size=3, subunits=2, act="relu",
                                           norm="batch"))
        layers.append(Convolution(2, widths[-1], out_shape[0], strides=1, kernel_size=3, conv_only=True))
        self.upsample = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.project(z).view(-1, *self.bottom)
        return torch.sigmoid(self.upsample(self.project_act(x)))
