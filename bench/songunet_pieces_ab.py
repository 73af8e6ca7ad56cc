"""The CTM distillation step of bench/peers.py three ways, interleaved: the official ctm-cifar10 step,
ctmtool's step, and ctmtool's step with SongUNet's CPU fast pieces swapped back for the reference ones
(interpolate then convolve then add the bias; SDPA on strided views) for the duration of each call (run by
hand, never in CI).

    OMP_NUM_THREADS=1 python bench/songunet_pieces_ab.py --official /tmp/ctm-cifar10 --reps 9 --clock cpu

Prints the median seconds per step of each side and the ratios to the official step. Measures only.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peers  # noqa: E402

from ctmtool.nets import songunet as S  # noqa: E402


def reference_attention(self, h: torch.Tensor) -> torch.Tensor:
    """SDPA on the strided (batch, heads, HW, c) views: its unfused path on the CPU."""
    b, c, hh, ww = h.shape
    q, k, v = self.qkv(h).reshape(b, self.num_heads, c // self.num_heads, 3, hh * ww).unbind(3)
    q, k, v = (m.transpose(-1, -2) for m in (q, k, v))
    a = nn.functional.scaled_dot_product_attention(q, k, v)
    return a.transpose(-1, -2).reshape(b, c, hh, ww).contiguous()


def reference_conv(self, x: torch.Tensor) -> torch.Tensor:
    """The box-filter layer as interpolate / pool, then the convolution, then the bias."""
    F = nn.functional
    w = self.weight.to(x.dtype) if self.weight is not None else None
    if self.up:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
    if self.down:
        x = F.avg_pool2d(x, 2)
    if w is not None:
        x = F.conv2d(x, w, padding=w.shape[-1] // 2)
    return x + self.bias.to(x.dtype).reshape(1, -1, 1, 1) if self.bias is not None else x


def with_reference_pieces(fn):
    new = S.UNetBlock._attention, S.Conv2d.forward

    def call():
        S.UNetBlock._attention, S.Conv2d.forward = reference_attention, reference_conv
        try:
            fn()
        finally:
            S.UNetBlock._attention, S.Conv2d.forward = new
    return call


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--official", required=True, help="checkout of Kim-Dongjun/ctm-cifar10")
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--clock", choices=["wall", "cpu"], default="cpu")
    a = ap.parse_args()
    torch.set_num_threads(1)
    peers.CLOCK = a.clock
    steps = peers.distill_steps(peers.load_official(a.official), 8, 4)
    steps["ctmtool, reference pieces"] = with_reference_pieces(peers.distill_steps(None, 8, 4)["ctmtool"])
    print(f"# {a.clock} clock, load {os.getloadavg()}", flush=True)
    peers.report("distill", peers.interleaved(steps, a.reps), "official")
    print(f"# load after {os.getloadavg()}")


if __name__ == "__main__":
    main()
