"""Per-image noise cost: today's `sampling.ImageNoise` (one CPU generator per image) against the Philox
source (`ctmtool.core.noise.PhiloxNoise`), side by side in one run, with plain `torch.randn` for scale.

    python bench/noise.py                                  # CPU, 2,048 CIFAR-size images, 1 thread
    python bench/noise.py --device cuda --repeats 20       # on a GPU: the Triton kernel

Prints the median seconds per draw of a (batch, 3, 32, 32) tensor on --device and the ratio to ImageNoise.
Never asserts anything: it measures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from ctmtool.core.noise import PhiloxNoise
from ctmtool.core.sampling import ImageNoise


def timed(fn, device: torch.device, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run(batch: int, shape: tuple[int, ...], device: torch.device, repeats: int) -> dict:
    seeds = list(range(batch))
    rows = {
        "ImageNoise (edm)": lambda: ImageNoise(seeds, shape, device)(),
        "PhiloxNoise (philox)": lambda: PhiloxNoise(seeds, shape, device)(),
        "torch.randn (no per-image seeds)": lambda: torch.randn(batch, *shape, device=device),
    }
    out = {name: timed(fn, device, repeats) for name, fn in rows.items()}
    base = out["ImageNoise (edm)"]
    backend = "triton" if PhiloxNoise(seeds[:1], shape, device).triton else "torch reference"
    return {"device": str(device), "threads": torch.get_num_threads(), "batch": batch, "shape": list(shape),
            "philox_backend": backend, "seconds": out,
            "ratio_to_imagenoise": {k: v / base for k, v in out.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=2048)
    ap.add_argument("--shape", default="3,32,32")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (torch.set_num_threads)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    r = run(a.batch, tuple(int(s) for s in a.shape.split(",")), torch.device(a.device), a.repeats)
    if a.json:
        print(json.dumps(r))
        return
    print(f"batch {r['batch']} x {tuple(r['shape'])} on {r['device']} ({r['threads']} threads); philox "
          f"backend: {r['philox_backend']}; median of {a.repeats}")
    for k, v in r["seconds"].items():
        print(f"  {k:34s} {1000 * v:9.1f} ms   x{r['ratio_to_imagenoise'][k]:.2f} of ImageNoise")


if __name__ == "__main__":
    main()
