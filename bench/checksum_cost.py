"""What the checkpoint checksum costs: save and load times of a large checkpoint with and without it.

    python bench/checksum_cost.py [--mib 1024]

Writes a checkpoint whose tensors total --mib MiB (float32, in 64 MiB tensors over the groups net, ema and
optim, as a training checkpoint), then times load_checkpoint of every group with the checksum checked, and of
the same file with the checksum entry removed (an old checkpoint: nothing checked). Best of three runs each.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ctmtool.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from ctmtool.config import load_preset


def best(fn, runs: int = 3) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=1024)
    args = ap.parse_args()
    per = 16 << 20  # 64 MiB of float32
    n = max(args.mib // 64, 3)
    groups = {g: {f"w{i}": torch.randn(per) for i in range(n // 3)} for g in ("net", "ema", "optim")}
    with tempfile.TemporaryDirectory(dir=".") as d:
        path, old = Path(d) / "big.safetensors", Path(d) / "old.safetensors"
        ckpt = Checkpoint("teacher", load_preset("toy"), (2,), groups=groups)
        t_save = best(lambda: save_checkpoint(path, ckpt), 1)
        with safe_open(path, "pt") as f:
            meta = dict(f.metadata())
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta.pop("checksum")
        save_file(tensors, old, metadata=meta)
        del tensors
        size = path.stat().st_size / 2**20
        t_checked = best(lambda: load_checkpoint(path, check_finite=False))
        t_plain = best(lambda: load_checkpoint(old, check_finite=False))
        t_ema = best(lambda: load_checkpoint(path, groups=["ema"], check_finite=False))
    print(f"checkpoint of {size:.0f} MiB: save {t_save:.2f} s (checksum included); load all groups "
          f"{t_checked:.2f} s checked vs {t_plain:.2f} s unchecked (+{t_checked - t_plain:.2f} s, "
          f"{size / max(t_checked - t_plain, 1e-9):.0f} MiB/s); load the ema group only, checked: "
          f"{t_ema:.2f} s")


if __name__ == "__main__":
    main()
