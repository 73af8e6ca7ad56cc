"""Training lengths in images for GPU presets: counted FLOPs of one training step per image, and the kimg a
time budget would reach at an assumed sustained rate (an estimate, not a measurement of any GPU).

    python bench/preset_lengths.py --presets cifar10-fast,cifar10-edges,cifar10-inpaint,cifar10-sr4 \
        --minutes 10

For each training section of a preset ([teacher] where the preset file has one, [distill] always) one real
optimiser step (`TeacherObjective.step` / `TrajectoryObjective.step`: forward, backward, optimiser, EMAs) runs
on the CPU under torch.utils.flop_counter.FlopCounterMode on random images of the preset's shape, with random
weights (FLOPs do not depend on them, nor on the device or dtype). CTM and GCTM steps cost A + k B, k being
the solver steps of the batch's target (P(k) ~ k, `schedules.step_count_probs`): the step is counted with k
forced to 1 and to 2, so B = F(2) - F(1) and A = F(1) - B, and the expected cost is A + E[k] B.

images/s = assumed sustained FLOP/s / FLOPs per image; kimg = images/s * 60 * minutes / 1000. The sustained
rate is the big unknown: `--peak-tflops` (default 989, the dense bf16 tensor-core peak of an H100 SXM, which
an H200 shares) times `--mfu` (default 0.15; the table also prints 0.10 and 0.30). Replace it with a measured
figure (`bench/train.py --device cuda` prints TFLOP/s per preset) when a GPU has run. Never asserts anything.
"""

from __future__ import annotations

import argparse
import contextlib
import tomllib

import torch
from torch.utils.flop_counter import FlopCounterMode

import ctmtool.losses.ctm as ctm_losses
import ctmtool.train.gctm_objective as gctm_obj
from ctmtool.config import load_preset, resolve_preset_path
from ctmtool.core import schedules
from ctmtool.core.models import build_precond
from ctmtool.gctm.couplings import coupling_from_config, item_shape
from ctmtool.train.teacher_objective import TeacherObjective
from ctmtool.train.trajectory import ctm_objective

H100_SXM_BF16_DENSE_TFLOPS = 989.0
MOMENTS = {"var0": 0.25, "var1": 0.25, "cov01": 0.0}  # any valid moments: they scale, they do not add FLOPs


@contextlib.contextmanager
def forced_k(k: int):
    """Make every CTM/GCTM index draw use k solver steps (both modules import sample_ctm_indices by name)."""
    mods = [m for m in (ctm_losses, gctm_obj) if hasattr(m, "sample_ctm_indices")]
    orig = [m.sample_ctm_indices for m in mods]

    def fixed(batch, grid, max_steps, generator=None, device=None):
        return schedules.sample_ctm_indices(batch, grid, max_steps, generator=generator, k=k, device=device)

    for m in mods:
        m.sample_ctm_indices = fixed
    try:
        yield
    finally:
        for m, f in zip(mods, orig, strict=True):
            m.sample_ctm_indices = f


def step_flops(obj, batches) -> int:
    """FLOPs FlopCounterMode counts for one optimiser step (2 per multiply-add of matmuls, convolutions,
    attention)."""
    with FlopCounterMode(display=False) as fc:
        obj.step(batches, 0.0)
    return int(fc.get_total_flops())


def stored_shape(preset) -> tuple[int, ...]:
    """(C, H, W) of one data item; CIFAR-10 presets are 3x32x32 (paired data: two halves side by side)."""
    res = preset.data.resolution or 32
    c = preset.data.channels or 3
    paired = preset.gctm is not None and preset.gctm.coupling.strip().startswith("paired")
    return (c, res, 2 * res) if paired else (c, res, res)


def sections(name: str) -> list[str]:
    """The training sections the preset file itself sets ([distill] is always trained)."""
    raw = tomllib.loads(resolve_preset_path(name).read_text())
    return [s for s in ("teacher", "distill") if s in raw]


def count(name: str, section: str, batch: int) -> dict:
    """Expected GFLOP per image of one training step of `section` of preset `name`."""
    p = load_preset(name, [f"{section}.compile=false", f"{section}.batch={batch}"])
    cpu = torch.device("cpu")
    stored = stored_shape(p)
    x = torch.rand(batch, *stored, generator=torch.Generator().manual_seed(0)) * 2 - 1
    batches = [(x, None)]
    row = {"preset": name, "section": section, "preset_batch": getattr(load_preset(name), section).batch,
           "preset_kimg": getattr(load_preset(name), section).kimg}
    if section == "teacher":
        row["gflop_per_image"] = step_flops(TeacherObjective(p, stored, cpu), batches) / batch / 1e9
        return row
    if p.gctm is not None:
        obj = gctm_obj.gctm_objective(p, item_shape(p.gctm.coupling, stored), cpu,
                                      coupling_from_config(p.gctm), MOMENTS)
        max_steps = p.gctm.max_steps
    else:
        teacher = build_precond("teacher", p, stored).eval().requires_grad_(False)
        obj = ctm_objective(p, stored, cpu, teacher)
        max_steps = p.ctm.max_steps
    f = []
    for k in (1, 2):
        with forced_k(k):
            f.append(step_flops(obj, batches))
    b = f[1] - f[0]
    a = f[0] - b
    ek = float((torch.arange(1, max_steps + 1, dtype=torch.float64)
                * schedules.step_count_probs(max_steps)).sum())
    row.update(k_mean=ek, gflop_a=a / batch / 1e9, gflop_b=b / batch / 1e9,
               gflop_per_image=(a + ek * b) / batch / 1e9)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="cifar10-fast,cifar10-edges,cifar10-inpaint,cifar10-sr4")
    ap.add_argument("--minutes", type=float, default=10.0, help="the time budget to express in images")
    ap.add_argument("--peak-tflops", type=float, default=H100_SXM_BF16_DENSE_TFLOPS)
    ap.add_argument("--mfu", type=float, default=0.15, help="assumed sustained fraction of --peak-tflops")
    ap.add_argument("--batch", type=int, default=2,
                    help="images in the counted step (FLOPs per image do not depend on it)")
    a = ap.parse_args()
    torch.manual_seed(0)
    fracs = sorted({0.10, a.mfu, 0.30})
    print(f"FLOPs counted on the CPU (FlopCounterMode); images in {a.minutes:g} min at the fraction of "
          f"{a.peak_tflops:g} TFLOP/s shown (an assumption, not a measurement)")
    print(f"{'preset':16s} {'section':8s} {'batch':>5s} {'k mean':>6s} {'A':>7s} {'B':>6s} {'GFLOP/img':>9s} "
          + " ".join(f"{'kimg@' + format(fr, '.0%'):>10s}" for fr in fracs) + f" {'preset kimg':>11s}")
    for name in a.presets.split(","):
        for section in sections(name):
            r = count(name, section, a.batch)
            km = f"{r['k_mean']:6.2f}" if "k_mean" in r else f"{'-':>6s}"
            ab = f"{r['gflop_a']:7.2f} {r['gflop_b']:6.2f}" if "gflop_a" in r else f"{'-':>7s} {'-':>6s}"
            kimgs = [fr * a.peak_tflops * 1e12 / (r["gflop_per_image"] * 1e9) * 60 * a.minutes / 1000
                     for fr in fracs]
            print(f"{name:16s} {section:8s} {r['preset_batch']:5d} {km} {ab} {r['gflop_per_image']:9.2f} "
                  + " ".join(f"{k:10.0f}" for k in kimgs) + f" {r['preset_kimg']:11g}")


if __name__ == "__main__":
    main()
