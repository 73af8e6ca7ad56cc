"""Forward FLOPs per image of the preset networks, counted with torch.utils.flop_counter.FlopCounterMode.

    python bench/flops.py --presets cifar10,cifar10-fast            # prints a table
    python bench/flops.py --presets cifar10,cifar10-fast --json flops.json
    python bench/flops.py --presets imagenet64 --batch 1      # the paper-size ADM (about 20 s, 3 GB RAM)

One forward = one call of the preconditioned network: `denoise(x, sigma)` for the teacher (EDM precond,
no s-embedding) and `jump(x, t, s)` for the CTM student (s-conditioned). FLOPs are what FlopCounterMode
counts: 2 per multiply-add of matmuls, convolutions and attention (scaled_dot_product_attention);
elementwise and normalisation work is not counted (it costs time, not FLOPs). FLOPs do not depend on the
device, the dtype or the weights, so this runs on the CPU with randomly initialised networks. The EDM
DDPM++ CIFAR-10 network (the `cifar10` preset) is commonly quoted at about 42-43 GFLOP per 32x32 forward;
this script prints what the code here actually does, it does not assert anything. The `imagenet64` preset
builds the paper's ADM (192 channels, mult 1-2-3-4, 3 blocks, attention at 32/16/8): its teacher has
295.90 M parameters and the CTM student (with `time_embed_s` and every `emb_layers_s`) 324.10 M.
"""

from __future__ import annotations

import argparse
import json

import torch
from torch.utils.flop_counter import FlopCounterMode

from ctmtool.config import load_preset
from ctmtool.core.models import build_precond


def data_shape(preset) -> tuple[int, ...]:
    """(C, H, W) of the preset's images; CIFAR-10 presets are 3x32x32."""
    res = preset.data.resolution or 32
    return (preset.data.channels or 3, res, res)


def count_flops(fn) -> tuple[int, dict]:
    """Total FLOPs of fn() and the per-operator totals."""
    with FlopCounterMode(display=False) as fc:
        fn()
    per_op = {str(k): int(v) for k, v in fc.get_flop_counts().get("Global", {}).items()}
    return int(fc.get_total_flops()), per_op


@torch.no_grad()
def forward_flops(preset_name: str, batch: int = 2) -> list[dict]:
    p = load_preset(preset_name)
    shape = data_shape(p)
    rows = []
    for kind in ("teacher", "ctm"):
        torch.manual_seed(0)
        net = build_precond(kind, p, shape).eval()
        x = torch.randn(batch, *shape)
        t = torch.full((batch,), 2.0)
        s = torch.full((batch,), 0.5)
        fn = (lambda: net.denoise(x, t)) if kind == "teacher" else (lambda: net.jump(x, t, s))  # noqa: B023
        total, per_op = count_flops(fn)
        rows.append({"preset": preset_name, "kind": kind, "call": "denoise" if kind == "teacher" else "jump",
                     "shape": list(shape), "params_m": sum(q.numel() for q in net.parameters()) / 1e6,
                     "gflop_per_image": total / batch / 1e9,
                     "per_op_gflop_per_image": {k: v / batch / 1e9
                                                for k, v in sorted(per_op.items(), key=lambda kv: -kv[1])}})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="cifar10,cifar10-fast,imagenet64")
    ap.add_argument("--batch", type=int, default=2, help="images per counted forward (FLOPs scale linearly)")
    ap.add_argument("--json", default=None, help="write the rows to this file")
    a = ap.parse_args()
    rows = [r for name in a.presets.split(",") for r in forward_flops(name, a.batch)]
    print(f"{'preset':14s} {'kind':8s} {'call':8s} {'params M':>9s} {'GFLOP/img fwd':>14s}  top ops "
          "(GFLOP/img)")
    for r in rows:
        top = ", ".join(f"{k.split('.')[-1]} {v:.2f}"
                        for k, v in list(r["per_op_gflop_per_image"].items())[:3])
        print(f"{r['preset']:14s} {r['kind']:8s} {r['call']:8s} {r['params_m']:9.2f} "
              f"{r['gflop_per_image']:14.2f}  {top}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
