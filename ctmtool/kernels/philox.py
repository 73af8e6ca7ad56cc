"""Philox4x32-10 (Salmon et al. 2011, "Parallel random numbers: as easy as 1, 2, 3") in pure PyTorch.

A counter-based generator: the output is a pure function of a 128-bit counter and a 64-bit key, so any
element of any stream can be computed on any device, in any order and batch. Arithmetic runs on int64
tensors holding uint32 values (32x32-bit products are split into 16-bit halves, so nothing overflows), so
the integers are identical on every device. `philox_normal` turns them into standard normals with the
Box-Muller transform in float32 (equal across devices up to float32 rounding of log/cos/sin).

Counter layout used by ctmtool's noise: key = the image's 64-bit seed (low word, high word); counter =
(block j, draw d, stream tag, 0), where block j yields elements 4j..4j+3 of draw d of that image.
"""

from __future__ import annotations

import math

import torch

M0, M1 = 0xD2511F53, 0xCD9E8D57   # round multipliers (Random123 PHILOX_M4x32_0/1)
W0, W1 = 0x9E3779B9, 0xBB67AE85   # key increments (golden ratio, sqrt(3) - 1)
MASK = 0xFFFFFFFF
ROUNDS = 10
TAG_NORMAL, TAG_INTEGER = 0, 1     # stream tags (counter word 2)


def _mulhilo(m: int, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(high, low) 32-bit words of the 64-bit product m * c, exact in int64 (c holds uint32 values)."""
    a = m * (c & 0xFFFF)                       # < 2^48
    t = m * (c >> 16) + (a >> 16)              # < 2^49
    return t >> 16, ((t & 0xFFFF) << 16) | (a & 0xFFFF)


def philox4x32(counter: tuple[torch.Tensor, ...], key: tuple[torch.Tensor, torch.Tensor],
               rounds: int = ROUNDS) -> tuple[torch.Tensor, ...]:
    """Philox4x32-`rounds` of broadcastable int64 tensors holding uint32 words; returns the 4 output words."""
    c0, c1, c2, c3 = (torch.as_tensor(c, dtype=torch.int64) & MASK for c in counter)
    k0, k1 = (torch.as_tensor(k, dtype=torch.int64) & MASK for k in key)
    for r in range(rounds):
        if r:
            k0, k1 = (k0 + W0) & MASK, (k1 + W1) & MASK
        hi0, lo0 = _mulhilo(M0, c0)
        hi1, lo1 = _mulhilo(M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0, c1, c2, c3


def seed_key(seeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A 64-bit seed (int64, negative values taken modulo 2^64) as the key words (low, high)."""
    seeds = seeds.to(torch.int64)
    return seeds & MASK, (seeds >> 32) & MASK


def uint32_to_normal(w0: torch.Tensor, w1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Box-Muller: two uint32 words -> two independent N(0, 1) float32 values (24-bit uniforms, u1 in (0,
    1])."""
    u1 = ((w0 >> 8) + 1).to(torch.float32) * 2.0**-24
    u2 = (w1 >> 8).to(torch.float32) * 2.0**-24
    r = torch.sqrt(-2.0 * torch.log(u1))
    theta = (2.0 * math.pi) * u2
    return r * torch.cos(theta), r * torch.sin(theta)


def philox_bits(seeds: torch.Tensor, numel: int, draw: int = 0, tag: int = TAG_NORMAL) -> torch.Tensor:
    """The raw words (B, 4 * ceil(numel / 4)) of each seed's stream `(draw, tag)`, as int64 holding uint32."""
    nblk = (numel + 3) // 4
    k0, k1 = seed_key(seeds.reshape(-1, 1))
    j = torch.arange(nblk, device=seeds.device, dtype=torch.int64).reshape(1, -1)
    zero = torch.zeros((), device=seeds.device, dtype=torch.int64)
    words = philox4x32((j, zero + draw, zero + tag, zero), (k0, k1))
    return torch.stack(words, dim=-1).reshape(seeds.numel(), 4 * nblk)


def philox_normal(seeds: torch.Tensor, shape: tuple[int, ...], draw: int = 0) -> torch.Tensor:
    """Standard normals (B, *shape) in float32: image b's values depend only on seeds[b], `draw` and the
    index."""
    numel = math.prod(shape)
    w = philox_bits(seeds, numel, draw, TAG_NORMAL).reshape(seeds.numel(), -1, 4)
    z0, z1 = uint32_to_normal(w[..., 0], w[..., 1])
    z2, z3 = uint32_to_normal(w[..., 2], w[..., 3])
    z = torch.stack([z0, z1, z2, z3], dim=-1).reshape(seeds.numel(), -1)
    return z[:, :numel].reshape(seeds.numel(), *shape)


def philox_integers(seeds: torch.Tensor, high: int, draw: int = 0) -> torch.Tensor:
    """One integer in [0, high) per seed: floor(w * high / 2^32) of the first word of stream (draw,
    TAG_INTEGER)."""
    if not 1 <= high <= 2**31:
        raise ValueError(f"high must be in [1, 2^31], got {high}")
    w = philox_bits(seeds, 1, draw, TAG_INTEGER)[:, 0]
    return (w * high) >> 32
