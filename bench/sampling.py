"""Sampling throughput: CTM gamma-sampling at NFE 1, 2, 4 and the teacher's Heun at 35 NFE, with peak memory.

    python bench/sampling.py --presets cifar10,cifar10-fast --batch 2048 --device cuda --modes \
        eager,bf16-cl,compile
    python bench/sampling.py --presets cifar10-fast --batch 64 --device cpu --modes eager     # CPU smoke run

Networks are randomly initialised (speed does not depend on the weights). Prints a table and, with
--json FILE, writes the figures. Modes: eager (fp32), bf16-cl (bf16 weights, channels-last), compile
(bf16-cl + torch.compile), graphs (bf16-cl + torch.compile(mode="reduce-overhead"), i.e. CUDA graphs).
Never asserts anything: it measures.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from ctmtool.config import load_preset
from ctmtool.core.models import build_precond
from ctmtool.core.sampling import gamma_sample, teacher_sample, teacher_schedule
from ctmtool.core.schedules import ctm_default_schedule


def prepare(preset_name: str, kind: str, mode: str, device: torch.device):
    p = load_preset(preset_name)
    shape = (3, 32, 32) if p.data.source in ("cifar10", "folder") and p.data.resolution in (None, 32) else \
        (p.data.channels or 3, p.data.resolution, p.data.resolution)
    net = build_precond(kind, p, shape).to(device).eval().requires_grad_(False)
    if mode != "eager":
        net.net.to(dtype=torch.bfloat16, memory_format=torch.channels_last)
    if mode == "compile":
        net.net.compile()
    elif mode == "graphs":
        net.net.compile(mode="reduce-overhead")
    return p, net, shape


def time_fn(fn, device: torch.device, repeats: int) -> float:
    fn()  # warm-up (compilation happens here)
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / repeats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="cifar10-fast")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--modes", default="eager")
    ap.add_argument("--nfes", default="1,2,4")
    ap.add_argument("--teacher-steps", type=int, default=18, help="Heun grid points (18 -> 35 NFE); 0 skips")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    dev = torch.device(a.device)
    rows = []
    for name in a.presets.split(","):
        for mode in a.modes.split(","):
            p, ctm, shape = prepare(name, "ctm", mode, dev)
            dtype = torch.bfloat16 if mode != "eager" else torch.float32
            x = torch.randn(a.batch, *shape, device=dev)
            if mode != "eager":
                x = x.to(memory_format=torch.channels_last)
            params = sum(q.numel() for q in ctm.parameters())
            for nfe in [int(v) for v in a.nfes.split(",")]:
                sched = ctm_default_schedule(nfe)
                if dev.type == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                with torch.autocast(dev.type, dtype=dtype, enabled=mode != "eager" and dev.type == "cuda"):
                    sec = time_fn(lambda: gamma_sample(ctm, x * 80, sched), dev, a.repeats)  # noqa: B023
                mem = torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda" else float("nan")
                rows.append({"preset": name, "mode": mode, "what": f"ctm nfe {nfe}", "batch": a.batch,
                             "images_per_s": a.batch / sec, "peak_gib": mem, "params_m": params / 1e6})
            if a.teacher_steps:
                _, teacher, _ = prepare(name, "teacher", mode, dev)
                sched = teacher_schedule(type("M", (), {"net": teacher})(), a.teacher_steps)
                with torch.autocast(dev.type, dtype=dtype, enabled=mode != "eager" and dev.type == "cuda"):
                    sec = time_fn(lambda: teacher_sample(teacher, x * 80, sched),  # noqa: B023
                                  dev, max(1, a.repeats // 3))
                rows.append({"preset": name, "mode": mode,
                             "what": f"teacher heun {2 * a.teacher_steps - 1} nfe", "batch": a.batch,
                             "images_per_s": a.batch / sec, "peak_gib": float("nan"),
                             "params_m": params / 1e6})
    dev_name = (torch.cuda.get_device_name(dev) if dev.type == "cuda"
                else f"cpu ({torch.get_num_threads()} threads)")
    print(f"device: {dev_name}, torch {torch.__version__}")
    print(f"{'preset':14s} {'mode':9s} {'what':22s} {'batch':>6s} {'images/s':>10s} {'peak GiB':>9s}")
    for r in rows:
        print(f"{r['preset']:14s} {r['mode']:9s} {r['what']:22s} {r['batch']:6d} {r['images_per_s']:10.1f} "
              f"{r['peak_gib']:9.2f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"device": dev_name, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
