"""Building blocks of the diffusion methods (``wolleb``, ``wolleb-wargnier``, ``ddpm``, ``cfg-diffusion``): not a
method plugin itself.

- ``networks``: the DDPM UNet and the noise-conditioned classifier (MONAI components);
- ``sampling``: the linear schedule, q(x_t | x_0), DDIM steps (encoding, guided decoding), the hybrid loss;
- ``training``: the DDPM's and the classifier's training loops;
- ``base``: :class:`DiffusionMethod`, the base of a method built on a DDPM over slices scaled to [-1, 1]
  (network input, batch-wise training input, residual maps, checkpoints).
"""
