"""Peak memory of one training step of the paper presets at their batch sizes, estimated on the CPU, against
80 GB.

    OMP_NUM_THREADS=1 python bench/memory_estimate.py                   # cifar10 (LPIPS), cifar10-gan
    python bench/memory_estimate.py --presets imagenet64 --gib 80       # needs about 8 GB of RAM
    python bench/memory_estimate.py --tiny                              # a tiny preset (what the test runs)

Method. The step is the real one (`TrajectoryObjective.step`, with the preset's distance: piq LPIPS at 224 for
cifar10, random VGG16/LPIPS weights of the real shapes; the Projected-GAN discriminator with random timm
DeiT-base/EfficientNet-lite0 for cifar10-gan) under bf16 autocast, the dtypes CUDA runs
(`precision = "bf16"`). Memory splits into
  resident  what lives across steps: the online network, its gradients, the optimiser's two moments, the
            target, the evaluation EMAs, the teacher (and the discriminator with its gradients and moments),
            counted from their parameter and buffer sizes;
  transient what one step allocates beyond that (activations kept for the backward pass, the LPIPS and
            discriminator passes, temporaries), measured with torch.profiler's allocation events at
            micro-batches 1 and 2 (their peak of live bytes) and extended linearly: transient(B) = a + B b
            (activations are linear in the batch; checked at 8 by the test on a tiny preset).
peak(B) = resident + transient(B) at the preset's micro-batch. Not counted: the CUDA context (~0.5 GB), cuDNN
workspaces, allocator fragmentation (PyTorch's caching allocator typically holds 5-20% more than live bytes),
torch.compile's buffers; so a preset is called safe with a 20% margin (peak <= 0.8 x the GPU's memory).
k, the teacher's Heun steps, is set to 1: the teacher runs without gradients, its activations are freed layer
by layer, so k does not change the peak (only the time).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from contextlib import contextmanager

import torch

GIB = 1024**3
MARGIN = 0.8  # a preset is "safe" when its estimated peak is at most this fraction of the GPU's memory

TINY = ["net.kind=unet", "net.unet.model_channels=8", "net.unet.channel_mult=[1,2]", "net.unet.num_blocks=1",
        "net.unet.attn_resolutions=[4]", "ctm.grid=6", "ctm.max_steps=3", "ctm.eval_emas=[0.9]",
        "distill.batch=8", "distill.precision=bf16"]
SHAPES = {"cifar10": (3, 32, 32), "cifar10-gan": (3, 32, 32), "imagenet64": (3, 64, 64), "digits": (1, 8, 8)}


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def module_bytes(m: torch.nn.Module) -> int:
    return tensor_bytes(list(m.parameters()) + list(m.buffers()))


def resident_bytes(obj, teacher) -> dict[str, int]:
    """Bytes alive between steps (and the gradients a step creates), by part."""
    net = sum(p.numel() * 4 for p in obj.net.parameters())
    parts = {"net": module_bytes(obj.net), "grads": net, "optimiser": 2 * net,
             "target": module_bytes(obj.target), "emas": sum(module_bytes(e) for e in obj.emas.values())}
    if teacher is not None and teacher is not obj.target:
        parts["teacher"] = module_bytes(teacher)
    if obj.disc is not None:
        d = sum(p.numel() * 4 for p in obj.disc.parameters() if p.requires_grad)
        parts["discriminator"] = module_bytes(obj.disc) + 3 * d  # weights, gradients, two moments
    return parts


def transient_peak(fn) -> int:
    """The largest excess of live bytes over the start during fn(), from the profiler's allocation events."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    live = top = 0
    for e in events:
        live += e.nbytes()
        top = max(top, live)
    return top


@contextmanager
def cpu_bf16():
    """ctmtool.device.autocast as CUDA applies it, on the CPU (bf16 where the preset asks for it)."""
    from ctmtool.train import teacher_objective as objectives
    from ctmtool.train import trajectory

    def autocast(device, precision="fp32"):
        from contextlib import nullcontext

        return torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else nullcontext()

    saved = objectives.autocast, trajectory.autocast
    objectives.autocast = trajectory.autocast = autocast
    try:
        yield
    finally:
        objectives.autocast, trajectory.autocast = saved


def distance_for(preset, shape):
    """The preset's CTM distance with random weights of the real shapes (no downloads)."""
    from ctmtool.losses.distances import make_distance

    if preset.ctm.distance in ("lpips", "lpips_piq"):
        from ctmtool.losses.lpips import PaperLPIPS, vgg16_features

        g = torch.Generator().manual_seed(0)
        return PaperLPIPS(vgg16_features(),
                          [torch.rand(1, c, 1, 1, generator=g) for c in (64, 128, 256, 512, 512)])
    return make_distance(preset.ctm, math.prod(shape))


def discriminator_for(preset, shape):
    if not preset.gan.enabled:
        return None
    if preset.gan.discriminator == "projected":
        import timm

        from ctmtool.nets.projected_gan import BACKBONES, ProjectedDiscriminator

        return ProjectedDiscriminator({n: timm.create_model(n, pretrained=False) for n in BACKBONES})
    from ctmtool.nets.discriminator import Discriminator

    return Discriminator(shape[0], shape[1], channels=preset.gan.channels)


def estimate(name: str, overrides: list[str], sizes=(1, 2), check: int | None = None) -> dict:
    """Resident and transient bytes of one step of `name` (with overrides), extended to its micro-batch."""
    from ctmtool.config import load_preset
    from ctmtool.core.models import build_precond
    from ctmtool.train.trajectory import ctm_objective

    p = load_preset(name, overrides)
    shape = SHAPES[name]
    torch.manual_seed(0)
    teacher = build_precond("teacher", p, shape).eval().requires_grad_(False)
    obj = ctm_objective(p, shape, torch.device("cpu"), teacher, None, distance=distance_for(p, shape),
                        discriminator=discriminator_for(p, shape))
    obj.terms.new_step = lambda cpu_gen, steps=0: setattr(obj.terms, "k", 1)
    micro = p.distill.micro_batch or p.distill.batch
    kimg = 1e9 if p.gan.enabled else 0.0  # past gan.start_kimg: the generator step with the GAN term
    measured = {}
    with cpu_bf16():
        for b in (*sizes, *([check] if check else [])):
            g = torch.Generator().manual_seed(b)
            batches = [(torch.rand(b, *shape, generator=g) * 2 - 1, None)]
            # with the GAN term, generator and discriminator steps alternate (gan.g_period): two steps see
            # both
            turns = 2 if p.gan.enabled else 1
            for _ in range(turns):  # both optimisers' moments and gradients exist from here on
                obj.step(batches, kimg)
            t0 = time.perf_counter()
            measured[b] = transient_peak(lambda batches=batches,
                                         turns=turns: [obj.step(batches, kimg) for _ in range(turns)])
            print(f"# {name}: micro-batch {b}: transient {measured[b] / GIB:.3f} GiB "
                  f"({time.perf_counter() - t0:.1f}s)", flush=True)
    b1, b2 = sizes
    per_item = (measured[b2] - measured[b1]) / (b2 - b1)
    base = measured[b1] - b1 * per_item
    res = resident_bytes(obj, teacher)
    out = {"preset": name, "overrides": overrides, "micro_batch": micro, "batch": p.distill.batch,
           "params_net_m": sum(q.numel() for q in obj.net.parameters()) / 1e6, "resident": res,
           "resident_total": sum(res.values()), "transient_base": base, "transient_per_item": per_item,
           "measured": measured, "precision": p.distill.precision, "distance": p.ctm.distance,
           "gan": p.gan.enabled}
    out["peak"] = out["resident_total"] + base + micro * per_item
    if check:
        out["predicted_check"] = base + check * per_item
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--presets", default="cifar10,cifar10-gan")
    ap.add_argument("--gib", type=float, default=80.0, help="the GPU's memory (an H100: 80)")
    ap.add_argument("--tiny", action="store_true",
                    help="a tiny digits U-Net preset instead (seconds; the test)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="preset override")
    a = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    runs = [("digits", TINY)] if a.tiny else [(n, []) for n in a.presets.split(",")]
    rows = []
    for name, over in runs:
        if name not in SHAPES:
            sys.exit(f"error: no data shape known for preset {name!r}; choose from {', '.join(SHAPES)}")
        rows.append(estimate(name, over + a.set))
    print(f"\nload {os.getloadavg()[0]:.2f}; bf16 autocast as on CUDA; safe = peak <= {MARGIN:.0%} of "
          f"{a.gib:g} GiB")
    print("| preset | net params | distance | GAN | micro-batch | resident GiB | transient GiB/image | peak "
          "GiB | safe |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        peak = r["peak"] / GIB
        print(f"| {r['preset']} | {r['params_net_m']:.1f}M | {r['distance']} | {'yes' if r['gan'] else 'no'} "
              f"| {r['micro_batch']} | {r['resident_total'] / GIB:.2f} | {r['transient_per_item'] / GIB:.4f} "
              f"| {peak:.1f} | {'yes' if peak <= MARGIN * a.gib else 'NO'} |")


if __name__ == "__main__":
    main()
