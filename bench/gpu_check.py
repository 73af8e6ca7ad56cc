"""One prepared GPU check: correctness, speed and a short real run, in at most --budget seconds (default 480).

    python bench/gpu_check.py --out $OUT --features .devcarry/fd_a.pt --cifar \
        .devcarry/cifar10-jpeg-q75.tar.gz
    python bench/gpu_check.py --tiny --out /tmp/gc           # CPU, tiny network, a few images (CI, < 1
                                                             # minute)

Stages, in order, each in its own subprocess with its own time budget (a stage that overruns is killed and
keeps what it wrote; a stage that fails does not stop the next; a stage with too little time left is
skipped, saying so). `gpu_check.json` and `gpu_check.md` under --out are rewritten after every stage.
  env           device, versions, peak bf16 FLOP/s used for fractions
  correctness   a CTM's NFE-1 / NFE-2 samples on the device against the CPU (fp32, TF32 off) for the same
                seeds and Philox noise; TF32 and bf16-autocast errors against fp32; Philox kernel bits against
                the CPU
  noise         per-image noise for a 2,048-image batch: ImageNoise (EDM streams) vs Philox on the device
  sampling      NFE-1 / NFE-2 images/s of the paper-size `cifar10` CTM: eager fp32, eager bf16 channels-last,
                the whole fixed-NFE sampler compiled (fullgraph) with mode max-autotune-no-cudagraphs and
                reduce-overhead (CUDA graphs); the teacher's Heun at 35 NFE (eager bf16)
  train         a CTM distillation step (bench/train.py's measurement): images/s, fraction of peak bf16 FLOP/s
                (FlopCounterMode), peak memory, eager then compiled; synchronisations per step (sync debug
                mode)
  fid_pipeline  50,000 samples generated (NFE 1, Philox noise, compiled sampler) + features (fd_a.pt if given,
                else a random stand-in network, said so)
  peers         bench/peers.py's comparisons on the device: one CTM distillation step of the official
                ctm-cifar10 code (--official CHECKOUT) against ctmtool's, and ctmtool's eager against
                compiled; the digits teacher's 35-NFE Heun with k-diffusion's sample_heun (--kdiffusion
                CHECKOUT) against ctmtool's solvers.heun, eager and with the denoiser compiled, at batch 1 and
                64 (ratios, medians)
  real_run      cifar10-fast on the CIFAR-10 JPEGs: teacher, then distillation, then the Frechet distance in
                fd_a.pt features of NFE-1 samples against the training images, in the minutes left
Never asserts a target: it measures and reports.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))  # ctmtool from this checkout, however the script is started
STAGES = ["env", "correctness", "noise", "sampling", "train", "fid_pipeline", "peers", "real_run"]
BUDGET = {"env": 25, "correctness": 40, "noise": 25, "sampling": 180, "train": 100, "fid_pipeline": 75,
          "peers": 90, "real_run": 10**6}
MIN_S = {"env": 5, "correctness": 15, "noise": 10, "sampling": 40, "train": 40, "fid_pipeline": 30,
         "peers": 20, "real_run": 45}
TINY_BUDGET = {s: 60 for s in STAGES}
TINY_MIN = {s: 3 for s in STAGES}
TINY_NET = ["net.unet.model_channels=16", "net.unet.channel_mult=[1,2]", "net.unet.num_blocks=1",
            "net.unet.attn_resolutions=[16]", "ctm.max_steps=2"]
PEAK_BF16 = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense bf16 TFLOP/s (spec sheets, no sparsity)


# ---------------------------------------------------------------------------------------------------------
# Orchestrator


def summary(report: dict) -> dict:
    """Cross-stage figures: Philox noise time against the NFE-1 network time of the same batch size."""
    out = {}
    noise = report["stages"].get("noise", {}).get("noise")
    ips = report["stages"].get("sampling", {}).get("images_per_s", {})
    nfe1 = {k: v for k, v in ips.items() if k.endswith("nfe1")}
    if noise and nfe1:
        best = max(nfe1, key=nfe1.get)
        net_s = noise["batch"] / nfe1[best]
        ph = noise["seconds"]["PhiloxNoise (philox)"]
        out["philox_noise_over_nfe1_time"] = {"ratio": ph / net_s, "noise_ms": 1000 * ph,
                                              "nfe1_batch_ms": 1000 * net_s,
                                             "nfe1_mode": best, "target": "<= 0.1"}
        out["imagenoise_over_nfe1_time"] = noise["seconds"]["ImageNoise (edm)"] / net_s
    return out


def write_report(out_dir: Path, report: dict) -> None:
    report["summary"] = summary(report)
    (out_dir / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))
    lines = [f"# gpu_check ({'tiny, CPU' if report['tiny'] else 'full'})", "",
             f"device: {report['stages'].get('env', {}).get('device_name', '?')}; budget "
             f"{report['budget_s']} s; elapsed {report.get('elapsed_s', 0):.0f} s", "",
             "| stage | status | s | measurement | value |", "|---|---|---|---|---|"]
    for st in STAGES:
        r = report["stages"].get(st)
        if r is None:
            continue
        rows = r.get("rows") or [{"what": r.get("reason", ""), "value": ""}]
        for i, row in enumerate(rows):
            head = f"| {st} | {r['status']} | {r.get('seconds', 0):.0f} |" if i == 0 else "| | | |"
            v = row["value"]
            v = f"{v:.4g}" if isinstance(v, float) else str(v)
            lines.append(f"{head} {row['what']} | {v} {row.get('unit', '')} |")
    r = report["summary"].get("philox_noise_over_nfe1_time")
    if r:
        lines += ["", f"Philox noise for a batch: {r['noise_ms']:.2f} ms = {r['ratio']:.4f} of that batch's "
                      f"NFE-1 time ({r['nfe1_batch_ms']:.1f} ms, {r['nfe1_mode']}; target <= 0.1); "
                      f"ImageNoise: {report['summary']['imagenoise_over_nfe1_time']:.3f} of it."]
    (out_dir / "gpu_check.md").write_text("\n".join(lines) + "\n")


def orchestrate(a, argv: list[str]) -> dict:
    out_dir = Path(a.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    deadline = t0 + a.budget
    report = {"tiny": a.tiny, "budget_s": a.budget, "argv": argv, "inprocess": a.inprocess, "stages": {}}
    budgets, mins = (TINY_BUDGET, TINY_MIN) if a.tiny else (BUDGET, MIN_S)
    if a.tiny and a.tiny_compile:  # CPU Inductor: minutes per compiled mode
        budgets = {**budgets, "sampling": 900}
    only = a.only.split(",") if a.only else STAGES
    for st in STAGES:
        if st not in only:
            continue
        left = deadline - time.time()
        if left < mins[st]:
            report["stages"][st] = {"status": "skipped",
                                    "reason": f"{left:.0f} s left, stage needs {mins[st]} s", "rows": []}
            write_report(out_dir, report)
            continue
        limit = min(budgets[st], left - 2)
        part = out_dir / f".stage-{st}.json"
        part.unlink(missing_ok=True)
        s0 = time.time()
        # tiny CI mode: no interpreter start per stage; budgets are checked between measurements
        if a.inprocess:
            a_st = argparse.Namespace(**{**vars(a), "stage": st, "stage_file": str(part),
                                         "stage_deadline": time.time() + limit})
            try:
                run_stage(a_st)
                status, log = "ok", ""
            except Exception:  # noqa: BLE001 - recorded in the stage file and the report
                status, log = "error", traceback.format_exc()
        else:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--stage", st, "--stage-file", str(part),
                   "--stage-deadline", str(time.time() + limit), *argv]
            env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                    start_new_session=True)
            try:
                log, _ = proc.communicate(timeout=limit)
                status = "ok" if proc.returncode == 0 else "error"
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                log, _ = proc.communicate()
                status = "timeout"
        res = json.loads(part.read_text()) if part.is_file() else {}
        part.unlink(missing_ok=True)
        res.setdefault("rows", [])
        if status == "ok" and res.get("failed"):
            status = "partial"
        res.update(status=status, seconds=time.time() - s0, budget_s=round(limit, 1))
        if status != "ok":
            res["log_tail"] = (log or "")[-2500:]
        report["stages"][st] = res
        report["elapsed_s"] = time.time() - t0
        write_report(out_dir, report)
        print(f"[gpu_check] {st}: {status} in {res['seconds']:.0f} s", flush=True)
    report["elapsed_s"] = time.time() - t0
    write_report(out_dir, report)
    return report


# ---------------------------------------------------------------------------------------------------------
# Stage helpers (run inside the stage subprocess)


class Stage:
    """Results of one stage, written to its file after every measurement."""

    def __init__(self, path: Path, deadline: float):
        self.path, self.deadline, self.data = path, deadline, {"rows": [], "failed": []}
        self.save()

    def left(self) -> float:
        return self.deadline - time.time()

    def row(self, what: str, value, unit: str = "", **extra) -> None:
        self.data["rows"].append({"what": what, "value": value, "unit": unit, **extra})
        self.save()

    def set(self, **kw) -> None:
        self.data.update(kw)
        self.save()

    def attempt(self, what: str, fn, need_s: float = 0.0):
        """Run one measurement; a failure or too little time is recorded and the stage goes on."""
        if self.left() < need_s:
            self.row(what, "skipped", f"({self.left():.0f} s left < {need_s:.0f} s)")
            return None
        try:
            return fn()
        except Exception as err:  # noqa: BLE001 - record and continue with the next measurement
            self.data["failed"].append({"what": what, "error": f"{type(err).__name__}: {err}",
                                        "trace": traceback.format_exc()[-1500:]})
            self.row(what, "error", f"{type(err).__name__}: {str(err)[:150]}")
            return None

    def save(self) -> None:
        self.path.write_text(json.dumps(self.data, default=str))


def device_of(a):
    import torch

    return torch.device("cpu" if a.tiny else a.device)


def sync(dev) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def timed(fn, dev, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    sync(dev)
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync(dev)
    return (time.perf_counter() - t0) / repeats


def preset(a, name: str, extra: list[str] | None = None):
    from ctmtool.config import load_preset

    return load_preset(name, (TINY_NET if a.tiny else []) + (extra or []))


def ctm_model(a, name: str, dev, kind: str = "ctm"):
    """A CTM (or teacher) of the preset with random weights, near-zero layers made non-trivial (seeded)."""
    import torch

    from ctmtool.core.models import build_precond

    torch.manual_seed(0)
    net = build_precond(kind, preset(a, name), (3, 32, 32))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():
            if p.ndim >= 2 and float(p.abs().max()) < 1e-3:  # zero/1e-5-initialised output and s-layers
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return net.to(dev).eval().requires_grad_(False)


def jump_sampler(jump, ctm, nfe: int, batch: int, dev, graphs: bool = False):
    """Gamma-sampling with gamma = 0 (Kim et al. 2024, Alg. 1: s = sigma_{i+1}) through `jump(x, t, s)` with
    per-sample level tensors, so one compiled graph serves every step and every NFE."""
    import torch

    from ctmtool.core.schedules import ctm_default_schedule

    levels = [torch.full((batch,), float(v), device=dev)
              for v in ctm_default_schedule(nfe, ctm.sigma_min, ctm.sigma_max)]

    def run(x):
        if graphs:
            torch.compiler.cudagraph_mark_step_begin()
        for i in range(nfe):
            x = jump(x, levels[i], levels[i + 1])
        return x

    return run


def sampler(ctm, nfe: int):
    from ctmtool.core.sampling import gamma_sample
    from ctmtool.core.schedules import ctm_default_schedule

    sched = [float(s) for s in ctm_default_schedule(nfe, ctm.sigma_min, ctm.sigma_max)]
    return lambda x: gamma_sample(ctm, x, sched)


# ---------------------------------------------------------------------------------------------------------
# Stages


def stage_env(a, st: Stage) -> None:
    import platform

    import torch

    dev = device_of(a)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({os.cpu_count()} cores)"
    peak = a.peak_tflops or next((v for k, v in PEAK_BF16.items() if k in name), None)
    try:
        import triton

        tv = triton.__version__
    except ImportError:
        tv = None
    st.set(device_name=name, torch=torch.__version__, triton=tv, python=platform.python_version(),
           cuda=torch.version.cuda, peak_bf16_tflops=peak)
    st.row("device", name)
    st.row("torch / triton / cuda", f"{torch.__version__} / {tv} / {torch.version.cuda}")
    st.row("peak bf16 TFLOP/s used for fractions", peak if peak else "unknown (pass --peak-tflops)")
    if dev.type == "cuda":
        st.row("memory", torch.cuda.get_device_properties(dev).total_memory / 2**30, "GiB")
    for mod in ("pydantic", "cleanfid"):
        try:
            __import__(mod)
            st.row(f"import {mod}", "ok")
        except Exception as err:  # noqa: BLE001
            st.row(f"import {mod}", f"missing ({type(err).__name__})")


def stage_correctness(a, st: Stage) -> None:
    import torch

    from ctmtool.core.noise import PhiloxNoise
    from ctmtool.kernels.philox import philox_bits

    dev = device_of(a)
    n = 4 if a.tiny else 16
    seeds = list(range(1000, 1000 + n))
    name = "cifar10-fast"
    cpu_ctm = ctm_model(a, name, torch.device("cpu"))
    dev_ctm = ctm_model(a, name, dev)
    s = torch.tensor(seeds)

    def bits():
        ref = philox_bits(s, 3072, 0)
        same_torch = torch.equal(philox_bits(s.to(dev), 3072, 0).cpu(), ref)
        st.row("philox words, torch reference on device == CPU", same_torch)
        if PhiloxNoise(seeds, (1,), dev).triton:
            from ctmtool.kernels.philox_triton import philox_bits_triton

            st.row("philox words, Triton kernel == CPU reference",
                   torch.equal(philox_bits_triton(s.to(dev), 3072, 0).cpu(), ref))
        z = PhiloxNoise(seeds, (3, 32, 32), dev)().cpu()
        st.row("philox normals, device vs CPU max |diff|",
               float((z - PhiloxNoise(seeds, (3, 32, 32))()).abs().max()))

    st.attempt("philox", bits)
    for nfe in (1, 2):
        def one(nfe=nfe):
            x = PhiloxNoise(seeds, (3, 32, 32))() * cpu_ctm.sigma_max
            with torch.no_grad():
                ref = sampler(cpu_ctm, nfe)(x)
                prev = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
                torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
                fp32 = sampler(dev_ctm, nfe)(x.to(dev)).cpu()
                torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
                tf32 = sampler(dev_ctm, nfe)(x.to(dev)).cpu()
                torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = prev
                with torch.autocast(dev.type, dtype=torch.bfloat16):
                    bf16 = sampler(dev_ctm, nfe)(x.to(dev)).float().cpu()
            scale = float(ref.abs().max())
            st.row(f"NFE-{nfe} {dev.type} fp32 vs CPU fp32, max |diff| (sample max |x| {scale:.3g})",
                   float((fp32 - ref).abs().max()))
            st.row(f"NFE-{nfe} TF32 vs CPU fp32, max |diff|", float((tf32 - ref).abs().max()))
            st.row(f"NFE-{nfe} bf16 autocast vs CPU fp32, max |diff|", float((bf16 - ref).abs().max()))
            st.row(f"NFE-{nfe} bf16 autocast vs CPU fp32, RMS diff", float((bf16 - ref).pow(2).mean().sqrt()))

        st.attempt(f"NFE-{nfe}", one)


def stage_noise(a, st: Stage) -> None:
    import torch

    sys.path.insert(0, str(HERE))
    import noise as noise_bench

    dev = device_of(a)
    batch = 64 if a.tiny else 2048
    r = noise_bench.run(batch, (3, 32, 32), dev, repeats=2 if a.tiny else 10)
    st.set(noise=r)
    for k, v in r["seconds"].items():
        st.row(f"{k}, batch {batch}", 1000 * v, f"ms (x{r['ratio_to_imagenoise'][k]:.3f} of ImageNoise)")
    st.row("philox backend", r["philox_backend"])
    del torch


def stage_sampling(a, st: Stage) -> None:
    import torch

    dev = device_of(a)
    name = "cifar10"
    batch = 4 if a.tiny else a.batch
    ctm = ctm_model(a, name, dev)
    st.set(preset=name, batch=batch, params_m=sum(p.numel() for p in ctm.parameters()) / 1e6)
    x = torch.randn(batch, 3, 32, 32, device=dev) * ctm.sigma_max
    reps = 1 if a.tiny else 5
    results = st.data.setdefault("images_per_s", {})

    def measure(mode: str, fn_for_nfe, ctx_dtype=None, need: float = 0.0):
        for nfe in (1, 2):
            def go(nfe=nfe):
                fn = fn_for_nfe(nfe)
                if dev.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(dev)
                t_first = time.perf_counter()
                with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16,
                                                     enabled=ctx_dtype is not None):
                    fn(x)
                    sync(dev)
                    first = time.perf_counter() - t_first
                    sec = timed(lambda: fn(x), dev, reps, warmup=1)
                ips = batch / sec
                results[f"{mode} nfe{nfe}"] = ips
                mem = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else float("nan")
                st.row(f"CTM NFE-{nfe} {mode}, batch {batch}", ips,
                       f"images/s (first call {first:.1f} s, peak {mem:.2f} GiB)")

            st.attempt(f"CTM NFE-{nfe} {mode}", go, need if nfe == 1 else need / 3)

    measure("eager fp32", lambda nfe: sampler(ctm, nfe))
    ctm_bf = ctm_model(a, name, dev)
    ctm_bf.net.to(dtype=torch.bfloat16, memory_format=torch.channels_last)
    xcl = x.contiguous(memory_format=torch.channels_last)
    x = xcl
    measure("eager bf16-cl", lambda nfe: sampler(ctm_bf, nfe), torch.bfloat16)
    # the teacher's deterministic Heun sampler at 35 NFE (18 levels), eager bf16 channels-last; before the
    # compiled
    # modes, whose compile (and max-autotune's autotuning) may use up the stage's budget
    from ctmtool.core.sampling import teacher_sample, teacher_schedule

    def heun():
        teacher = ctm_model(a, name, dev, kind="teacher")
        teacher.net.to(dtype=torch.bfloat16, memory_format=torch.channels_last)
        steps = 3 if a.tiny else 18
        tb = batch if a.tiny else a.teacher_batch
        sched = teacher_schedule(type("M", (), {"net": teacher})(), steps)
        xt = x[:tb]
        with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16):
            sec = timed(lambda: teacher_sample(teacher, xt, sched), dev, 1, warmup=1)
        st.row(f"teacher Heun {2 * steps - 1} NFE, eager bf16-cl, batch {tb}", tb / sec, "images/s")

    st.attempt("teacher heun", heun, 10)

    if a.tiny and not a.tiny_compile:
        st.row("compiled modes", "skipped", "(tiny: CPU Inductor compile is slow; --tiny-compile runs them)")
    else:
        with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16):
            eager = {nfe: sampler(ctm_bf, nfe)(x).float() for nfe in (1, 2)}
        for mode in a.compile_modes.split(","):
            torch._dynamo.reset()
            jump = torch.compile(ctm_bf.jump, mode=mode, fullgraph=True)  # one graph: levels are tensors
            graphs = mode == "reduce-overhead" and dev.type == "cuda"
            measure(f"compile {mode}", lambda nfe, jump=jump,
                    graphs=graphs: jump_sampler(jump, ctm_bf, nfe, batch, dev, graphs), torch.bfloat16,
                    need=60 if not a.tiny else 0)

            def check(jump=jump, mode=mode, graphs=graphs):
                for nfe in (1, 2):
                    with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16):
                        y = jump_sampler(jump, ctm_bf, nfe, batch, dev, graphs)(x).float()
                    st.row(f"NFE-{nfe} compile {mode} vs eager bf16-cl, max |diff|",
                           float((y - eager[nfe]).abs().max()))

            st.attempt(f"compile {mode} check", check, 5)


def stage_train(a, st: Stage) -> None:
    import torch

    sys.path.insert(0, str(HERE))
    import host_syncs
    import train as train_bench

    dev = device_of(a)
    name = "cifar10"
    peak = a.peak_tflops or next((v for k, v in PEAK_BF16.items() if dev.type == "cuda"
                                  and k in torch.cuda.get_device_name(dev)), 989.0)
    batch = 2 if a.tiny else 256
    base = argparse.Namespace(set=TINY_NET if a.tiny else [], batch=batch, micro_batch=None,
                              compile_aux=False, warmup=1 if a.tiny else 3, steps=1 if a.tiny else 8,
                              peak_tflops=peak)

    def syncs():
        obj, batches = host_syncs.build("cifar10-fast", dev, 8 if a.tiny else 64, TINY_NET if a.tiny else [])
        if dev.type == "cuda":
            r = host_syncs.cuda_report(obj, batches, 3)
            st.row("CTM step synchronisations (cuda sync debug mode)", r["syncs_per_step"],
                   f"per step; sites {r['sites']}")
        else:
            r = host_syncs.cpu_report(obj, batches, 1)
            st.row("CTM step host reads that sync on CUDA (CPU classification)", r["device_syncs_per_step"],
                   f"per step; unclassified sites {r['unclassified']}")
        st.set(host_syncs=r)

    st.attempt("host syncs", syncs, 10)

    for comp in ("off", "on"):
        def go(comp=comp):
            r = train_bench.bench_one(name, "ctm", argparse.Namespace(**vars(base), compile=comp), dev)
            st.data.setdefault("ctm_step", []).append(r)
            st.row(f"CTM step, compile {comp} (applies on CUDA), batch {batch}", r["images_per_s"],
                   f"images/s; {100 * r['frac_peak']:.1f}% of {peak:g} TFLOP/s; {r['gflop_per_image']:.0f} "
                   f"GFLOP/image; k mean {r['k_timed_mean']}; peak {r['peak_gib']:.2f} GiB")
            if dev.type == "cuda":
                torch.cuda.empty_cache()

        st.attempt(f"CTM step compile {comp}", go, 0 if comp == "off" else 60)


def stage_peers(a, st: Stage) -> None:
    """Ratios to the peers on the device (bench/peers.py): medians of interleaved calls."""
    import torch

    sys.path.insert(0, str(HERE))
    import peers

    dev = device_of(a)
    compiled = dev.type == "cuda" or a.tiny_compile  # CPU Inductor takes minutes: only when asked
    reps = 2 if a.tiny else 7
    official = peers.load_official(a.official) if a.official else None
    if official is None:
        st.row("official ctm-cifar10 step", "skipped", "(no --official CHECKOUT)")
    unet = dict(model_channels=8, channel_mult=[1], num_blocks=1, attn_resolutions=[8],
                dropout=0.1) if a.tiny \
        else peers.UNET
    batch, res = (2, 16) if a.tiny else (128, 32)

    def distill():
        steps = peers.distill_steps(official, batch, 1 if a.tiny else 4, dev, unet, res, compiled=compiled)
        med = peers.interleaved(steps, reps)
        st.set(distill_ms={k: 1000 * v for k, v in med.items()})
        for k, v in med.items():
            st.row(f"CTM step {k}, batch {batch}, {res}x{res}", round(1000 * v, 2),
                   "ms" + ("" if official is None else f"; ratio to official {v / med['official']:.3f}")
                   + ("" if "ctmtool compiled" not in med
                      else f"; compiled / eager {med['ctmtool compiled'] / med['ctmtool']:.3f}"
                      if k == "ctmtool compiled" else ""))

    st.attempt("distillation step vs official", distill, 10)

    def heun():
        from ctmtool.core import solvers
        from ctmtool.core.models import load_model
        from ctmtool.core.schedules import karras_sigmas
        from ctmtool.jobs.export import random_checkpoint

        kd = peers.load_kdiffusion(a.kdiffusion) if a.kdiffusion else None
        model = load_model(random_checkpoint(work_dir(a) / "digits-teacher.safetensors", "digits", "teacher"),
                           device=dev)
        net = model.net
        sig = torch.cat([karras_sigmas(18, model.sigma_min, model.sigma_max, 7.0),
                         torch.zeros(1, dtype=torch.float64)])
        fast = types_ns(denoise=torch.compile(net.denoise)) if compiled else None
        for b in (1, 64):
            z = torch.randn(b, *model.data_shape,
                            generator=torch.Generator().manual_seed(b)).to(dev) * model.sigma_max
            fns = {}
            if kd is not None:
                s32 = sig.float().to(dev)
                fns["k-diffusion sample_heun"] = lambda z=z, s32=s32: kd.sample_heun(
                    lambda x, s: net.denoise(x, s, None), z, s32, disable=True)
            fns["ctmtool eager"] = lambda z=z: solvers.heun(net, z, sig)
            if fast is not None:
                fns["ctmtool compiled denoiser"] = lambda z=z: solvers.heun(fast, z, sig)
            timed_fns = {k: (lambda f=f: (f(), peers.sync(dev))) for k, f in fns.items()}
            with torch.no_grad():
                med = peers.interleaved(timed_fns, reps, warmup=2)
            base = med.get("k-diffusion sample_heun", med["ctmtool eager"])
            for k, v in med.items():
                st.row(f"Heun 35 NFE digits teacher, batch {b}: {k}", round(1000 * v, 2),
                       f"ms; ratio to {'k-diffusion' if kd else 'ctmtool eager'} {v / base:.3f}")
        if kd is None:
            st.row("k-diffusion sample_heun", "skipped", "(no --kdiffusion CHECKOUT)")

    st.attempt("teacher Heun vs k-diffusion", heun, 3)


def types_ns(**kw):
    import types

    return types.SimpleNamespace(**kw)


def work_dir(a) -> Path:
    """Scratch space outside --out (the device tool brings back only a few small files from $OUT)."""
    import tempfile

    d = Path(a.work or Path(tempfile.gettempdir()) / "ctmtool-gpu-check")
    d.mkdir(parents=True, exist_ok=True)
    return d


def feature_net(a, dev):
    """(extractor, description): fd_a.pt when given and present, else a random-weight TorchScript stand-in."""
    import torch

    from ctmtool.metrics.features import make_extractor

    if a.features and Path(a.features).is_file():
        return make_extractor(a.features, dev), f"fd_a.pt ({a.features})"
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(64, 128, 3, stride=2), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(128, 256))

    class Wrap(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net(x.float() / 127.5 - 1)

    path = work_dir(a) / "standin_features.pt"
    torch.jit.script(Wrap()).save(str(path))
    return make_extractor(str(path), dev), "STAND-IN (random conv net; fd_a.pt not found)"


def stage_fid_pipeline(a, st: Stage) -> None:
    import torch

    from ctmtool.core.noise import PhiloxNoise
    from ctmtool.data.base import to_uint8_images
    from ctmtool.metrics.frechet import Moments

    dev = device_of(a)
    n, batch = (16, 8) if a.tiny else (a.fid_n, a.batch)
    extractor, what = feature_net(a, dev)
    st.row("features", what)
    ctm = ctm_model(a, "cifar10", dev)
    if dev.type == "cuda":
        ctm.net.to(dtype=torch.bfloat16, memory_format=torch.channels_last)
    batch = next(b for b in range(batch, 0, -1) if n % b == 0)  # equal batches: one compiled shape
    jump = ctm.jump if a.tiny else torch.compile(ctm.jump, fullgraph=True)
    fn = jump_sampler(jump, ctm, 1, batch, dev)
    st.row("batch", batch)

    def run(n_run: int):
        moments, t_gen, t_feat = Moments(), 0.0, 0.0
        for lo in range(0, n_run, batch):
            t0 = time.perf_counter()
            seeds = torch.arange(lo, min(n_run, lo + batch))
            with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
                x = fn(PhiloxNoise(seeds, (3, 32, 32), dev)() * ctm.sigma_max)
            u8 = to_uint8_images(x.float().clamp(-1, 1))
            sync(dev)
            t1 = time.perf_counter()
            moments.update(extractor(u8))
            sync(dev)
            t_gen, t_feat = t_gen + t1 - t0, t_feat + time.perf_counter() - t1
        return moments.n, t_gen, t_feat

    t0 = time.perf_counter()
    st.attempt("warm-up (compile)", lambda: run(batch))
    st.row("warm-up incl. compile", time.perf_counter() - t0, "s")

    def full():
        got, tg, tf = run(n)
        how = "eager sampler (tiny)" if a.tiny else "jump compiled (default mode), bf16-cl"
        st.row(f"{got} samples NFE-1 (philox noise, {how}) + features", tg + tf,
               f"s (generate {tg:.2f} s, features {tf:.2f} s; {got / (tg + tf):.0f} images/s)")

    st.attempt("fid pipeline", full, 10)


def cifar_folder(a, dest: Path, limit: int | None) -> Path:
    """Extract train/ of the CIFAR-10 JPEG tar (the first `limit` images when given) into dest."""
    import tarfile

    dest.mkdir(parents=True, exist_ok=True)
    got = 0
    with tarfile.open(a.cifar, "r:*") as tar:
        for m in tar:
            parts = Path(m.name).parts
            if not m.isfile() or "train" not in parts or not m.name.lower().endswith(".jpg"):
                continue
            rel = Path(*parts[parts.index("train") + 1:])
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            (dest / rel).write_bytes(tar.extractfile(m).read())
            got += 1
            if limit and got >= limit:
                break
    return dest


def stage_real_run(a, st: Stage) -> None:
    import torch

    from ctmtool.cli.common import Reporter
    from ctmtool.core.models import load_model
    from ctmtool.data.images import load_images
    from ctmtool.jobs.plan import plan_sampling
    from ctmtool.metrics.fid import compute_stats, dataset_batches, fid_from_model
    from ctmtool.train.run import train

    dev = device_of(a)
    if not a.cifar or not Path(a.cifar).is_file():
        st.row("data", "skipped", f"(no CIFAR-10 JPEG tar at --cifar {a.cifar})")
        return
    import shutil

    work = work_dir(a) / "real_run"
    shutil.rmtree(work, ignore_errors=True)  # a fresh data folder and run directories
    t0 = time.perf_counter()
    folder = cifar_folder(a, work / "train", 64 if a.tiny else None)
    data = load_images(folder)
    st.row("data", f"{len(data)} images {tuple(data.shape)}",
           f"(extract + decode {time.perf_counter() - t0:.1f} s)")
    extractor, what = feature_net(a, dev)
    st.row("features", what)
    left = st.left() - (10 if a.tiny else 35)  # kept for sampling + features + Frechet distance
    minutes = max(left, 0) / 2 / 60
    over = ["teacher.compile=false", "distill.compile=false", f"teacher.minutes={minutes:.3f}",
            f"distill.minutes={minutes:.3f}", "teacher.kimg=100000", "distill.kimg=100000"]
    # an MLP on the images: the end-of-run sample grids (35-NFE Heun for the teacher) stay fast on a CPU
    if a.tiny:
        over += ["teacher.batch=8", "distill.batch=4", "teacher.lr_rampup_kimg=0", "teacher.kimg=0.016",
                 "distill.kimg=0.008", "net.kind=mlp", "net.mlp.hidden=32", "net.mlp.depth=1",
                 "net.mlp.emb=16"]
    p = preset(a, "cifar10-fast", over)
    rep = Reporter(quiet=False)
    res = {}

    def teacher():
        r = train(p, "teacher", work / "teacher", dev, rep, data=data, force=True)
        res["teacher"] = r
        st.row("teacher", f"{r.kimg:.1f} kimg in {r.seconds:.0f} s",
               f"({r.images_per_second:.0f} images/s, last {r.last})")

    def student():
        r = train(p, "distill", work / "ctm", dev, rep, teacher=str(res["teacher"].checkpoint), data=data,
                  force=True)
        res["ctm"] = r
        st.row("CTM distillation", f"{r.kimg:.1f} kimg in {r.seconds:.0f} s",
               f"({r.images_per_second:.0f} images/s, last {r.last})")

    def fd():
        n = 64 if a.tiny else min(10000, len(data))
        ref = compute_stats(dataset_batches(data, 1024, n=n), extractor, dev, source="train")
        model = load_model(res["ctm"].checkpoint, "ema", dev)
        plan = plan_sampling(model, nfe=1, gamma=0.0, noise="edm", batch=8 if a.tiny else 1024)
        out = fid_from_model(model, ref, extractor, n=n, plan=plan, seed=0, device=dev)
        st.row(f"Frechet distance, CTM NFE-1 vs training images, n={n}", float(out["fid"]),
               f"({what}; {out['seconds']:.0f} s)")

    st.attempt("teacher", teacher, 5)
    if "teacher" in res:
        st.attempt("distill", student, 5)
    if "ctm" in res:
        st.attempt("frechet distance", fd, 3)
    del torch


def run_stage(a) -> None:
    st = Stage(Path(a.stage_file), float(a.stage_deadline))
    if os.environ.get("GPU_CHECK_HANG_STAGE") == a.stage:  # test hook: a stage that never returns
        st.row("hang (test hook)", "started")
        time.sleep(3600)
    fn = globals()[f"stage_{a.stage}"]
    try:
        fn(a, st)
    except Exception as err:  # noqa: BLE001 - the stage's own error, recorded for the report
        st.data["failed"].append({"what": a.stage, "error": f"{type(err).__name__}: {err}",
                                  "trace": traceback.format_exc()[-2000:]})
        st.save()
        raise


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder for gpu_check.json and gpu_check.md")
    ap.add_argument("--budget", type=float, default=None,
                    help="seconds for everything (default 480; tiny 50)")
    ap.add_argument("--tiny", action="store_true", help="CPU, tiny network, a few images (CI)")
    ap.add_argument("--work", default=None,
                    help="scratch folder for data, checkpoints (default: $TMPDIR/ctmtool-gpu-check)")
    ap.add_argument("--tiny-compile", action="store_true",
                    help="with --tiny: also run the (slow) CPU compile modes")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--features", default=None,
                    help="fd_a.pt (TorchScript); missing: a stand-in, reported as such")
    ap.add_argument("--cifar", default=None, help="cifar10-jpeg-q75.tar.gz for the real run")
    ap.add_argument("--batch", type=int, default=2048, help="sampling batch")
    ap.add_argument("--teacher-batch", type=int, default=256, help="batch of the 35-NFE Heun measurement")
    ap.add_argument("--fid-n", type=int, default=50000)
    ap.add_argument("--compile-modes", default="reduce-overhead,max-autotune-no-cudagraphs",
                    help="torch.compile modes of the sampling stage (reduce-overhead = CUDA graphs)")
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help="peak dense bf16 TFLOP/s (default: by device name)")
    ap.add_argument("--only", default=None, help="comma-separated stages to run (default: all)")
    ap.add_argument("--official", default=None,
                    help="peers: a checkout of Kim-Dongjun/ctm-cifar10 (.devcarry/ctm-cifar10)")
    ap.add_argument("--kdiffusion", default=None,
                    help="peers: a checkout of crowsonkb/k-diffusion (.devcarry/k-diffusion)")
    ap.add_argument("--inprocess", action=argparse.BooleanOptionalAction, default=None,
                    help="run stages in this process (default with --tiny; overruns cannot then be killed)")
    ap.add_argument("--stage", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--stage-file", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--stage-deadline", default=None, help=argparse.SUPPRESS)
    argv = list(sys.argv[1:] if argv is None else argv)
    a = ap.parse_args(argv)
    if a.budget is None:
        a.budget = 55 if a.tiny else 480
    if a.inprocess is None:
        a.inprocess = a.tiny
    if a.stage:
        os.environ.setdefault("OMP_NUM_THREADS", "1" if a.tiny else str(os.cpu_count() or 1))
        run_stage(a)
        return
    report = orchestrate(a, argv)
    bad = [s for s, r in report["stages"].items() if r["status"] not in ("ok",)]
    print(f"[gpu_check] wrote {Path(a.out) / 'gpu_check.json'} and gpu_check.md; not ok: {bad or 'none'}")


if __name__ == "__main__":
    main()
