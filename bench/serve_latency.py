"""Interactive latency of `ctmtool serve`, measured in headless Chromium by the test harness.

    python bench/serve_latency.py                                   # digits and cifar10-fast, random weights
    python bench/serve_latency.py --ckpt runs/digits/ctm --backends auto,torch --threads 2

For each model (a checkpoint given with --ckpt, else `--presets` networks with random weights: the time does
not depend on them) and each backend, serves the app on a free localhost port, opens the page in headless
Chromium (`ctmtool.serve.harness`) and reports: the median time from a pointer move of a stroke to the new
SDEdit image drawn, the median from a slider key press to the new image drawn, the latent walk's frames
drawn per second, and the median model time per walk frame; with the load average before and after.
Never asserts anything: it measures.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from ctmtool.core.models import load_model
from ctmtool.jobs.export import random_checkpoint
from ctmtool.serve import BackgroundServer
from ctmtool.serve.app import create_app
from ctmtool.serve.engine import Engine
from ctmtool.serve.harness import find_browser, launch, measure, open_page


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="digits,cifar10-fast", help="random-weight CTMs of these presets")
    ap.add_argument("--ckpt", action="append", default=[],
                    help="a checkpoint to measure (repeatable; replaces --presets)")
    ap.add_argument("--backends", default="auto",
                    help="auto (ONNX Runtime if it verifies), onnxruntime, torch")
    ap.add_argument("--threads", type=int, default=1, help="network threads (torch and ONNX Runtime)")
    ap.add_argument("--walk-seconds", type=float, default=5.0)
    ap.add_argument("--presses", type=int, default=20)
    ap.add_argument("--json", default=None)
    ap.add_argument("--screenshot", default=None, help="PNG of the page after the first model's measurement")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    browser_path = find_browser()
    if browser_path is None:
        raise SystemExit("no Chromium found: apt-get install chromium, or set CTMTOOL_CHROMIUM")
    torch.set_num_threads(args.threads)
    rows = []
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as pw:
        ckpts = [(Path(c).stem, c) for c in args.ckpt] or [
            (f"{p} (random weights)", random_checkpoint(Path(tmp) / f"{p}.safetensors", p, "ctm"))
            for p in args.presets.split(",")]
        browser = launch(pw, browser_path)
        for name, ck in ckpts:
            model = load_model(ck)
            for backend in args.backends.split(","):
                engine = Engine(model, backend=backend, threads=args.threads,
                                log=lambda m: print("#", m, flush=True))
                srv = BackgroundServer(create_app(engine))
                try:
                    page = open_page(browser, srv.url, timeout_ms=120000)
                    r = measure(page, presses=args.presses, walk_s=args.walk_seconds)
                    if args.screenshot and not rows:
                        page.fill("#seed", "7")
                        page.dispatch_event("#seed", "input")
                        time.sleep(1.0)
                        page.screenshot(path=args.screenshot)
                    page.close()
                finally:
                    srv.stop()
                rows.append({"model": name, "shape": "x".join(map(str, model.data_shape)),
                             "backend": engine.backend, **r})
                print("#", rows[-1], flush=True)
        browser.close()
    load1 = os.getloadavg()
    print(f"\ncpus {os.cpu_count()}, network threads {args.threads}, load average before {load0[0]:.2f} "
          f"{load0[1]:.2f} {load0[2]:.2f}, after {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}")
    print("| model | shape | backend | stroke -> image (median ms) | slider -> image (median ms) | walk "
          "frames/s | model ms / frame |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['shape']} | {r['backend']} | {r['stroke_ms_median']:.1f} "
              f"({r['stroke_events']} events) | {r['slider_ms_median']:.1f} | {r['walk_fps']:.1f} | "
              f"{r['walk_model_ms_median']:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"load_before": load0, "load_after": load1, "rows": rows},
                                              indent=1))


if __name__ == "__main__":
    main()
