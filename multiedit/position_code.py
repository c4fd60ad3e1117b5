"""Coordinate channels for the UNet input: where each latent pixel is, as fixed sine-cosine features.

A convolutional UNet is nearly translation-equivariant: "add a circle in the top-left cell" must infer where the
top-left is from zero padding at the borders, which a small model learns slowly (on ShapesWorld, add alone placed
its shape in the named cell no better than chance after 3,600 steps). With ``position_channels = C`` the pipeline
appends ``C`` channels to the UNet input after the noisy and source latents (CoordConv, Liu et al. 2018, with the
sinusoidal features of Vaswani et al. 2017): for each axis, ``C / 4`` sine-cosine pairs whose periods are twice
the axis length, the length, half of it, and so on. The longest period is twice the side so that the code does not
wrap around: the first pair moves steadily from one edge to the other, and the top row is as far from the bottom
row as anything can be (with a period of one side they would be neighbours in every feature). The code has no
parameters; ``conv_in`` learns what to read from it.
The UNet stays a stock ``UNet2DConditionModel`` with ``in_channels = 2 · latent_channels + C``.
"""

from __future__ import annotations

import math
import numbers

import torch

from .errors import MultiEditError


def check_position_channels(channels: int, name: str = "position_channels") -> int:
    """``channels`` as an int, or a clear error naming ``name`` unless it is 0 or a positive multiple of 4."""
    if isinstance(channels, bool) or not isinstance(channels, numbers.Integral) or channels < 0 or channels % 4:
        raise MultiEditError(f"{name}={channels!r}; use 0 (off) or a positive multiple of 4 (an int), e.g. 16.")
    return int(channels)


def position_code(channels: int, height: int, width: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """The (channels, height, width) code: first the row features, then the column features, each in [-1, 1]."""
    check_position_channels(channels)
    pairs = channels // 4

    def axis(n: int) -> torch.Tensor:  # (2 · pairs, n)
        pos = torch.arange(n, dtype=torch.float64)
        rows = []
        for k in range(pairs):
            angle = pos * (math.pi * 2**k / n)  # period 2n / 2^k
            rows += [torch.sin(angle), torch.cos(angle)]
        return torch.stack(rows) if rows else pos.new_zeros(0, n)

    ys = axis(height)[:, :, None].expand(-1, height, width)
    xs = axis(width)[:, None, :].expand(-1, height, width)
    return torch.cat([ys, xs]).to(device=device, dtype=dtype)


def append_position_code(x: torch.Tensor, channels: int) -> torch.Tensor:
    """``x`` (B, C_in, H, W) with the code's ``channels`` appended: (B, C_in + channels, H, W); ``x`` if 0."""
    if not channels:
        return x
    b, _, h, w = x.shape
    code = position_code(channels, h, w, device=x.device, dtype=x.dtype)
    return torch.cat([x, code.expand(b, -1, -1, -1)], dim=1)
