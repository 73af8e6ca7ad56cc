"""A small MLP denoiser network for 2-D (or any vector) data, with an optional second noise input s."""

from __future__ import annotations

import torch
from torch import nn

from ctmtool.nets.embedding import PositionalEmbedding


class MLP(nn.Module):
    """F(x, c_noise(t)[, c_noise(s)]): residual SiLU MLP; the s-embedding is added to the t-embedding."""

    def __init__(self,
        dim: int,                       # data dimension D
        hidden: int = 256,              # hidden width
        depth: int = 4,                 # residual hidden layers
        emb: int = 64,                  # noise-embedding width
        use_s: bool = False,            # second noise input (CTM student)
        label_dim: int = 0,             # classes for a conditional model (0: none)
        noise_scale: float = 100.0,     # noise labels (ln(sigma)/4, about -2..1) are scaled before the
                                        # sinusoids
    ):
        super().__init__()
        self.dim, self.use_s, self.label_dim, self.noise_scale = dim, use_s, label_dim, noise_scale
        self.map_noise = PositionalEmbedding(emb)
        self.map_layer = nn.Sequential(nn.Linear(emb, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.map_s = (nn.Sequential(nn.Linear(emb, hidden), nn.SiLU(), nn.Linear(hidden, hidden)) if use_s
                      else None)
        self.map_label = nn.Linear(label_dim, hidden, bias=False) if label_dim else None
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
            for _ in range(depth)
        )
        self.affines = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth))
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(hidden, dim))
        nn.init.zeros_(self.out[1].weight)
        nn.init.zeros_(self.out[1].bias)

    def forward(self, x: torch.Tensor, noise_t: torch.Tensor, noise_s: torch.Tensor | None = None,
                labels: torch.Tensor | None = None) -> torch.Tensor:
        dtype = self.inp.weight.dtype
        emb = self.map_layer(self.map_noise(noise_t * self.noise_scale).to(dtype))
        if self.map_s is not None and noise_s is not None:
            emb = emb + self.map_s(self.map_noise(noise_s * self.noise_scale).to(dtype))
        if self.map_label is not None and labels is not None:
            emb = emb + self.map_label(nn.functional.one_hot(labels, self.label_dim).to(emb.dtype))
        h = self.inp(x.reshape(x.shape[0], -1).to(dtype))
        for block, affine in zip(self.blocks, self.affines, strict=True):
            h = h + block(h + affine(nn.functional.silu(emb)))
        return self.out(h).reshape(x.shape)
