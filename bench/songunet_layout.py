"""SongUNet's memory layout after attention: forward + backward time and the largest output and gradient
difference with the attention output made contiguous NCHW (the fix in `UNetBlock._attention`) and without
(SDPA's output viewed back as NCHW is a channels-last view, and every later GroupNorm runs on it).

    python bench/songunet_layout.py [--res 32] [--channels 128] [--batch 16] [--reps 5] [--device cpu]

Builds one DDPM++ network (CIFAR-10 32x32 layout unless told otherwise) with random weights, runs both
variants on the same inputs, prints one line each: median seconds per forward + backward, and the differences.
Measures only (the variant without the fix is restored by monkeypatching the method for the measurement).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from ctmtool.nets import songunet


def _attention_view(self, h: torch.Tensor) -> torch.Tensor:
    """The attention output as before the fix: a channels-last view of SDPA's output."""
    b, c, hh, ww = h.shape
    q, k, v = self.qkv(h).reshape(b, self.num_heads, c // self.num_heads, 3, hh * ww).unbind(3)
    a = torch.nn.functional.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2),
                                                         v.transpose(-1, -2))
    return a.transpose(-1, -2).reshape(b, c, hh, ww)


def run(net, x, t, reps: int) -> tuple[float, torch.Tensor, list[torch.Tensor]]:
    times = []
    for _ in range(reps + 1):
        net.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        y = net(x, t, t)
        y.square().mean().backward()
        if x.is_cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:]), y.detach(), [p.grad.clone() for p in net.parameters()
                                                      if p.grad is not None]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--res", type=int, default=32)
    ap.add_argument("--channels", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    torch.manual_seed(0)
    net = songunet.SongUNet(img_resolution=a.res, in_channels=3, out_channels=3, model_channels=a.channels,
                            channel_mult=[2, 2, 2], attn_resolutions=[a.res // 2], dropout=0.0,
                            use_s=True).to(a.device)
    x = torch.randn(a.batch, 3, a.res, a.res, device=a.device)
    t = torch.rand(a.batch, device=a.device)
    fixed = run(net, x, t, a.reps)
    orig = songunet.UNetBlock._attention
    songunet.UNetBlock._attention = _attention_view
    try:
        view = run(net, x, t, a.reps)
    finally:
        songunet.UNetBlock._attention = orig
    dy = (fixed[1] - view[1]).abs().max().item()
    dg = max((g1 - g2).abs().max().item() / max(g2.abs().max().item(), 1e-30)
             for g1, g2 in zip(fixed[2], view[2], strict=True))
    print(f"{a.device} {a.res}x{a.res} ch {a.channels} batch {a.batch}: forward+backward {view[0]:.3f} s as "
          f"a channels-last view, {fixed[0]:.3f} s contiguous ({fixed[0] / view[0]:.3f}x); max |dy| "
          f"{dy:.2g}, max relative |dgrad| {dg:.2g}")


if __name__ == "__main__":
    main()
