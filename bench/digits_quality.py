"""Digits acceptance figures: Frechet distance in pixel space to the 1,437 training digits.

    python bench/digits_quality.py --teacher runs/digits/teacher --ctm runs/digits/ctm --grids docs/img

Every model is scored on n = 360 samples (the size of the held-out test split, so the held-out real digits
give the real-vs-real baseline at the same n; Frechet distance is biased upwards at small n) and on
n = 2,000 samples (less bias, no real baseline of that size). Samples use image seeds 1000, 1001, ... .
Teacher: Heun 18 steps (35 NFE) and 1 step; CTM: gamma-sampling (gamma 0) at --nfe. With --grids DIR,
writes 10x10 sample grids there. Prints JSON. Measures only; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ctmtool.config import DataConfig
from ctmtool.core.models import load_model
from ctmtool.core.sampling import generate
from ctmtool.data import load_dataset
from ctmtool.data.base import to_uint8_images
from ctmtool.jobs.plan import plan_explicit
from ctmtool.jobs.plots import save_samples_png
from ctmtool.metrics.quality import pixel_fd_to


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", help="teacher checkpoint or run directory")
    ap.add_argument("--ctm", help="CTM checkpoint or run directory")
    ap.add_argument("--nfe", default="1,2")
    ap.add_argument("--grids", help="folder for 10x10 sample grids (PNG)")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

    to_train = pixel_fd_to(load_dataset(DataConfig(source="digits", split="train")).values)
    test = load_dataset(DataConfig(source="digits", split="test"))
    out: dict = {"heldout_real_n360": round(to_train(test.values))}
    runs = []
    if a.teacher:
        runs += [("teacher_heun18", a.teacher, dict(solver="heun", steps=18)),
                 ("teacher_heun1", a.teacher, dict(solver="heun", steps=1))]
    if a.ctm:
        runs += [(f"ctm_nfe{k}", a.ctm, dict(solver="gamma", nfe=int(k), gamma=0.0))
                 for k in a.nfe.split(",")]
    for name, path, kw in runs:
        model = load_model(path)
        x = torch.cat([b for b, _ in generate(model, 2000, plan_explicit(model, batch=500, **kw), seed=1000)])
        u8 = to_uint8_images(x)
        out[name] = {"n360": round(to_train(u8[:360])), "n2000": round(to_train(u8))}
        if a.grids:
            Path(a.grids).mkdir(parents=True, exist_ok=True)
            save_samples_png(x[:100], Path(a.grids) / f"digits-{name}.png", True)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
