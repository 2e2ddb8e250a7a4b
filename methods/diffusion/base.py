"""The base of a method built on a DDPM over slices scaled to [-1, 1] (``ddpm``, ``cfg-diffusion``, ``wolleb``)."""

from __future__ import annotations

from typing import Callable, ClassVar

import torch

from lesionbench.method import AnomalyOutput, Method
from lesionbench.training import pad_to_multiple

BACKGROUND = -1.0  # the background value of images scaled to [-1, 1]


class NetworkInput:
    """A split's images as a method's networks take them, one batch at a time: ``view[index]`` is
    ``transform(images[index])``, so a streamed split is never converted (or held) whole."""

    def __init__(self, images, transform: Callable[[torch.Tensor], torch.Tensor]):
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index) -> torch.Tensor:
        return self.transform(self.images[index])


class DiffusionMethod(Method):
    """A DDPM method's common parts. Subclasses build their networks in ``build(in_shape)`` (named in
    ``network_names``, checkpointed with the padded slice shape) and, for the residual map of ``predict``,
    turn a slice into its healthy counterpart in ``translate``; ``refine`` post-processes the maps."""

    network_names: ClassVar[tuple[str, ...]] = ("unet",)
    unet: torch.nn.Module | None = None
    in_shape: tuple[int, int, int] | None = None  # (C, H, W) after padding

    def multiple(self) -> int:
        """What the slices' height and width are padded to a multiple of (the UNet's total down-sampling)."""
        return 2 ** (len(self.config.widths) - 1)

    def to_network_input(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] -> [-1, 1] on the method's device, padded with the background."""
        return pad_to_multiple(images.to(self.device, torch.float32) * 2 - 1, self.multiple(), value=BACKGROUND)

    def network_input(self, images) -> NetworkInput:
        """``images`` (a split's, streamed or not) as the training loops take them, converted batch by batch."""
        return NetworkInput(images, self.to_network_input)

    def build(self, in_shape) -> None:
        raise NotImplementedError

    def translate(self, x: torch.Tensor) -> torch.Tensor:
        """Network input -> its healthy counterpart x_hat (same shape)."""
        raise NotImplementedError

    def refine(self, maps: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """Post-processing of the residual maps [B, H, W] of ``images``; none by default."""
        return maps

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> AnomalyOutput:
        if self.unet is None:
            raise RuntimeError(f"{self.name}: predict before fit or load_state_dict")
        h, w = images.shape[-2:]
        x = self.to_network_input(images)
        maps = (x - self.translate(x)).abs().sum(dim=1)[:, :h, :w]
        return AnomalyOutput(maps=self.refine(maps, images).float().to(images.device))

    def state_dict(self) -> dict:
        if self.unet is None:
            return {}
        state = {"in_shape": list(self.in_shape)}
        for name in self.network_names:
            state[name] = {k: v.detach().cpu().clone() for k, v in getattr(self, name).state_dict().items()}
        return state

    def load_state_dict(self, state: dict) -> None:
        if not state:
            self.in_shape = None
            for name in self.network_names:
                setattr(self, name, None)
            return
        self.build(tuple(state["in_shape"]))
        for name in self.network_names:
            getattr(self, name).load_state_dict(state[name])
