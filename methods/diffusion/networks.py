"""The networks of the diffusion methods (a DDPM UNet; Wolleb et al. 2022's noise-conditioned classifier), built
from MONAI's diffusion components (imported lazily)."""

from __future__ import annotations

from typing import Sequence


def diffusion_unet(in_channels: int, widths: Sequence[int], res_blocks: int, attention: Sequence[bool],
                   norm_groups: int, learn_sigma: bool, num_classes: int | None):
    """The denoiser: MONAI's DiffusionModelUNet, one attention head per attention level (the paper's 1 head),
    class-conditional through a class embedding added to the time embedding when ``num_classes``; with
    ``learn_sigma`` it outputs [eps, v] (2 C channels) for the learned variance of improved DDPM."""
    from monai.networks.nets import DiffusionModelUNet  # lazy: importing monai takes seconds

    return DiffusionModelUNet(
        spatial_dims=2, in_channels=in_channels, out_channels=in_channels * (2 if learn_sigma else 1),
        num_res_blocks=res_blocks, channels=tuple(widths), attention_levels=tuple(attention),
        norm_num_groups=norm_groups, num_head_channels=tuple(widths), num_class_embeds=num_classes,
        resblock_updown=True,
    )


def noise_conditioned_classifier(in_channels: int, input_shape: tuple[int, int], widths: Sequence[int], res_blocks: int,
                                 attention: Sequence[bool], norm_groups: int, num_classes: int = 2):
    """The classifier p(y | x_t, t): MONAI's DiffusionModelEncoder (the encoder half of the diffusion UNet,
    timestep-embedded, residual down-sampling, scale-shift normalisation inside its residual blocks). Its head
    flattens the lowest level into a dense layer (the authors pool with attention), so it is tied to ``input_shape``."""
    from monai.networks.nets.diffusion_model_unet import DiffusionModelEncoder  # not exported by monai.networks.nets

    return DiffusionModelEncoder(
        spatial_dims=2, in_channels=in_channels, out_channels=num_classes, input_shape=tuple(input_shape),
        num_res_blocks=res_blocks, channels=tuple(widths), attention_levels=tuple(attention),
        norm_num_groups=norm_groups, num_head_channels=tuple(widths), resblock_updown=True,
    )
