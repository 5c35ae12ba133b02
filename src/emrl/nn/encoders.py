"""Convolutional encoders for pixel observations, feeding a memory core (spec §8).

Spec §8's Atari agent puts a convolutional ResNet backbone in front of the TrXL core:
the IMPALA torso (Espeholt et al. 2018, "IMPALA", Fig. 3), used by V-MPO for Atari
(Song et al. 2019). Each of its stacks is ``conv 3×3 → max-pool 3×3 / 2 → 2 residual
blocks (ReLU, conv, ReLU, conv, + skip)``; three stacks of 16, 32, 32 channels, then
ReLU, flatten, linear to ``out_size``, ReLU.

Input: ``[N, C, H, W]``, uint8 pixels (scaled to [0, 1]) or floats/bools (used as they
are, e.g. MinAtar's 10×10 binary channels). Output: ``[N, out_size]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from emrl.errors import ConfigError


class ResidualBlock(nn.Module):
    """``x + conv(relu(conv(relu(x))))`` with 3×3 convolutions keeping the shape."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class ResNetEncoder(nn.Module):
    """IMPALA ResNet torso: [N, C, H, W] -> [N, out_size] (see the module docstring)."""

    def __init__(
        self,
        in_shape: tuple[int, int, int],
        channels: tuple[int, ...] = (16, 32, 32),
        out_size: int = 256,
    ) -> None:
        super().__init__()
        if len(in_shape) != 3 or min(in_shape) <= 0:
            raise ConfigError(f"ResNetEncoder needs an image shape (C, H, W), got {in_shape}")
        if not channels or min(channels) <= 0 or out_size <= 0:
            raise ConfigError(
                f"ResNetEncoder channels and out_size must be positive, got {channels}, {out_size}"
            )
        layers: list[nn.Module] = []
        c_in = in_shape[0]
        for c in channels:
            layers += [
                nn.Conv2d(c_in, c, 3, padding=1),
                nn.MaxPool2d(3, stride=2, padding=1),
                ResidualBlock(c),
                ResidualBlock(c),
            ]
            c_in = c
        self.stacks = nn.Sequential(*layers)
        with torch.no_grad():
            n = self.stacks(torch.zeros(1, *in_shape)).numel()
        self.fc = nn.Linear(n, out_size)
        self.output_size = out_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        h = F.relu(self.stacks(x)).flatten(1)
        return F.relu(self.fc(h))
