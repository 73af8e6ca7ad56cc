"""Host synchronisations of a CTM distillation step: which calls read a tensor's value on the host.

    python bench/host_syncs.py                                   # CPU: a tiny U-Net, 3 steps, every site
                                                                 # listed
    python bench/host_syncs.py --device cuda --preset cifar10-fast --batch 64

On the CPU nothing synchronises, so the script instruments: a TorchDispatchMode records every aten op that
needs a tensor's value on the host when that tensor lives on a GPU (`_local_scalar_dense`, i.e. `.item()`,
`float(t)`, `int(t)`, `bool(t)` / a tensor in a Python `if`; `nonzero`, `masked_select`, `unique`,
`repeat_interleave` with a tensor count, `equal`, `allclose`), with the ctmtool line that made it. Each site
is then classified by inspection (the table SITES below): whether its tensor is a device tensor on CUDA (a
real sync) or a CPU tensor there too (index draws from the CPU generator, the Karras grid: no sync).
Device-to-host copies are invisible on the CPU; the CUDA mode sees them.
On CUDA it runs the same steps under `torch.cuda.set_sync_debug_mode("warn")` and counts the warnings
per step, with their source lines. Never asserts anything: it measures.
"""

from __future__ import annotations

import argparse
import json
import traceback
import warnings
from collections import Counter
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import ctmtool

SYNC_OPS = {"_local_scalar_dense", "nonzero", "masked_select", "unique", "_unique2", "unique_dim",
            "unique_consecutive", "repeat_interleave", "equal", "allclose", "is_nonzero"}

# (file, function) -> (syncs on CUDA?, why): inspection of each site the recorder finds
SITES = {
    ("schedules.py", "sample_ctm_indices"): (False, "k drawn with the CPU index generator (.item() of a CPU "
                                                    "tensor)"),
    ("schedules.py", "sample_teacher_steps"): (False,
                                               "k drawn once a step with the CPU index generator (.item())"),
    ("trajectory.py", "_dropout_seed"): (False, "dropout seed drawn with the CPU index generator"),
    ("solvers.py", "heun"): (False, "bool(any(level > 0)) on the schedule's own CPU tensor"),
    ("trajectory.py", "_apply_step"): (True, "bool(isfinite(loss)): the step's one deliberate sync (skip "
                                             "non-finite steps)"),
    ("teacher_objective.py", "step"): (True, "bool(isfinite(total)) of the teacher step"),
    ("loop.py", "fit"): (True, "float(log value) at log lines only (every log_every_kimg), not per step"),
    ("teacher_objective.py",
     "_step_optimizer"): (False, "optimizer step counters: CPU tensors (not capturable/fused RAdam)"),
}
# Tensor.to(device) sites: True where the tensor is on the CPU when training on CUDA (a blocking H2D copy)
COPY_SITES = {
    ("ctm.py", "__call__"): (True, "grid levels / indices indexed on the CPU, then copied"),
    ("ctm.py", "<genexpr>"): (True, "grid levels t, u, s indexed on the CPU, then copied"),
    ("solvers.py", "_level"): (True, "per-sample CPU schedule levels copied each Heun step"),
    ("precond.py", "_bcast"): (False, "levels already on the device (as_tensor of a device tensor)"),
    ("precond.py", "_flat"): (False, "levels already on the device"),
}


PACKAGE = Path(ctmtool.__file__).resolve().parent


def _site(stack) -> tuple[str, str, int]:
    """The innermost frame in the ctmtool package (by its directory: a checkout or venv path that merely
    contains "ctmtool", as CI's clone does, must not claim torch's own frames)."""
    for fr in reversed(stack):
        if Path(fr.filename).resolve().is_relative_to(PACKAGE):
            return Path(fr.filename).name, fr.name, fr.lineno
    fr = stack[-1]
    return Path(fr.filename).name, fr.name, fr.lineno


class SyncRecorder(TorchDispatchMode):
    """Records (op, ctmtool file, function, line) of every aten op that would read a device value on the host,
    and every `Tensor.to(<device>)` call made by ctmtool (on CUDA, a blocking copy of a CPU tensor to the GPU
    synchronises the stream; a tensor already there is returned as is)."""

    def __init__(self):
        super().__init__()
        self.hits: Counter = Counter()
        self._to = torch.Tensor.to

    def __enter__(self):
        rec, orig = self, self._to

        def to(t, *args, **kw):
            dev = kw.get("device", next((a for a in args if isinstance(a, torch.device | str)), None))
            if dev is not None and not kw.get("non_blocking", False):
                rec.hits[("to(device)", *_site(traceback.extract_stack()[:-1]))] += 1
            return orig(t, *args, **kw)

        torch.Tensor.to = to
        return super().__enter__()

    def __exit__(self, *exc):
        torch.Tensor.to = self._to
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in SYNC_OPS:
            self.hits[(name, *_site(traceback.extract_stack()[:-1]))] += 1
        return func(*args, **(kwargs or {}))


def build(preset_name: str, device: torch.device, batch: int, overrides: list[str]):
    from ctmtool.config import load_preset
    from ctmtool.core.models import build_precond
    from ctmtool.train.trajectory import ctm_objective

    p = load_preset(preset_name, [f"distill.batch={batch}", *overrides])
    shape = (3, p.data.resolution or 32, p.data.resolution or 32) if p.net.kind == "unet" else (2,)
    teacher = build_precond("teacher", p, shape).to(device).eval().requires_grad_(False)
    obj = ctm_objective(p, shape, device, teacher)
    g = torch.Generator(device).manual_seed(0)
    x = torch.rand(batch, *shape, device=device, generator=g) * 2 - 1
    return obj, [(x, None)]


def cpu_report(obj, batches, steps: int) -> dict:
    rec = SyncRecorder()
    with rec:
        for _ in range(steps):
            obj.step(batches, 0.0)
    rows = []
    for (op, file, fn, line), n in sorted(rec.hits.items(), key=lambda kv: kv[0][1:]):
        table = COPY_SITES if op == "to(device)" else SITES
        syncs, why = table.get((file, fn), (None, "unclassified: inspect this site"))
        rows.append({"op": op, "site": f"{file}:{line} ({fn})", "per_step": n / steps, "syncs_on_cuda": syncs,
                     "why": why})
    return {"steps": steps, "sites": rows,
            "device_syncs_per_step": sum(r["per_step"] for r in rows if r["syncs_on_cuda"]),
            "unclassified": sum(1 for r in rows if r["syncs_on_cuda"] is None)}


def cuda_report(obj, batches, steps: int, warmup: int = 2) -> dict:
    for _ in range(warmup):
        obj.step(batches, 0.0)
    torch.cuda.synchronize()
    sites: Counter = Counter()
    prev = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(steps):
                obj.step(batches, 0.0)
    finally:
        torch.cuda.set_sync_debug_mode(prev)
    for w in caught:
        if "synchroniz" in str(w.message).lower():
            sites[f"{Path(w.filename).name}:{w.lineno}"] += 1
    total = sum(sites.values())
    return {"steps": steps, "syncs_per_step": total / steps,
            "sites": {k: v / steps for k, v in sites.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="cifar10-fast")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--set", action="append", default=None, metavar="KEY=VALUE",
                    help="preset overrides (CPU default: a tiny U-Net, ctm.max_steps=2)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    dev = torch.device(a.device)
    tiny = ["net.unet.model_channels=16", "net.unet.channel_mult=[1,2]", "net.unet.num_blocks=1",
            "ctm.max_steps=2"]
    overrides = a.set if a.set is not None else (tiny if dev.type == "cpu" else [])
    obj, batches = build(a.preset, dev, a.batch, overrides)
    r = cuda_report(obj, batches, a.steps) if dev.type == "cuda" else cpu_report(obj, batches, a.steps)
    r.update(device=str(dev), preset=a.preset, batch=a.batch, overrides=overrides)
    if a.json:
        print(json.dumps(r))
        return
    if dev.type == "cuda":
        print(f"{a.preset} CTM step on {torch.cuda.get_device_name(dev)}: {r['syncs_per_step']:g} "
              "synchronisations per step")
        for k, v in r["sites"].items():
            print(f"  {v:6.2f} / step  {k}")
        return
    print(f"{a.preset} CTM step, {a.steps} steps on the CPU, host reads of tensor values (per step):")
    for s in r["sites"]:
        mark = {True: "SYNC on CUDA", False: "no sync (CPU tensor)", None: "UNCLASSIFIED"}[s["syncs_on_cuda"]]
        print(f"  {s['per_step']:5.2f}  {s['op']:20s} {s['site']:40s} {mark:22s} {s['why']}")
    print("device synchronisations per step on CUDA (by this classification): "
          f"{r['device_syncs_per_step']:g}; unclassified sites: {r['unclassified']}")


if __name__ == "__main__":
    main()
