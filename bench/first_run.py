"""The README's main job end to end, as a user runs it: wall time of each stage and the one-step quality.

    python bench/first_run.py                               # teacher, distill, sample in a temp dir
    python bench/first_run.py --seed 1 --keep runs/fr1      # another training seed; keep the run
    python bench/first_run.py --analytic                    # distill from the exact mixture denoiser instead
    python bench/first_run.py --set distill.batch=512       # try a recipe change (applied to both stages)

Runs `python -m ctmtool teacher --preset toy`, `ctmtool distill --preset toy --teacher <run>/teacher` and
`ctmtool sample --ckpt <run>/ctm --nfe 1 --n 4096 --out <run>/toy-ctm-nfe1.png` in subprocesses (the same
thread settings as the user's shell: set OMP_NUM_THREADS to pin them), then scores the CTM: the NFE-1 mean
log-density gap to true samples (bench/toy_quality.py's measure, --n samples, seeds 0..n-1, with the standard
error) and the trajectory error against exact ODE jumps. Prints one JSON object; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from toy_quality import gap  # noqa: E402

from ctmtool.core.analytic import ExactTrajectory  # noqa: E402
from ctmtool.core.models import analytic_model, load_model  # noqa: E402
from ctmtool.core.schedules import ctm_grid  # noqa: E402
from ctmtool.metrics.quality import make_scorer  # noqa: E402
from ctmtool.metrics.trajectory import trajectory_error  # noqa: E402


def stage(name: str, args: list[str], cwd: Path) -> tuple[dict, float]:
    """Run one ctmtool command with --json; (its JSON result, wall seconds, CPU seconds), both including
    start-up. CPU seconds (user + system of the child) hardly depend on other jobs: with one thread they are
    the wall time the stage would take on an idle core."""
    r0, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.time()
    proc = subprocess.run([sys.executable, "-m", "ctmtool", *args, "--json"], cwd=cwd, capture_output=True,
                          text=True)
    wall, r1 = time.time() - t0, resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"{name} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return json.loads(proc.stdout), wall, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="toy")
    ap.add_argument("--seed", type=int, default=0,
                    help="teacher.seed and distill.seed (0: the preset's own run)")
    ap.add_argument("--set", action="append", default=[], help="preset override for both stages (repeatable)")
    ap.add_argument("--analytic", action="store_true",
                    help="skip the teacher; distill from the exact denoiser")
    ap.add_argument("--keep", help="run in this folder and keep it (default: a temporary folder)")
    ap.add_argument("--n", type=int, default=65536, help="samples for the gap")
    ap.add_argument("--nfe", default="1", help="CTM NFEs to score (gamma 0), comma-separated")
    a = ap.parse_args()

    tmp = None if a.keep else tempfile.TemporaryDirectory(prefix="first-run-")
    root = Path(a.keep or tmp.name).resolve()
    root.mkdir(parents=True, exist_ok=True)
    sets = [*a.set, *([f"teacher.seed={a.seed}", f"distill.seed={a.seed}"] if a.seed else [])]
    setargs = [x for s in sets for x in ("--set", s)]
    out: dict = {"preset": a.preset, "seed": a.seed, "overrides": a.set, "dir": str(root),
                 "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "load_before": os.getloadavg()}
    teacher_args: list[str] = []
    if not a.analytic:
        res, wall, cpu = stage("teacher", ["teacher", "--preset", a.preset, "--run-dir",
                                           str(root / "teacher"), *setargs], root)
        out["teacher"] = {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
                          **{k: res[k] for k in ("steps", "kimg", "seconds", "stopped_by")}}
        teacher_args = ["--teacher", str(root / "teacher")]
    res, wall, cpu = stage("distill",
                           ["distill", "--preset", a.preset, "--run-dir", str(root / "ctm"), *teacher_args,
                                       *setargs], root)
    out["distill"] = {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
                      **{k: res[k] for k in ("steps", "kimg", "seconds", "stopped_by")}}
    png = root / "toy-ctm-nfe1.png"
    _, wall, cpu = stage("sample", ["sample", "--ckpt", str(root / "ctm"), "--nfe", "1", "--n", "4096",
                                    "--out", str(png)], root)
    out["sample"] = {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "png": str(png)}
    out["training_seconds"] = round(out.get("teacher", {}).get("seconds", 0) + out["distill"]["seconds"], 1)
    for key in ("wall_s", "cpu_s"):
        out[f"job_{key}"] = round(sum(out[k][key] for k in ("teacher", "distill", "sample") if k in out), 1)
    out["load_after"] = os.getloadavg()

    m = load_model(root / "ctm")
    preset = m.preset  # with the --set overrides the run used
    gmm = analytic_model(preset).net
    base = make_scorer("logp", preset)[2]["true_samples_logp"]
    out["gap"] = {f"nfe{k}": gap(m, gmm, base, a.n, 1, solver="gamma", nfe=k, gamma=0.0)
                  for k in (int(v) for v in a.nfe.split(","))}
    x0 = gmm.sample(512, torch.Generator().manual_seed(9))
    tr = trajectory_error(m.net, ExactTrajectory(gmm, steps=128), x0, ctm_grid(preset),
                          torch.Generator().manual_seed(1))
    out["trajectory"] = {k: v for k, v in tr.items() if k != "per_t"}
    if tmp is not None:
        out["png_note"] = "temporary folder removed; pass --keep DIR to keep the picture"
        tmp.cleanup()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
