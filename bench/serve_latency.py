"""The served page measured as a user sees it: input event to painted frame, in headless Chromium.

    python bench/serve_latency.py                                   # digits and cifar10-fast, random weights
    python bench/serve_latency.py --ckpt runs/digits/ctm --backends auto,torch --strokes 100
    python bench/serve_latency.py --tiny                            # seconds: what tests/bench runs

For each model (a checkpoint given with --ckpt, else `--presets` networks with random weights: the time does
not depend on them) and backend, starts `python -m ctmtool serve` in its own process (as a user does), opens
the page with `?timing=1` in headless Chromium (Playwright, `ctmtool.serve.harness`) and reports, from the
page's own record (`window.__ctmtoolTimings`, times on the page's performance.now() clock):
- the display's rate: requestAnimationFrame callbacks per second of the idle page;
- stroke -> paint, per pointer event of `--strokes` strokes: from the event's `timeStamp` to the end of the
  rendering update of the first animation frame that drew an answer carrying it (a task posted from that
  frame's rAF callback runs once the frame is rendered, as `requestPostAnimationFrame` would; a double rAF
  would add the wait for the next frame's start, an upper bound also reported as "next frame");
- slider -> paint, per key press on the strength slider, the same way;
- where the time goes: from the input to the answer's arrival on the page, and the server's share of it;
- the walk's frames painted per second (animation frames that drew a new walk image) against the display rate;
and the goals of issue 26: digits stroke -> paint median at most 1.5 frames, walk at the display's rate;
cifar10-fast stroke -> paint median at most 50 ms. Load averages before and after. Measures, asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from ctmtool.jobs.export import random_checkpoint
from ctmtool.serve import free_port
from ctmtool.serve.harness import find_browser, launch, measure_paint, open_page, stats

TINY_MLP = ["net.mlp.hidden=64", "net.mlp.depth=2", "net.mlp.emb=32"]
GOAL_FRAMES = {"digits": 1.5}      # stroke -> paint median, in display frames
GOAL_MS = {"cifar10-fast": 50.0}   # stroke -> paint median, in ms
WALK_SHARE = 0.95                  # "walk at the display's rate": painted frames/s at least this share of it


def serve(ckpt: str, backend: str, threads: int, timeout: float = 300.0):
    """`python -m ctmtool serve` on a free port in its own process, waited on until /info answers."""
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.Popen([sys.executable, "-m", "ctmtool", "serve", "--ckpt", ckpt, "--port", str(port),
                             "--backend", backend, "--threads", str(threads)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    t0 = time.monotonic()
    while True:
        try:
            info = json.loads(urllib.request.urlopen(url + "info", timeout=5).read())
            return proc, url, info
        except OSError:
            if proc.poll() is not None or time.monotonic() - t0 > timeout:
                proc.kill()
                raise SystemExit(f"error: ctmtool serve did not start:\n{proc.stdout.read()}") from None
            time.sleep(0.3)


def serve_here(ckpt: str, backend: str, threads: int):
    """The app in a thread of this process (--in-process: no start-up of a second Python; the test)."""
    import torch

    from ctmtool.core.models import load_model
    from ctmtool.serve import BackgroundServer
    from ctmtool.serve.app import create_app
    from ctmtool.serve.engine import Engine

    torch.set_num_threads(threads)
    engine = Engine(load_model(ckpt), backend=backend, threads=threads)
    srv = BackgroundServer(create_app(engine))
    return srv, srv.url, engine.info()


def goals(row: dict) -> dict:
    """Each goal of issue 26 that applies to the row's preset: (measured, goal, met)."""
    out = {}
    hz, preset = row["display_hz"], row["preset"]
    if preset in GOAL_FRAMES:
        limit = GOAL_FRAMES[preset] * 1000 / hz
        out["stroke_paint"] = (row["stroke_paint_ms_median"], limit, row["stroke_paint_ms_median"] <= limit)
        out["walk_fps"] = (row["walk_painted_fps"], hz, row["walk_painted_fps"] >= WALK_SHARE * hz)
    if preset in GOAL_MS:
        out["stroke_paint"] = (row["stroke_paint_ms_median"], GOAL_MS[preset],
                               row["stroke_paint_ms_median"] <= GOAL_MS[preset])
    return out


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="digits,cifar10-fast", help="random-weight CTMs of these presets")
    ap.add_argument("--ckpt", action="append", default=[],
                    help="a checkpoint to measure (repeatable; replaces --presets)")
    ap.add_argument("--backends", default="auto", help="auto (ONNX Runtime if it verifies), onnxruntime, "
                                                        "torch")
    ap.add_argument("--threads", type=int, default=1, help="network threads (torch and ONNX Runtime)")
    ap.add_argument("--strokes", type=int, default=100, help="strokes drawn (each --moves pointer moves)")
    ap.add_argument("--moves", type=int, default=8)
    ap.add_argument("--presses", type=int, default=30, help="key presses on the strength slider")
    ap.add_argument("--walk-seconds", type=float, default=5.0)
    ap.add_argument("--in-process", action="store_true",
                    help="serve from a thread of this process, not `ctmtool serve`")
    ap.add_argument("--tiny", action="store_true",
                    help="a tiny digits MLP in process, 3 strokes, 3 presses, a 1 s walk")
    ap.add_argument("--json", default=None)
    ap.add_argument("--screenshot", default=None, help="PNG of the page after the first model's measurement")
    args = ap.parse_args(argv)
    if args.tiny:
        args.strokes, args.presses, args.walk_seconds = 3, 3, 1.0
        args.backends, args.in_process = "torch", True
    from playwright.sync_api import sync_playwright

    browser_path = find_browser()
    if browser_path is None:
        raise SystemExit("error: no Chromium found: apt-get install chromium, or set CTMTOOL_CHROMIUM")
    rows = []
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as pw:
        if args.tiny:
            ckpts = [("digits (tiny MLP, random weights)", "digits",
                      random_checkpoint(Path(tmp) / "tiny.safetensors", "digits", "ctm", overrides=TINY_MLP))]
        else:
            ckpts = [(Path(c).stem, None, c) for c in args.ckpt] or [
                (f"{p} (random weights)", p, random_checkpoint(Path(tmp) / f"{p}.safetensors", p, "ctm"))
                for p in args.presets.split(",")]
        browser = launch(pw, browser_path)
        for name, preset, ck in ckpts:
            for backend in args.backends.split(","):
                proc, url, info = (serve_here if args.in_process else serve)(str(ck), backend, args.threads)
                try:
                    page = open_page(browser, url, timeout_ms=120000, timing=True)
                    r = measure_paint(page, strokes=args.strokes, moves=args.moves, presses=args.presses,
                                      walk_s=args.walk_seconds)
                    r["errors"] = stats(page)["errors"]
                    if args.screenshot and not rows:
                        page.fill("#seed", "7")
                        page.dispatch_event("#seed", "input")
                        time.sleep(1.0)
                        page.screenshot(path=args.screenshot)
                    page.close()
                finally:
                    if args.in_process:
                        proc.stop()
                    else:
                        proc.terminate()
                        proc.wait(timeout=30)
                row = {"model": name, "preset": preset or info["preset"],
                       "shape": "x".join(map(str, info["data_shape"])), "backend": info["backend"], **r}
                row["goals"] = {k: {"measured": m, "goal": g, "met": ok}
                                for k, (m, g, ok) in goals(row).items()}
                rows.append(row)
                print("#", json.dumps(row), flush=True)
        browser.close()
    load1 = os.getloadavg()
    print(f"\ncpus {os.cpu_count()}, network threads {args.threads}, load average before "
          f"{load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}, after {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}")
    print("| model | backend | display Hz | stroke -> paint ms, median / p90 (events) "
          "| -> next frame, median | -> answer arrived / server ms, medians "
          "| slider -> paint ms, median / p90 "
          "| walk painted frames/s (all frames/s) | model ms / walk frame | goals |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        met = ", ".join(f"{k} {v['measured']:.1f} vs {v['goal']:.1f}: {'met' if v['met'] else 'NOT met'}"
                        for k, v in r["goals"].items())
        print(f"| {r['model']} | {r['backend']} | {r['display_hz']:.1f} | "
              f"{r['stroke_paint_ms_median']:.1f} / "
              f"{r['stroke_paint_ms_p90']:.1f} ({r['stroke_events']} in {r['strokes']} strokes) | "
              f"{r['stroke_next_ms_median']:.1f} | "
              f"{r['stroke_arrive_ms_median']:.1f} / {r['stroke_server_ms_median']:.1f} | "
              f"{r['slider_paint_ms_median']:.1f} / {r['slider_paint_ms_p90']:.1f} | "
              f"{r['walk_painted_fps']:.1f} ({r['walk_raf_hz']:.1f}) | {r['walk_model_ms_median']:.2f} | "
              f"{met} |")
    if args.json:
        out = {"load_before": load0, "load_after": load1, "rows": rows}
        Path(args.json).write_text(json.dumps(out, indent=1))
    return rows


if __name__ == "__main__":
    main()
