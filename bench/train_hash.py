"""Fingerprints of short toy training runs: a hash of every tensor each checkpoint saves (weights, EMAs,
optimiser state, random generators), to show that a change to the training loop leaves the trained result
bit-identical for the same seeds.

    python bench/train_hash.py OUT_DIR

Runs a teacher (batch 32 in two micro-batches, warm-up and cosine learning rate, 20 steps, a checkpoint every
10) and a CTM (6 steps) on the toy preset with a tiny MLP, on the CPU. Prints one line per run. Measures only.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import torch

from ctmtool.checkpoint import load_checkpoint
from ctmtool.config import load_preset
from ctmtool.progress import Quiet
from ctmtool.train.run import train

TINY = ["net.mlp.hidden=16", "net.mlp.depth=1", "net.mlp.emb=8", "data.n=512"]
RUNS = {
    "teacher": TINY
    + ["teacher.batch=32", "teacher.micro_batch=16", "teacher.kimg=0.64", "teacher.ckpt_every_kimg=0.32",
                       "teacher.lr_decay=cosine", "teacher.lr_rampup_kimg=0.1"],
    "distill": TINY
    + ["distill.batch=32", "distill.kimg=0.192", "ctm.grid=6", "ctm.max_steps=3", "distill.lr_decay=cosine"],
}


def fingerprint(path: Path) -> str:
    """sha256 (first 16 hex digits) over the names and bytes of every saved tensor, in name order."""
    ckpt = load_checkpoint(path)
    h = hashlib.sha256()
    for group in sorted(ckpt.groups):
        for name in sorted(ckpt.groups[group]):
            h.update(f"{group}/{name}".encode())
            h.update(ckpt.groups[group][name].reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="a folder for the run directories")
    args = ap.parse_args()
    torch.set_num_threads(1)
    for role, sets in RUNS.items():
        run_dir = args.out / role
        res = train(load_preset("toy", sets), role, run_dir, torch.device("cpu"), Quiet(), force=True)
        prints = [f"{f.name}={fingerprint(f)}" for f in sorted(run_dir.glob("ckpt-*.safetensors"))]
        print(role, f"steps={res.steps}", *prints)


if __name__ == "__main__":
    main()
