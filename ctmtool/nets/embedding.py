"""Noise-level embeddings shared by the networks (EDM's positional and Fourier embeddings)."""

from __future__ import annotations

import torch
from torch import nn


class PositionalEmbedding(nn.Module):
    """Transformer-style sinusoidal embedding of a scalar (EDM `PositionalEmbedding`, endpoint=True)."""

    def __init__(self, num_channels: int, max_positions: int = 10000, endpoint: bool = True):
        super().__init__()
        self.num_channels, self.max_positions, self.endpoint = num_channels, max_positions, endpoint

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = self.num_channels // 2
        freqs = torch.arange(half, dtype=torch.float32,
                             device=x.device) / (half - (1 if self.endpoint else 0))
        freqs = (1 / self.max_positions) ** freqs
        x = x.float().ger(freqs)
        return torch.cat([x.cos(), x.sin()], dim=1)


class FourierEmbedding(nn.Module):
    """Random Fourier features of a scalar (EDM `FourierEmbedding`, NCSN++)."""

    def __init__(self, num_channels: int, scale: float = 16.0):
        super().__init__()
        self.register_buffer("freqs", torch.randn(num_channels // 2) * scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float().ger((2 * torch.pi * self.freqs).float())
        return torch.cat([x.cos(), x.sin()], dim=1)
