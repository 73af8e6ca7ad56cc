"""Benchmark the in-memory FID pipeline: generate N samples, quantise to uint8, extract features.

Times generation and feature extraction separately (CUDA-synchronised) for a checkpoint or a freshly
initialised CTM of a preset, and prints images/s. Examples:

    python bench/fid_pipeline.py --preset cifar10-fast --n 256 --batch 64 --device cpu
    python bench/fid_pipeline.py --preset cifar10 --n 10000 --batch 1024 --device cuda --bf16 \
        --channels-last \
        --features shared/fd_a.pt
"""

from __future__ import annotations

import argparse
import json
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from ctmtool.core.sampling import generate
from ctmtool.data.base import to_uint8_images
from ctmtool.jobs.plan import plan_explicit
from ctmtool.metrics.features import make_extractor
from ctmtool.metrics.frechet import Moments

DEFAULT_FEATURES = Path(__file__).resolve().parents[2] / "shared" / "data" / "fd-cifar10" / "fd_a.pt"


def build_model(args, device: torch.device):
    """The checkpoint's model, or a random-init CTM of the preset (data shape from the preset or --shape)."""
    from ctmtool.core.models import Model, build_precond, load_model

    if args.ckpt:
        return load_model(args.ckpt, "ema", device)
    from ctmtool.config import load_preset

    preset = load_preset(args.preset)
    shape = tuple(int(s) for s in args.shape.split(","))
    if preset.data.resolution:
        shape = (preset.data.channels or shape[0], preset.data.resolution, preset.data.resolution)
    torch.manual_seed(0)
    net = build_precond("ctm", preset, shape).to(device).eval().requires_grad_(False)
    return Model("ctm", net, preset, shape)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(args) -> dict:
    device = torch.device(args.device)
    model = build_model(args, device)
    extractor = make_extractor(args.features, device)
    if args.channels_last:
        model.net.to(memory_format=torch.channels_last)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if args.bf16 else nullcontext()
    params = sum(p.numel() for p in model.net.parameters())

    def batches(n: int):
        with autocast:
            yield from generate(model, n, plan_explicit(model, nfe=args.nfe, batch=args.batch), seed=0,
                                device=device)

    for x, _ in batches(min(args.batch, args.n)):  # warm-up: kernels, allocator, lazy init
        extractor(to_uint8_images(x.float()))
    sync(device)

    t_gen = t_feat = 0.0
    moments = Moments()
    it = batches(args.n)
    while True:
        t0 = time.perf_counter()
        item = next(it, None)
        if item is None:
            break
        x = to_uint8_images(item[0].float())
        sync(device)
        t1 = time.perf_counter()
        moments.update(extractor(x))
        sync(device)
        t_gen, t_feat = t_gen + t1 - t0, t_feat + time.perf_counter() - t1
    total = t_gen + t_feat
    return {"preset": model.preset.name, "ckpt": args.ckpt, "params": params, "shape": list(model.data_shape),
            "n": moments.n, "batch": args.batch, "nfe": args.nfe, "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "threads": torch.get_num_threads(), "bf16": args.bf16, "channels_last": args.channels_last,
            "features": extractor.name, "generate_s": round(t_gen, 3), "features_s": round(t_feat, 3),
            "total_s": round(total, 3), "generate_img_s": round(moments.n / t_gen, 1),
            "features_img_s": round(moments.n / t_feat, 1), "img_s": round(moments.n / total, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="cifar10-fast", help="preset name or .toml (random-init CTM)")
    ap.add_argument("--ckpt", default=None, help="a ctmtool checkpoint instead of a random-init network")
    ap.add_argument("--shape", default="3,32,32", help="C,H,W when the preset does not fix the resolution")
    ap.add_argument("--n", type=int, default=1024, help="samples to generate")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--nfe", type=int, default=1)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--features", default=str(DEFAULT_FEATURES),
                    help="TorchScript feature net or 'inception'")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast for generation (features stay fp32)")
    ap.add_argument("--channels-last", action="store_true",
                    help="channels-last memory format for the generator")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    r = run(args)
    if args.json:
        print(json.dumps(r))
        return
    print(f"{r['n']} samples of {r['preset']} ({r['params'] / 1e6:.1f}M params, {tuple(r['shape'])}, nfe "
          f"{r['nfe']}) + {r['features']} features on {r['device_name']}, batch {r['batch']}:")
    print(f"  generate {r['generate_s']:.2f} s ({r['generate_img_s']:.0f} img/s), features "
          f"{r['features_s']:.2f} s ({r['features_img_s']:.0f} img/s), total {r['total_s']:.2f} s = "
          f"{r['img_s']:.0f} img/s")


if __name__ == "__main__":
    main()
