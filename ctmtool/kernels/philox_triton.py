"""Triton kernel for `ctmtool.kernels.philox.philox_normal`: the same Philox4x32-10 words, Box-Muller on the
device.

One program handles BLOCK Philox counters of the flattened (image, block) grid; each counter gives 4 normals.
Triton's own `tl.philox` produces the words (key = the image's seed, counter = (block, draw, tag, 0)), an
implementation independent of the PyTorch reference, which the tests compare it with (`TRITON_INTERPRET=1`
runs it on the CPU). Import only where Triton is installed.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ctmtool.kernels.philox import TAG_NORMAL

BLOCK = 256


@triton.jit
def _box_muller(w0, w1):
    u1 = ((w0 >> 8) + 1).to(tl.float32) * 5.9604644775390625e-08  # 2^-24
    u2 = (w1 >> 8).to(tl.float32) * 5.9604644775390625e-08
    r = tl.sqrt(-2.0 * tl.log(u1))
    theta = 6.283185307179586 * u2
    return r * tl.cos(theta), r * tl.sin(theta)


@triton.jit(do_not_specialize=["draw", "tag"])  # draw = 1 would otherwise become a constexpr
def _philox_kernel(seeds_ptr, out_ptr, numel, nblk, total, draw, tag,
                   BLOCK: tl.constexpr, BITS: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    live = offs < total
    b = offs // nblk
    j = offs - b * nblk
    seed = tl.load(seeds_ptr + b, mask=live, other=0)
    c0 = j.to(tl.uint32)
    zero = c0 * 0
    w0, w1, w2, w3 = tl.philox(seed, c0, zero + draw.to(tl.uint32), zero + tag.to(tl.uint32), zero)
    if BITS:  # raw words, for tests: out is int64 (B, 4 * nblk)
        base = offs * 4
        tl.store(out_ptr + base + 0, w0.to(tl.int64), mask=live)
        tl.store(out_ptr + base + 1, w1.to(tl.int64), mask=live)
        tl.store(out_ptr + base + 2, w2.to(tl.int64), mask=live)
        tl.store(out_ptr + base + 3, w3.to(tl.int64), mask=live)
    else:  # normals: out is float32 (B, numel)
        z0, z1 = _box_muller(w0, w1)
        z2, z3 = _box_muller(w2, w3)
        e = j * 4
        base = b * numel + e
        tl.store(out_ptr + base + 0, z0, mask=live & (e + 0 < numel))
        tl.store(out_ptr + base + 1, z1, mask=live & (e + 1 < numel))
        tl.store(out_ptr + base + 2, z2, mask=live & (e + 2 < numel))
        tl.store(out_ptr + base + 3, z3, mask=live & (e + 3 < numel))


def _launch(seeds: torch.Tensor, numel: int, draw: int, tag: int, bits: bool) -> torch.Tensor:
    seeds = seeds.to(torch.int64).contiguous()
    nblk = (numel + 3) // 4
    total = seeds.numel() * nblk
    if bits:
        out = torch.empty(seeds.numel(), 4 * nblk, device=seeds.device, dtype=torch.int64)
    else:
        out = torch.empty(seeds.numel(), numel, device=seeds.device, dtype=torch.float32)
    if total:
        _philox_kernel[(triton.cdiv(total, BLOCK),)](seeds, out, numel, nblk, total, draw, tag, BLOCK=BLOCK,
                                                     BITS=bits)
    return out


def philox_bits_triton(seeds: torch.Tensor, numel: int, draw: int = 0, tag: int = TAG_NORMAL) -> torch.Tensor:
    """Same words as `philox.philox_bits`, computed by the kernel."""
    return _launch(seeds, numel, draw, tag, bits=True)


def philox_normal_triton(seeds: torch.Tensor, shape: tuple[int, ...], draw: int = 0) -> torch.Tensor:
    """Same normals as `philox.philox_normal` (float32, up to log/cos/sin rounding), computed by the
    kernel."""
    return _launch(seeds, math.prod(shape), draw, TAG_NORMAL, bits=False).reshape(seeds.numel(), *shape)
