"""Bit-identity of whole CLI jobs across a refactor: runs short versions of the README toy job, a digits
teacher + distillation and a GCTM (toy-translate) run through `python -m ctmtool` with a given source tree
first on the path, then compares every tensor of every checkpoint and sample file between two such runs.

    python bench/behaviour_hash.py run TREE OUT      # runs the jobs with TREE's ctmtool, outputs under OUT
    python bench/behaviour_hash.py compare OUT_A OUT_B

Everything runs on the CPU with one thread. Measures only; imports nothing from ctmtool (the comparison reads
.safetensors and .npz files with safetensors and numpy), so old and new layouts are compared alike.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

JOBS = [
    # (a) the README toy job, shortened: teacher, distillation from it, one-step and two-step samples
    "teacher --preset toy --kimg 25.6 --set teacher.ckpt_every_kimg=12.8",
    "distill --preset toy --teacher runs/toy/teacher --kimg 12.8 --set distill.eval_every_kimg=6.4",
    "sample --ckpt runs/toy/ctm --nfe 1 --n 4096 --out toy-ctm-nfe1.npz",
    "sample --ckpt runs/toy/ctm --nfe 1 --n 4096 --out toy-ctm-nfe1.png",
    "sample --ckpt runs/toy/ctm --nfe 3 --gamma 0.5 --n 1000 --out toy-ctm-nfe3.npz",
    "sample --ckpt runs/toy/teacher --steps 6 --n 1000 --out toy-teacher.npz",
    # (b) digits: a short teacher and a short distillation from it, samples of both
    "teacher --preset digits --kimg 2.56",
    "distill --preset digits --teacher runs/digits/teacher --kimg 1.28",
    "sample --ckpt runs/digits/ctm --nfe 1 --n 16 --out digits-nfe1.npz",
    "sample --ckpt runs/digits/ctm --nfe 2 --gamma 0.3 --n 16 --out digits-nfe2.npz",
    # (c) GCTM: a short toy-translate run and a translation of points
    "distill --preset toy-translate --kimg 5.12",
    "translate points.npz --ckpt runs/toy-translate/gctm --out translated.npz",
    "translate points.npz --ckpt runs/toy-translate/gctm --nfe 2 --out translated2.npz",
    # (d) editing and zero-shot restoration of the digits samples with the digits CTM
    "translate edit digits-nfe1.npz --ckpt runs/digits/ctm --strength 0.5 --nfe 2 --gamma 0.3 "
    "--out edited.npz",
    "translate edit digits-nfe1.npz --ckpt runs/digits/ctm --restore inpaint --nfe 2 --out inpainted.npz",
    "translate edit digits-nfe1.npz --ckpt runs/digits/ctm --restore superres --factor 2 --nfe 3 --gamma 0.5 "
    "--out superres.npz",
]


def run(tree: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    np.savez(out / "points.npz", samples=rng.normal(size=(256, 2)).astype(np.float32))
    env = dict(os.environ, PYTHONPATH=str(tree.resolve()), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    for job in JOBS:
        t0 = time.time()
        cmd = [sys.executable, "-m", "ctmtool", *job.split(), "--device", "cpu", "--force"]
        if job.startswith("translate"):
            cmd.remove("--device"), cmd.remove("cpu")
        res = subprocess.run(cmd, cwd=out, env=env, capture_output=True, text=True)
        print(f"{time.time() - t0:6.1f}s rc={res.returncode} ctmtool {job}", flush=True)
        if res.returncode:
            print(res.stderr[-2000:], file=sys.stderr)
            sys.exit(1)


def tensors(path: Path) -> dict[str, np.ndarray]:
    if path.suffix == ".npz":
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    from safetensors.numpy import load_file  # noqa: PLC0415 (only where checkpoints are compared)

    try:
        return load_file(str(path))
    except Exception:  # bf16 tensors: compare raw bytes through torch
        import torch  # noqa: PLC0415
        from safetensors.torch import load_file as load_torch  # noqa: PLC0415

        return {k: v.view(torch.uint8).numpy() for k, v in load_torch(str(path)).items()}


def compare(a: Path, b: Path) -> int:
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.suffix in (".safetensors", ".npz", ".png"))
    bad = n_tensors = 0
    for rel in files:
        pb = b / rel
        if not pb.exists():
            print(f"MISSING in {b}: {rel}")
            bad += 1
            continue
        if rel.suffix == ".png":
            same = a.joinpath(rel).read_bytes() == pb.read_bytes()
            n_tensors += 1
        else:
            ta, tb = tensors(a / rel), tensors(pb)
            same = ta.keys() == tb.keys() and all(
                ta[k].dtype == tb[k].dtype and ta[k].shape == tb[k].shape
                and ta[k].tobytes() == tb[k].tobytes()
                for k in ta)
            n_tensors += len(ta)
        digest = hashlib.sha256(a.joinpath(rel).read_bytes()).hexdigest()[:12]
        print(f"{'same' if same else 'DIFFERENT':9s} {rel} ({digest})")
        bad += not same
    extra = sorted(p.relative_to(b) for p in b.rglob("*") if p.suffix in (".safetensors", ".npz", ".png")
                   if not (a / p.relative_to(b)).exists())
    for rel in extra:
        print(f"EXTRA in {b}: {rel}")
    bad += len(extra)
    print(f"{len(files)} files, {n_tensors} tensors/images compared: "
          f"{'all bit-identical' if not bad else f'{bad} differ'}")
    return 1 if bad else 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "run":
        run(Path(sys.argv[2]), Path(sys.argv[3]))
    elif len(sys.argv) == 4 and sys.argv[1] == "compare":
        sys.exit(compare(Path(sys.argv[2]), Path(sys.argv[3])))
    else:
        sys.exit(__doc__)
