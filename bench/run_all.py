"""Run every benchmark (flops, sampling, train, fid_pipeline), each in its own subprocess, and collect one
table.

    python bench/run_all.py                          # sizes chosen for the device (tiny on the CPU)
    python bench/run_all.py --only flops,sampling    # a subset
    python bench/run_all.py --out-dir $OUT           # where <device>.json and <device>.md go (default
                                                     # bench/results)

Writes <out-dir>/<device>.json (every sub-benchmark's JSON, its command, exit code, time and output tail) and
<out-dir>/<device>.md (markdown tables), and prints the tables. A failing or timed-out sub-benchmark is
reported and the others still run. Figures are measured, never asserted; the targets from the GPU-speed
issue are printed next to the figures they concern for reading, not checked.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
TARGETS = ("targets (H100, GPU-speed issue): cifar10 NFE-1 sampling >= 12,000 images/s; CTM distillation "
           "training >= 40% of peak bf16 FLOP/s; 50k-sample FID pipeline < 60 s")


def plans(gpu: bool, features: str, presets: str) -> dict[str, list[str]]:
    """Sub-benchmark argument lists (after `python bench/<name>.py`); the JSON path is appended later."""
    if gpu:
        return {
            "flops": ["--presets", presets],
            "sampling": ["--presets", presets, "--batch", "2048", "--device", "cuda", "--modes",
                         "eager,bf16-cl,compile", "--nfes", "1,2", "--teacher-steps", "18", "--repeats", "5"],
            "train": ["--presets", presets, "--kinds", "teacher,ctm", "--device", "cuda", "--steps", "10",
                      "--warmup", "3"],
            "fid_pipeline": ["--preset", presets.split(",")[0], "--n", "50000", "--batch", "2048", "--nfe",
                             "1", "--device", "cuda", "--bf16", "--channels-last", "--features", features],
        }
    fast = "cifar10-fast"  # CPU smoke sizes: only the small network except for FLOP counting
    return {
        "flops": ["--presets", presets],
        "sampling": ["--presets", fast, "--batch", "4", "--device", "cpu", "--modes", "eager", "--nfes",
                     "1,2", "--teacher-steps", "3", "--repeats", "1"],
        "train": ["--presets", fast, "--kinds", "teacher,ctm", "--device", "cpu", "--batch", "2", "--steps",
                  "1", "--warmup", "0", "--set", "ctm.max_steps=1"],
        "fid_pipeline": ["--preset", fast, "--n", "16", "--batch", "8", "--nfe", "1", "--device", "cpu",
                         "--features", features],
    }


def run_one(name: str, args: list[str], out_json: Path, timeout: float) -> dict:
    cmd = [sys.executable, str(HERE / f"{name}.py"), *args]
    stdout_json = name == "fid_pipeline"  # fid_pipeline prints its JSON on stdout
    cmd += ["--json"] if stdout_json else ["--json", str(out_json)]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
        rc, out = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as err:
        rc = "timeout"
        out = ((err.stdout or b"").decode(errors="replace") if isinstance(err.stdout, bytes)
               else (err.stdout or ""))
    wall = time.perf_counter() - t0
    result = None
    if rc == 0:
        try:
            if stdout_json:
                result = json.loads([ln for ln in out.splitlines() if ln.startswith("{")][-1])
            else:
                result = json.loads(out_json.read_text())
        except (OSError, ValueError, IndexError) as err:
            rc = f"no JSON ({err})"
    print(f"[{name}] rc={rc} in {wall:.1f} s: {' '.join(cmd[1:])}", flush=True)
    if rc != 0:
        print("\n".join(out.splitlines()[-15:]), flush=True)
    return {"cmd": " ".join(cmd[1:]), "rc": rc, "wall_s": round(wall, 1), "result": result,
            "tail": out[-3000:]}


def fmt(v, nd: int = 1) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:,.{nd}f}" if isinstance(v, float) else str(v)


def tables(res: dict) -> str:
    lines = []
    r = res.get("flops", {}).get("result")
    if r:
        lines += ["### Forward FLOPs (FlopCounterMode)", "",
                  "| preset | net | call | params (M) | GFLOP / image / forward |", "|---|---|---|---|---|"]
        lines += [f"| {x['preset']} | {x['kind']} | {x['call']} | {x['params_m']:.2f} | "
                  f"{x['gflop_per_image']:.2f} |"
                  for x in r["rows"]]
        lines.append("")
    r = res.get("sampling", {}).get("result")
    if r:
        lines += [f"### Sampling ({r['device']})", "",
                  "| preset | mode | what | batch | images/s | peak GiB |", "|---|---|---|---|---|---|"]
        lines += [f"| {x['preset']} | {x['mode']} | {x['what']} | {x['batch']} | {fmt(x['images_per_s'])} | "
                  f"{fmt(x['peak_gib'], 2)} |" for x in r["rows"]]
        lines.append("")
    r = res.get("train", {}).get("result")
    if r:
        lines += [f"### Training steps ({r['device']}; fraction of {r['peak_tflops']:g} TFLOP/s)", "",
                  "| preset | kind | batch | precision | compile | images/s | GFLOP / image | k mean | "
                  "TFLOP/s | of peak | peak GiB |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for x in r["rows"]:
            if "error" in x:
                lines.append(f"| {x['preset']} | {x['kind']} | error: {x['error']} |||||||||")
                continue
            lines.append(f"| {x['preset']} | {x['kind']} | {x['batch']} | {x['precision']} | "
                         f"{'yes' if x['compile'] else 'no'} | {fmt(x['images_per_s'])} | "
                         f"{fmt(x['gflop_per_image'])} | {fmt(x['k_timed_mean'])} | {fmt(x['tflops'], 3)} | "
                         f"{100 * x['frac_peak']:.2f}% | {fmt(x['peak_gib'], 2)} |")
        lines.append("")
    r = res.get("fid_pipeline", {}).get("result")
    if r:
        lines += ["### FID pipeline (generate + quantise + features)", "",
                  "| preset | n | batch | features | generate s | features s | total s | images/s |",
                  "|---|---|---|---|---|---|---|---|", f"| {r['preset']} | {r['n']} | {r['batch']} | "
                                                       f"{Path(r['features']).name} | {r['generate_s']} | "
                                                       f"{r['features_s']} | {r['total_s']} | "
                                                       f"{fmt(r['img_s'])} |", ""]
    bad = [f"{k} (rc {v['rc']})" for k, v in res.items() if v["rc"] != 0]
    if bad:
        lines += ["Failed: " + ", ".join(bad), ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--only", default="flops,sampling,train,fid_pipeline")
    ap.add_argument("--presets", default="cifar10,cifar10-fast")
    ap.add_argument("--features", default=str(REPO.parent / "shared" / "data" / "fd-cifar10" / "fd_a.pt"),
                    help="feature network for fid_pipeline (TorchScript file, or 'inception' when its "
                         "weights are present)")
    ap.add_argument("--out-dir", default=str(HERE / "results"))
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per sub-benchmark")
    a = ap.parse_args()
    gpu = a.device.startswith("cuda")
    label = re.sub(r"[^A-Za-z0-9._-]+", "-",
                   torch.cuda.get_device_name(0) if gpu else "cpu").strip("-").lower()
    out_dir = Path(a.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plan = plans(gpu, a.features, a.presets)
    res = {}
    for name in a.only.split(","):
        res[name] = run_one(name, plan[name], out_dir / f".{label}.{name}.json", a.timeout)
    md = tables(res)
    head = (f"device: {label}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
            + ("" if gpu else " (CPU smoke sizes: not performance figures)"))
    print("\n" + head + "\n" + TARGETS + "\n\n" + md)
    (out_dir / f"{label}.json").write_text(json.dumps({"device": label, "torch": torch.__version__,
                                                       "gpu": gpu, "targets": TARGETS, "benchmarks": res},
                                                      indent=1))
    (out_dir / f"{label}.md").write_text(f"{head}\n\n{TARGETS}\n\n{md}\n")
    for name in res:
        (out_dir / f".{label}.{name}.json").unlink(missing_ok=True)
    print(f"wrote {out_dir / (label + '.json')} and {out_dir / (label + '.md')}")


if __name__ == "__main__":
    main()
