"""Training throughput: EDM teacher and CTM distillation steps on random data, with FLOP/s and peak memory.

    python bench/train.py --presets cifar10,cifar10-fast --kinds teacher,ctm --device cuda            # H100
    python bench/train.py --presets cifar10-fast --kinds teacher,ctm --device cpu --batch 4 --steps 2 \
        --warmup 1 --set ctm.max_steps=2                                                      # CPU smoke

Each step is the real `TeacherObjective.step` / `TrajectoryObjective.step` of ctmtool.train.teacher_objective
(forward, backward, optimiser, EMA updates) on one batch of random images of the preset's shape; networks are
randomly initialised (speed does not depend on the weights). Precision comes from the preset (bf16 autocast on
CUDA; the CPU always runs fp32). torch.compile follows the preset's `compile` flag unless --compile on/off
says otherwise (it only acts on CUDA, as in training). As in `ctmtool distill`, only the online CTM network is
compiled; --compile-aux also compiles the teacher and the target network (not what training does today).

FLOPs: one step is run under torch.utils.flop_counter.FlopCounterMode with the networks in eager mode; this
counts every network call of the step (forward and backward, the teacher's Heun steps, the target passes,
the adaptive-weight gradients), 2 FLOPs per multiply-add of matmuls/convolutions/attention. A CTM step's
cost depends on k, the number of teacher Heun steps (one k per batch, P(k) ~ k): FLOPs(k) = A + k * B, where
B is the counted cost of one batched Heun step of the teacher and A is the counted step minus k * B. The k of
every timed step is recorded, so the FLOP/s figure uses the FLOPs of the steps actually timed.
Fraction of peak = achieved FLOP/s / --peak-tflops; the default 989 TFLOP/s is the H100 SXM dense bf16
tensor-core peak (no sparsity). On the CPU the fraction is meaningless (fp32, not an H100) but is printed.
Never asserts anything: it measures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

import ctmtool.losses.ctm as ctm_losses
from ctmtool.config import load_preset
from ctmtool.core import solvers
from ctmtool.core.models import build_precond
from ctmtool.device import autocast
from ctmtool.train.teacher_objective import TeacherObjective
from ctmtool.train.trajectory import ctm_objective

H100_SXM_BF16_DENSE_TFLOPS = 989.0


class KRecorder:
    """Wraps ctmtool.losses.ctm.sample_ctm_indices to record the k (teacher steps) of every CTM batch."""

    def __init__(self):
        self.ks: list[int] = []
        self._orig = ctm_losses.sample_ctm_indices

    def __enter__(self):
        def wrapped(*args, **kw):
            out = self._orig(*args, **kw)
            self.ks.append(int(out[3]))
            return out

        ctm_losses.sample_ctm_indices = wrapped
        return self

    def __exit__(self, *exc):
        ctm_losses.sample_ctm_indices = self._orig


@contextlib.contextmanager
def eager(*modules):
    """Temporarily bypass nn.Module.compile() (so FlopCounterMode sees every aten op)."""
    saved = []
    for m in modules:
        for sub in m.modules():
            if getattr(sub, "_compiled_call_impl", None) is not None:
                saved.append((sub, sub._compiled_call_impl))
                sub._compiled_call_impl = None
    try:
        yield
    finally:
        for sub, impl in saved:
            sub._compiled_call_impl = impl


def count(fn) -> int:
    with FlopCounterMode(display=False) as fc:
        fn()
    return int(fc.get_total_flops())


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def data_shape(preset) -> tuple[int, ...]:
    res = preset.data.resolution or 32
    return (preset.data.channels or 3, res, res)


def bench_one(name: str, kind: str, a, dev: torch.device) -> dict:
    section = "teacher" if kind == "teacher" else "distill"
    overrides = list(a.set)
    if a.compile != "preset":
        overrides.append(f"{section}.compile={'true' if a.compile == 'on' else 'false'}")
    p = load_preset(name, overrides)
    cfg = getattr(p, section)
    batch = a.batch or cfg.batch
    micro = a.micro_batch or batch
    if batch % micro:
        raise SystemExit(f"--batch {batch} is not a multiple of --micro-batch {micro}")
    shape = data_shape(p)
    g = torch.Generator(dev).manual_seed(0)
    batches = [((torch.rand(micro, *shape, device=dev, generator=g) * 2 - 1), None)
               for _ in range(batch // micro)]
    compiled = cfg.compile and dev.type == "cuda"

    if kind == "teacher":
        obj = TeacherObjective(p, shape, dev)
        nets = [obj.net]
        heun_step_flops = 0
    else:
        teacher = build_precond("teacher", p, shape).to(dev).eval().requires_grad_(False)
        obj = ctm_objective(p, shape, dev, teacher)
        if a.compile_aux and dev.type == "cuda":
            teacher.net.compile()
            obj.target.net.compile()
        nets = [obj.net, obj.target, teacher]
        # B: one batched Heun step of the teacher (2 denoiser calls; the CTM grid never reaches sigma = 0).
        levels = torch.tensor([2.0, 1.0], dtype=torch.float64)
        with eager(teacher), autocast(dev, cfg.precision):
            heun_step_flops = sum(count(lambda x=x: solvers.heun(teacher, x * 2.0, levels))
                                  for x, _ in batches)

    # One step under FlopCounterMode, eager, with its k recorded.
    with eager(*nets), KRecorder() as rec:
        step_flops = count(lambda: obj.step(batches, 0.0))
    k_counted = sum(rec.ks)  # summed over micro-batches (each runs its own k steps)
    base_flops = step_flops - k_counted * heun_step_flops

    for _ in range(a.warmup):  # compilation happens here
        obj.step(batches, 0.0)
    sync(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    with KRecorder() as rec:
        sync(dev)
        t0 = time.perf_counter()
        for _ in range(a.steps):
            out = obj.step(batches, 0.0)
        sync(dev)
        sec = time.perf_counter() - t0
    ks = rec.ks
    total_flops = a.steps * base_flops + sum(ks) * heun_step_flops
    mem = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else float("nan")
    achieved = total_flops / sec
    return {
        "preset": name, "kind": kind, "batch": batch, "micro_batch": micro, "steps": a.steps,
        "precision": cfg.precision if dev.type == "cuda" else "fp32", "compile": bool(compiled),
        "compile_aux": bool(a.compile_aux and kind == "ctm" and dev.type == "cuda"),
        "params_m": sum(q.numel() for q in obj.net.parameters()) / 1e6,
        "step_s": sec / a.steps, "images_per_s": batch * a.steps / sec,
        "gflop_counted_step": step_flops / 1e9, "k_counted_step": k_counted,
        "gflop_heun_step": heun_step_flops / 1e9, "k_timed_mean": statistics.fmean(ks) if ks else None,
        "gflop_per_step_timed": total_flops / a.steps / 1e9,
        "gflop_per_image": total_flops / a.steps / batch / 1e9, "tflops": achieved / 1e12,
        "peak_tflops": a.peak_tflops, "frac_peak": achieved / (a.peak_tflops * 1e12), "peak_gib": mem,
        "finite": bool(out.get("finite", True)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="cifar10-fast")
    ap.add_argument("--kinds", default="teacher,ctm", help="teacher, ctm or both")
    ap.add_argument("--batch", type=int, default=None, help="images per step (default: the preset's batch)")
    ap.add_argument("--micro-batch", type=int, default=None,
                    help="split the step into micro-batches (gradient accumulation)")
    ap.add_argument("--steps", type=int, default=10, help="timed steps")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (torch.compile compiles here)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--compile", choices=("preset", "on", "off"), default="preset",
                    help="torch.compile the trained network: the preset's compile flag, or force on/off "
                         "(CUDA only)")
    ap.add_argument("--compile-aux", action="store_true",
                    help="CTM: also compile the teacher and the target network")
    ap.add_argument("--peak-tflops", type=float, default=H100_SXM_BF16_DENSE_TFLOPS,
                    help="peak FLOP/s for the fraction (default 989: H100 SXM dense bf16, no sparsity)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="preset override, e.g. ctm.max_steps=2")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    dev = torch.device(a.device)
    rows = []
    for name in a.presets.split(","):
        for kind in a.kinds.split(","):
            try:
                rows.append(bench_one(name, kind, a, dev))
            except Exception as err:  # noqa: BLE001 - report and go on with the next configuration
                rows.append({"preset": name, "kind": kind, "error": f"{type(err).__name__}: {err}"})
            if dev.type == "cuda":
                torch.cuda.empty_cache()
    dev_name = (torch.cuda.get_device_name(dev) if dev.type == "cuda"
                else f"cpu ({torch.get_num_threads()} threads)")
    print(f"device: {dev_name}, torch {torch.__version__}; fraction of peak against {a.peak_tflops:g} "
          "TFLOP/s")
    print(f"{'preset':14s} {'kind':8s} {'batch':>6s} {'prec':5s} {'cmp':4s} {'images/s':>9s} "
          f"{'GFLOP/img':>10s} {'k mean':>6s} {'TFLOP/s':>8s} {'of peak':>8s} {'peak GiB':>9s}")
    for r in rows:
        if "error" in r:
            print(f"{r['preset']:14s} {r['kind']:8s} ERROR {r['error']}")
            continue
        km = f"{r['k_timed_mean']:.1f}" if r["k_timed_mean"] is not None else "-"
        print(f"{r['preset']:14s} {r['kind']:8s} {r['batch']:6d} {r['precision']:5s} "
              f"{'yes' if r['compile'] else 'no':4s} {r['images_per_s']:9.1f} {r['gflop_per_image']:10.1f} "
              f"{km:>6s} {r['tflops']:8.3f} {100 * r['frac_peak']:7.2f}% {r['peak_gib']:9.2f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"device": dev_name, "torch": torch.__version__, "peak_tflops": a.peak_tflops,
                       "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
