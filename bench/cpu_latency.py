"""CPU latency of one-step (NFE 1) CTM generation: eager PyTorch, torch.compile and ONNX Runtime side by side.

    OMP_NUM_THREADS=2 python bench/cpu_latency.py --threads 2                  # digits and cifar10-fast,
                                                                               # batch 1 and 16
    python bench/cpu_latency.py --presets digits --batches 1 --reps 50 --json out.json

What is timed: x = clamp(G(sigma_max z, sigma_max, sigma_min)), the generator `ctmtool export` writes, from a
ready z to the image, for a CTM network of the preset's shape with random weights (the time does not depend
on the weights). Backends: `eager` (torch, inference mode), `compile` (torch.compile, inductor, default mode),
`ort-<n>t` (the exported ONNX file in ONNX Runtime's CPUExecutionProvider, all graph optimisations, n
intra-op threads, sequential execution). Runs are interleaved round-robin, so load from other processes
spreads over every backend; the median of `--reps` runs is reported with the ratio to eager and the load
average (`os.getloadavg`) before and after. The outputs are compared with eager's (max |diff|) so a fast
path that is not exact shows it. Never asserts anything: it measures.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import peers  # bench/peers.py, beside this script
import torch

from ctmtool.core.models import load_model
from ctmtool.jobs.export import export_graph, model_graphs, ort_session, random_checkpoint


def time_backends(fns: dict, reps: int, warmup: int = 3) -> dict[str, float]:
    """Median milliseconds per call for each backend, interleaved round-robin (`peers.interleaved`)."""
    return {k: s * 1e3 for k, s in peers.interleaved(fns, reps, warmup).items()}


def bench_preset(preset: str, batches: list[int], threads: list[int], reps: int, compile_: bool,
                 folder: Path) -> list[dict]:
    model = load_model(random_checkpoint(folder / f"{preset}.safetensors", preset, "ctm"))
    graph = model_graphs(model)[0]  # the generator
    onnx_path = folder / f"{preset}.onnx"
    t0 = time.perf_counter()
    export_graph(model, graph, onnx_path)
    print(f"# {preset}: exported the generator in {time.perf_counter() - t0:.1f}s", flush=True)
    sessions = {f"ort-{n}t": ort_session(onnx_path, n) for n in threads}
    compiled = torch.compile(graph.module) if compile_ else None
    rows = []
    for b in batches:
        z = torch.randn(b, *model.data_shape, generator=torch.Generator().manual_seed(b))
        with torch.inference_mode():
            ref = graph.module(z)
        fns = {"eager": lambda z=z: graph.module(z)}
        if compiled is not None:
            t0 = time.perf_counter()
            with torch.inference_mode():
                out = compiled(z)
            print(f"# {preset} batch {b}: torch.compile took {time.perf_counter() - t0:.1f}s; "
                  f"max |diff| {float((out - ref).abs().max()):.2g}", flush=True)
            fns["compile"] = lambda z=z: compiled(z)
        feed = {"z": z.numpy()}
        for name, sess in sessions.items():
            out = torch.from_numpy(sess.run(None, feed)[0])
            print(f"# {preset} batch {b}: {name} max |diff| {float((out - ref).abs().max()):.2g}", flush=True)
            fns[name] = (lambda s=sess, f=feed: s.run(None, f))
        with torch.inference_mode():
            med = time_backends(fns, reps)
        for k, ms in med.items():
            rows.append({"preset": preset, "batch": b, "backend": k, "ms": ms, "ms_per_image": ms / b,
                         "speedup_vs_eager": med["eager"] / ms})
            print(f"# {preset} batch {b}: {k} {ms:.2f} ms ({med['eager'] / ms:.2f}x eager), load "
                  f"{os.getloadavg()[0]:.2f}",
                  flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="digits,cifar10-fast")
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (eager, compile)")
    ap.add_argument("--ort-threads", default="1,2", help="ONNX Runtime intra-op thread counts to try")
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load0 = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.presets.split(","):
            rows += bench_preset(preset, [int(b) for b in args.batches.split(",")],
                                 [int(n) for n in args.ort_threads.split(",")], args.reps,
                                 not args.no_compile, Path(tmp))
    load1 = os.getloadavg()
    print(f"\ncpus {os.cpu_count()}, torch threads {args.threads}, load average before {load0[0]:.2f} "
          f"{load0[1]:.2f} {load0[2]:.2f}, after {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}")
    print("| preset | batch | backend | ms (median) | ms / image | speed-up vs eager |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['preset']} | {r['batch']} | {r['backend']} | {r['ms']:.2f} | {r['ms_per_image']:.2f} | "
              f"{r['speedup_vs_eager']:.2f}x |")
    if args.json:
        Path(args.json).write_text(json.dumps({"load_before": load0, "load_after": load1, "rows": rows},
                                              indent=1))


if __name__ == "__main__":
    main()
