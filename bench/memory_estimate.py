"""Peak memory of one training step of the paper presets at their batch sizes, estimated on the CPU, against
80 GB.

    OMP_NUM_THREADS=1 python bench/memory_estimate.py                  # cifar10 (LPIPS), cifar10-gan
    python bench/memory_estimate.py --fake --presets imagenet64,imagenet64-gan   # fake tensors: no RAM
    python bench/memory_estimate.py --tiny                             # a tiny preset (what the test runs)

Method. The step is the real one (`TrajectoryObjective.step`, with the preset's distance: piq LPIPS at 224 for
cifar10 and ImageNet-64, random VGG16/LPIPS weights of the real shapes; the Projected-GAN discriminator with
random timm DeiT-base/EfficientNet-lite0 for the -gan presets) under bf16 autocast, the dtypes CUDA runs
(`precision = "bf16"`). Memory splits into
  resident  what lives across steps: the online network, its gradients, the optimiser's two moments, the
            target, the evaluation EMAs, the teacher (and the discriminator with its gradients and moments),
            counted from their parameter and buffer sizes;
  transient what one step allocates beyond that (activations kept for the backward pass, the LPIPS and
            discriminator passes, temporaries).
Real tensors (default): the transient part is measured with torch.profiler's allocation events at
micro-batches 1 and 2 (their peak of live bytes) and extended linearly: transient(B) = a + B b (activations
are linear in the batch; checked at 8 by the test on a tiny preset); peak(B) = resident + transient(B).
Fake tensors (--fake; ImageNet-64's 296M-parameter ADM, whose resident copies alone are about 10 GiB): nothing
is allocated. Every network, optimiser state and batch is a FakeTensor (torch._subclasses.FakeTensorMode:
shapes, dtypes and strides, no data), the same step runs at the preset's micro-batch itself, and `LiveBytes`,
a dispatch mode, adds up the storages that operators return and drops each when it is freed: the peak of live
bytes is the peak, with no extension. Reads of values (`.item()`, `bool(...)`) answer 1, so data-dependent
branches take one path (a finite loss). It sees only the tensors operators return, not a kernel's internal
workspaces (the test bounds the gap to the profiler's count of real tensors on a small network). After
fake-tensor runs glibc reported heap corruption at interpreter exit (twice in five processes, after the
results, which were identical between runs), so --fake ends the process without the interpreter's teardown.
Not counted: the CUDA context (~0.5 GB), cuDNN workspaces, allocator fragmentation (PyTorch's caching
allocator typically holds 5-20% more than live bytes), torch.compile's buffers; so a preset is called safe
with a 20% margin (peak <= 0.8 x the GPU's memory). k, the teacher's Heun steps, is set to 1: the teacher runs
without gradients, its activations are freed layer by layer, so k does not change the peak (only the time).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import sys
import time
import warnings
import weakref
from contextlib import contextmanager

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

GIB = 1024**3
MARGIN = 0.8  # a preset is "safe" when its estimated peak is at most this fraction of the GPU's memory

TINY = ["net.kind=unet", "net.unet.model_channels=8", "net.unet.channel_mult=[1,2]", "net.unet.num_blocks=1",
        "net.unet.attn_resolutions=[4]", "ctm.grid=6", "ctm.max_steps=3", "ctm.eval_emas=[0.9]",
        "distill.batch=8", "distill.precision=bf16"]
TINY_MLP = ["net.mlp.hidden=64", "net.mlp.depth=2", "net.mlp.emb=32", "ctm.grid=6", "ctm.max_steps=3",
            "ctm.eval_emas=[0.9]", "distill.batch=8", "distill.precision=bf16"]  # fake vs real in the test
SHAPES = {"cifar10": (3, 32, 32), "cifar10-gan": (3, 32, 32), "imagenet64": (3, 64, 64),
          "imagenet64-gan": (3, 64, 64), "digits": (1, 8, 8)}


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def module_bytes(m: torch.nn.Module) -> int:
    return tensor_bytes(list(m.parameters()) + list(m.buffers()))


def resident_bytes(obj, teacher) -> dict[str, int]:
    """Bytes alive between steps (and the gradients a step creates), by part."""
    net = sum(p.numel() * 4 for p in obj.net.parameters())
    parts = {"net": module_bytes(obj.net), "grads": net, "optimiser": 2 * net,
             "target": module_bytes(obj.target),
             "emas": sum(module_bytes(e) for e in obj.emas.values())}
    if teacher is not None and teacher is not obj.target:
        parts["teacher"] = module_bytes(teacher)
    if obj.disc is not None:
        d = sum(p.numel() * 4 for p in obj.disc.parameters() if p.requires_grad)
        parts["discriminator"] = module_bytes(obj.disc) + 3 * d  # weights, gradients, two moments
    return parts


def transient_peak(fn) -> int:
    """The largest excess of live bytes over the start during fn(), from the profiler's allocation events."""
    cpu = [torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=cpu, profile_memory=True) as prof:
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
        weights = [torch.rand(1, c, 1, 1, generator=g) for c in (64, 128, 256, 512, 512)]
        return PaperLPIPS(vgg16_features(), weights)
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


class LiveBytes(TorchDispatchMode):
    """Live bytes of the storages operators return (each counted once, dropped when Python frees it) and their
    peak; `.item()` and friends answer 1, so fake tensors can run code that reads a value."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self.storages: dict[int, weakref.finalize] = {}

    def _drop(self, key: int, n: int) -> None:
        self.live -= n
        self.storages.pop(key, None)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            return 1
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                st = t.untyped_storage()
                if st._cdata not in self.storages:
                    n = st.nbytes()
                    self.live += n
                    self.peak = max(self.peak, self.live)
                    fin = self.storages[st._cdata] = weakref.finalize(st, self._drop, st._cdata, n)
                    fin.atexit = False
        return out


@contextmanager
def fake_tensors():
    """FakeTensorMode with a LiveBytes counter inside it; Module.to is a no-op (the fakes are on the CPU
    already, and swapping fake parameters fails)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    to = torch.nn.Module.to
    torch.nn.Module.to = lambda self, *a, **k: self
    try:
        with FakeTensorMode(allow_non_fake_inputs=True), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # data_ptr of fakes, inside torch.nn
            counter = LiveBytes()
            with counter:
                yield counter
    finally:
        torch.nn.Module.to = to
        FakeTensorMode.cache_clear()  # a second session in the process reusing the first's entries crashed


def build(name: str, overrides: list[str]):
    """The preset, its data shape, the teacher and the CTM objective with random weights (k = 1)."""
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
    return p, shape, teacher, obj


def estimate_fake(name: str, overrides: list[str], batch: int | None = None) -> dict:
    """Peak live bytes of one step of `name` at `batch` (default: the preset's micro-batch), fake tensors."""
    t0 = time.perf_counter()
    with fake_tensors() as live:
        p, shape, teacher, obj = build(name, overrides)
        b = batch or p.distill.micro_batch or p.distill.batch
        kimg = 1e9 if p.gan.enabled else 0.0
        turns = 2 if p.gan.enabled else 1
        with cpu_bf16():
            batches = [(torch.rand(b, *shape) * 2 - 1, None)]
            for _ in range(turns):  # gradients and both optimisers' moments exist from here on
                obj.step(batches, kimg)
            gc.collect()
            start = live.peak = live.live
            for _ in range(turns):
                obj.step(batches, kimg)
        res = resident_bytes(obj, teacher)
        out = {"preset": name, "overrides": overrides, "micro_batch": b, "batch": p.distill.batch,
               "params_net_m": sum(q.numel() for q in obj.net.parameters()) / 1e6, "resident": res,
               "resident_total": sum(res.values()), "live_at_start": start, "transient": live.peak - start,
               "peak": live.peak, "precision": p.distill.precision, "distance": p.ctm.distance,
               "gan": p.gan.enabled, "seconds": time.perf_counter() - t0}
    print(f"# {name} (fake tensors): micro-batch {b}: peak {out['peak'] / GIB:.2f} GiB "
          f"({out['seconds']:.0f}s)", flush=True)
    return out


def estimate(name: str, overrides: list[str], sizes=(1, 2), check: int | None = None) -> dict:
    """Resident and transient bytes of one step of `name` (with overrides), extended to its micro-batch."""
    p, shape, teacher, obj = build(name, overrides)
    micro = p.distill.micro_batch or p.distill.batch
    kimg = 1e9 if p.gan.enabled else 0.0  # past gan.start_kimg: the generator step with the GAN term
    measured = {}
    with cpu_bf16():
        for b in (*sizes, *([check] if check else [])):
            g = torch.Generator().manual_seed(b)
            batches = [(torch.rand(b, *shape, generator=g) * 2 - 1, None)]
            # with the GAN term, generator and discriminator steps alternate (gan.g_period): two see both
            turns = 2 if p.gan.enabled else 1
            for _ in range(turns):  # both optimisers' moments and gradients exist from here on
                obj.step(batches, kimg)
            t0 = time.perf_counter()
            measured[b] = transient_peak(
                lambda batches=batches, turns=turns: [obj.step(batches, kimg) for _ in range(turns)])
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
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="cifar10,cifar10-gan")
    ap.add_argument("--gib", type=float, default=80.0, help="the GPU's memory (an H100: 80)")
    ap.add_argument("--tiny", action="store_true", help="a tiny digits preset (U-Net; MLP with --fake)")
    ap.add_argument("--fake", action="store_true",
                    help="fake tensors at the micro-batch itself (no RAM; ImageNet-64)")
    ap.add_argument("--batch", type=int, default=None,
                    help="with --fake: this batch in one pass, not the micro-batch")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="preset override")
    ap.add_argument("--json", default=None, help="write the rows here")
    a = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    runs = [("digits", TINY_MLP if a.fake else TINY)] if a.tiny else [(n, []) for n in a.presets.split(",")]
    rows = []
    for name, over in runs:
        if name not in SHAPES:
            sys.exit(f"error: no data shape known for preset {name!r}; choose from {', '.join(SHAPES)}")
        rows.append(estimate_fake(name, over + a.set, a.batch) if a.fake else estimate(name, over + a.set))
    print(f"\nload {os.getloadavg()[0]:.2f}; bf16 autocast as on CUDA; {'fake tensors; ' if a.fake else ''}"
          f"safe = peak <= {MARGIN:.0%} of {a.gib:g} GiB")
    print(f"| preset | net params | distance | GAN | micro-batch | resident GiB | "
          f"{'transient GiB' if a.fake else 'transient GiB/image'} | peak GiB | safe |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        peak = r["peak"] / GIB
        transient = f"{r['transient'] / GIB:.2f}" if a.fake else f"{r['transient_per_item'] / GIB:.4f}"
        gan = "yes" if r["gan"] else "no"
        print(f"| {r['preset']} | {r['params_net_m']:.1f}M | {r['distance']} | {gan} | "
              f"{r['micro_batch']} | {r['resident_total'] / GIB:.2f} | {transient} | "
              f"{peak:.1f} | {'yes' if peak <= MARGIN * a.gib else 'NO'} |")

    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, default=str)
    if a.fake:  # heap corruption was seen at interpreter exit after fake-tensor runs (after the results):
        sys.stdout.flush()  # end without the teardown
        os._exit(0)

if __name__ == "__main__":
    main()
