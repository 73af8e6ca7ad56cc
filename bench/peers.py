"""ctmtool against its peers, side by side in one process: ratios ctmtool / peer (run by hand, never in CI).

    OMP_NUM_THREADS=1 python bench/peers.py --official /tmp/ctm-cifar10 --kdiffusion /tmp/k-diffusion
    python bench/peers.py --only heun,likelihood --kdiffusion /tmp/k-diffusion --reps 9

Peers are imported from local checkouts given by path (never copied into ctmtool):
  --official  a checkout of Kim-Dongjun/ctm-cifar10 (its `cm` package: EDMPrecond_CTM, KarrasDenoiser,
              update_ema)
  --kdiffusion  a checkout of crowsonkb/k-diffusion (only `k_diffusion/sampling.py` and `utils.py` are loaded,
                without the package `__init__`, whose imports need wandb/accelerate/kornia/clip; `torchsde` is
                stubbed when missing: no SDE sampler is used)

Rows (each side on the same network weights' shapes, inputs and thread count; calls interleaved round-robin,
median over --reps; ratio < 1: ctmtool is faster):
  distill     one CTM distillation step (CTM loss with k teacher Heun steps, DSM loss, backward, RAdam, the
              target and one evaluation EMA), DDPM++ SongUNet 32x32 with CTM's s-layers, batch 8, k fixed
              (--k). The official side runs its own pieces of `KarrasDenoiser.ctm_losses` (get_ctm_estimate,
              heun_solver, get_ctm_target, get_DSM_loss, as bench/xcheck_ctm_cifar10.py checks them) with an
              L2 distance in place of LPIPS on both sides, torch's RAdam (cm/train_util.py) and
              `cm.nn.update_ema`; ctmtool runs its real `TrajectoryObjective.step` (distance l2, k forced to
              the same value).
  heun        the digits teacher (--digits-teacher, else random weights) with 18 Karras levels and a final 0
              (35 NFE): k-diffusion `sample_heun` against ctmtool's `solvers.heun` (eager) and
              `fastpath.heun_program` (built once, reused; its build time printed) at batch 1 and 64.
  likelihood  PF-ODE log-likelihood of 16 digits, dopri5, rtol = atol = 1e-4, one Rademacher probe:
              k-diffusion `log_likelihood` (in sigma) against ctmtool's `ode_log_prob` (in ln sigma), with
              the NFE of each and the mean |difference| of the estimates.
  sample      one-step generation of 256 cifar10-fast images (random weights), end to end through
              `ctmtool.core.sampling.generate`: the old default (eager, the preset's batch of 1,024) against
              the path `ctmtool.core.fastpath.fast_plan` picks for `ctmtool sample`, twice: with an empty
              program cache (tracing inside the time) and with the program that run saved (loaded from the
              cache); ratios fast / default.
Measures only; the load average is printed before and after.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import os
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path

import torch

CLOCK = "wall"  # --clock cpu: the process's CPU time (time.process_time) instead of wall-clock time


def _now() -> float:
    return time.process_time() if CLOCK == "cpu" else time.perf_counter()


def interleaved(fns: dict, reps: int, warmup: int = 1) -> dict[str, float]:
    """Median seconds per call of each function, the calls interleaved round-robin (wall-clock, or the
    process's CPU time with --clock cpu: on a loaded machine the time spent waiting for a core is left
    out)."""
    for f in fns.values():
        for _ in range(warmup):
            f()
    times = {k: [] for k in fns}
    for _ in range(reps):
        for k, f in fns.items():
            t0 = _now()
            f()
            times[k].append(_now() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def profile(label: str, fn, top: int) -> None:
    """The operators that take the time of one call of fn (self CPU time, torch.profiler)."""
    if top <= 0:
        return
    fn()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    print(f"# profile of {label}:")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top))


def report(row: str, med: dict[str, float], peer: str, extra: str = "") -> None:
    base = med[peer]
    for k, v in med.items():
        print(f"{row:11s} {k:28s} {v * 1e3:10.2f} ms   ratio to {peer}: {v / base:.3f} {extra}", flush=True)


# -------------------------------------------------------------------------------------------------- peers

def load_kdiffusion(path: str):
    """k_diffusion.sampling from a checkout, without the package __init__ (its extra dependencies)."""
    root = Path(path).resolve() / "k_diffusion"
    if not (root / "sampling.py").is_file():
        raise SystemExit(f"error: {root / 'sampling.py'} not found; give a checkout of crowsonkb/k-diffusion")
    if importlib.util.find_spec("torchsde") is None:
        sys.modules["torchsde"] = types.ModuleType("torchsde")  # only the SDE samplers use it
    pkg = types.ModuleType("k_diffusion")
    pkg.__path__ = [str(root)]
    sys.modules["k_diffusion"] = pkg
    for name in ("utils", "sampling"):
        spec = importlib.util.spec_from_file_location(f"k_diffusion.{name}", root / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[f"k_diffusion.{name}"] = mod
        spec.loader.exec_module(mod)
        setattr(pkg, name, mod)
    return pkg.sampling


def load_official(path: str):
    root = Path(path).resolve()
    if not (root / "cm" / "karras_diffusion.py").is_file():
        raise SystemExit(f"error: {root}/cm/karras_diffusion.py not found; give a checkout of "
                         "Kim-Dongjun/ctm-cifar10")
    sys.path.insert(0, str(root))
    for name in ("blobfile", "ftfy", "regex"):
        if importlib.util.find_spec(name) is None:
            mod = types.ModuleType(name)
            mod.compile = lambda *a, **k: None
            mod.IGNORECASE = 0
            sys.modules[name] = mod
    import cm.script_util  # noqa: F401  (import order of cm_train.py)
    from cm import karras_diffusion, networks, nn, resample
    return types.SimpleNamespace(KarrasDenoiser=karras_diffusion.KarrasDenoiser,
                                 EDMPrecond_CTM=networks.EDMPrecond_CTM, update_ema=nn.update_ema,
                                 Sampler=resample.HalfLogNormalHalfUniformSampler, mean_flat=nn.mean_flat)


# -------------------------------------------------------------------------------------------------- rows

PROFILE_TOP = 0  # --profile N: the N costliest operators of each side (distill)
UNET = dict(model_channels=32, channel_mult=[1, 2, 2], num_blocks=2, attn_resolutions=[16], dropout=0.1)


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def distill_steps(official, batch: int, k: int, device="cpu", unet: dict | None = None, res: int = 32,
                  compiled: bool = False) -> dict:
    """{name: one training step} for the official code and ctmtool on the same network shape, batch and k
    (each call ends synchronised with the device); with `compiled`, also ctmtool with its network compiled."""
    from ctmtool.config import load_preset
    from ctmtool.core.models import build_precond
    from ctmtool.losses.distances import SquaredL2
    from ctmtool.train.trajectory import ctm_objective

    unet, dev, grid_n = unet or UNET, torch.device(device), 18
    gen = torch.Generator(dev).manual_seed(1)
    x0 = torch.rand(batch, 3, res, res, generator=gen, device=dev) * 2 - 1
    steps = {}
    if official is not None:
        args = types.SimpleNamespace(sigma_data=0.5, sigma_min=0.002, sigma_max=80.0, rho=7,
                                     start_scales=grid_n, target_subtract=False, rescaling=False,
                                     inner_parametrization="edm", outer_parametrization="euler",
                                     training_mode="ctm", time_continuous=False, loss_norm="l2",
                                     large_log=False, self_learn=False, diffusion_mult=0.7,
                                     diffusion_weight_schedule="karras_weight", apply_adaptive_weight=False,
                                     weight_schedule="uniform", weight_schedule_multiplier=1.0)
        kw = dict(img_resolution=res, img_channels=3, label_dim=0, use_fp16=False, sigma_min=0.002,
                  sigma_max=80.0, sigma_data=0.5, model_type="SongUNet", arch="ddpmpp", **unet)
        torch.manual_seed(0)
        o_net = official.EDMPrecond_CTM(training_mode="ctm", **kw).to(dev).train()
        # official target keeps dropout (ctm.dropout)
        o_target = copy.deepcopy(o_net).train().requires_grad_(False)
        o_ema = copy.deepcopy(o_net).eval().requires_grad_(False)
        o_teacher = official.EDMPrecond_CTM(training_mode="", **kw).to(dev).eval().requires_grad_(False)
        diff = official.KarrasDenoiser(args, None, None)
        diff.teacher_model = o_teacher
        diff.diffusion_schedule_sampler = official.Sampler(args)
        # cm/train_util.py: torch's RAdam
        o_opt = torch.optim.RAdam(o_net.parameters(), lr=4e-4, weight_decay=0.0)
        o_params, t_params, e_params = (list(o_net.parameters()), list(o_target.parameters()),
                                        list(o_ema.parameters()))
        cpu_gen = torch.Generator().manual_seed(2)

        def official_step():
            o_opt.zero_grad()
            ind = torch.randint(0, grid_n - k, (batch,), generator=cpu_gen)
            s_ind = ind + k + (torch.rand(batch, generator=cpu_gen) * (grid_n - 1 - (ind + k))).round().long()
            ind, s_ind = ind.to(dev), s_ind.to(dev)
            t, t_dt, s = diff.get_t(ind), diff.get_t(ind + k), diff.get_t(s_ind)
            x_t = x0 + torch.randn(x0.shape, generator=gen, device=dev) * t.view(-1, 1, 1, 1)
            est = diff.get_ctm_estimate(x_t, t, t_dt, s, o_net, o_target, True, "target_model_sg", "model",
                                        False)
            x_t_dt = diff.heun_solver(o_target, x_t, ind, 4, t, t_dt, ctm=True, num_step=k).detach()
            tgt = diff.get_ctm_target(x_t_dt, t_dt, s, o_net, o_target, True, "model_sg")
            l_ctm = official.mean_flat((est - tgt) ** 2)
            l_dsm = diff.get_DSM_loss(o_net, x0, {}, l_ctm, 0, 0)
            (l_ctm.mean() + l_dsm.mean()).backward()
            o_opt.step()
            official.update_ema(t_params, o_params, rate=0.95)
            official.update_ema(e_params, o_params, rate=0.999)
            sync(dev)

        steps["official"] = official_step
        print(f"# distill: official {sum(q.numel() for q in o_net.parameters()) / 1e6:.2f}M parameters",
              flush=True)

    for name, comp in (("ctmtool", False), *((("ctmtool compiled", True),) if compiled else ())):
        p = load_preset("cifar10", ["net.kind=unet", *(f"net.unet.{a}={v}" for a, v in unet.items()),
                                    f"distill.batch={batch}", f"distill.micro_batch={batch}",
                                    f"distill.compile={'true' if comp else 'false'}",
                                    "ctm.distance=l2", "ctm.dsm_weight=1", "ctm.target_ema=0.95",
                                    "ctm.eval_emas=[0.999]", "distill.lr=4e-4", "distill.optimizer=radam",
                                    "gan.enabled=false", f"ctm.grid={grid_n}", "distill.precision=fp32"])
        teacher = build_precond("teacher", p, (3, res, res)).to(dev).eval().requires_grad_(False)
        obj = ctm_objective(p, (3, res, res), dev, teacher, distance=SquaredL2())
        student = obj.net  # the student's preconditioned net; its raw network F is `student.net`
        if comp and dev.type != "cuda":
            student.net.compile()  # the objective compiles F on CUDA only (`maybe_compile`); same call
        obj.terms.new_step = lambda cpu_gen, steps=0, obj=obj: setattr(obj.terms, "k", k)
        batches = [(x0.clone(), None)]

        def mine(obj=obj, batches=batches):
            obj.step(batches, 0.0)
            sync(dev)

        steps[name] = mine
        print(f"# distill: {name} {sum(q.numel() for q in obj.net.parameters()) / 1e6:.2f}M parameters; "
              f"batch {batch}, k {k}, {dev}", flush=True)
    return steps


def row_distill(official, batch: int, k: int, reps: int) -> None:
    steps = distill_steps(official, batch, k)
    profile("official step", steps["official"], PROFILE_TOP)
    profile("ctmtool step", steps["ctmtool"], PROFILE_TOP)
    med = interleaved(steps, reps)
    report("distill", med, "official")


DIGITS_TEACHER: str | None = None  # --digits-teacher CKPT (default: random weights)


def digits_teacher(folder: Path):
    from ctmtool.core.models import load_model
    from ctmtool.jobs.export import random_checkpoint

    if DIGITS_TEACHER:
        return load_model(DIGITS_TEACHER)
    return load_model(random_checkpoint(folder / "digits-teacher.safetensors", "digits", "teacher"))


def row_heun(kd, reps: int, folder: Path) -> None:
    from ctmtool.core import solvers
    from ctmtool.core.fastpath import heun_program
    from ctmtool.core.schedules import karras_sigmas

    model = digits_teacher(folder)
    net = model.net
    sig = torch.cat([karras_sigmas(18, model.sigma_min, model.sigma_max, 7.0),
                     torch.zeros(1, dtype=torch.float64)])
    sig32 = sig.float()
    def den(x, s):
        return net.denoise(x, s, None)

    for b in (1, 64):
        z = torch.randn(b, *model.data_shape, generator=torch.Generator().manual_seed(b)) * model.sigma_max
        t0 = time.perf_counter()
        prog = heun_program(net, sig, z)
        built = time.perf_counter() - t0
        with torch.no_grad():
            ref = kd.sample_heun(den, z, sig32, disable=True)
            diffs = {"eager": float((solvers.heun(net, z, sig) - ref).abs().max()),
                     "program": float((prog(z) - ref).abs().max())}
            med = interleaved({"k-diffusion "
                               "sample_heun": lambda z=z: kd.sample_heun(den, z, sig32, disable=True),
                               "ctmtool solvers.heun (eager)": lambda z=z: solvers.heun(net, z, sig),
                               "ctmtool heun_program (reused)": lambda z=z, prog=prog: prog(z)}, reps)
        report(f"heun b{b}", med, "k-diffusion sample_heun",
               f"(program built once in {built:.2f}s) max|diff to k-diffusion| "
               + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()))


def row_likelihood(kd, reps: int, folder: Path) -> None:
    from sklearn.datasets import load_digits

    from ctmtool.core.likelihood import ODEOptions, ode_log_prob

    model = digits_teacher(folder)
    den = model.net.denoise
    x = torch.as_tensor(load_digits().images[:16], dtype=torch.float32)[:, None] / 8 - 1
    opts = ODEOptions(divergence="hutchinson", probes=1, rtol=1e-4, atol=1e-4)
    out = {}

    def kd_run():
        torch.manual_seed(0)
        lp, info = kd.log_likelihood(lambda xx, s: den(xx, s, None), x, model.sigma_min, model.sigma_max,
                                     atol=1e-4, rtol=1e-4)
        out["kd"] = (lp.detach(), info["fevals"])

    def mine_run():
        est = ode_log_prob(den, x, model.sigma_min, model.sigma_max, None, opts,
                           torch.Generator().manual_seed(0))
        out["mine"] = (est.log_prob, est.nfe)

    med = interleaved({"k-diffusion log_likelihood": kd_run, "ctmtool ode_log_prob": mine_run}, reps)
    gap = float((out["kd"][0] - out["mine"][0]).abs().mean())
    report("likelihood", med, "k-diffusion log_likelihood",
           f"NFE k-diffusion {out['kd'][1]}, ctmtool {out['mine'][1]}; mean |logp diff| {gap:.3g} nats "
           f"(different probes; mean logp {float(out['mine'][0].mean()):.1f})")


def row_sample(reps: int, folder: Path, n: int) -> None:
    import shutil

    from ctmtool.core.fastpath import PROGRAM_CACHE_ENV, fast_plan
    from ctmtool.core.models import load_model
    from ctmtool.core.sampling import generate
    from ctmtool.jobs.export import random_checkpoint
    from ctmtool.jobs.plan import plan_explicit

    model = load_model(random_checkpoint(folder / "c10f-ctm.safetensors", "cifar10-fast", "ctm"))
    plan = plan_explicit(model, nfe=1, batch=model.preset.sample.batch)  # the old default: the preset's batch
    choice, outs, warm = [], {}, folder / "warm-cache"
    old_env = os.environ.get(PROGRAM_CACHE_ENV)

    def default():
        return torch.cat([x for x, _ in generate(model, n, plan, seed=0)])

    def fast(cache: Path):  # end to end: the choice, the program's tracing or loading are inside the time
        os.environ[PROGRAM_CACHE_ENV] = str(cache)
        chosen, program = fast_plan(model, plan, "cpu", n, False, True, choice.append)
        return torch.cat([x for x, _ in generate(model, n, chosen, seed=0, program=program)])

    def cold():  # a fresh, empty cache: the program is traced (on the first batch) and saved
        cache = Path(tempfile.mkdtemp(dir=folder))
        out = fast(cache)
        if not warm.exists():  # untimed: the warm side reads what this run saved
            shutil.copytree(cache, warm)
        return out

    sides = {"default (eager, preset batch)": default, "fast path, tracing inside": cold,
             "fast path, program cached": lambda: fast(warm)}
    times = {k: [] for k in sides}
    try:
        for _ in range(reps):  # no warm-up: each job is tens of seconds
            for k, f in sides.items():
                t0 = _now()
                outs[k] = f()
                times[k].append(_now() - t0)
    finally:
        if old_env is None:
            os.environ.pop(PROGRAM_CACHE_ENV, None)
        else:
            os.environ[PROGRAM_CACHE_ENV] = old_env
    base = outs["default (eager, preset batch)"]
    d = max(float((o - base).abs().max()) for o in outs.values())
    print(f"# sample: {choice[0]}; {choice[1]}; then {choice[-1]}", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    report(f"sample {n}", med, "default (eager, preset batch)", f"max|diff| {d:.1e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--official", help="checkout of Kim-Dongjun/ctm-cifar10")
    ap.add_argument("--kdiffusion", help="checkout of crowsonkb/k-diffusion")
    ap.add_argument("--only", default="distill,heun,likelihood,sample")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--batch", type=int, default=8, help="distill: images per step")
    ap.add_argument("--k", type=int, default=4, help="distill: teacher Heun steps per CTM target")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="wall-clock time, or the process's CPU time (robust to other processes' load)")
    ap.add_argument("--sample-n", type=int, default=256, help="sample: images per job")
    ap.add_argument("--sample-reps", type=int, default=3,
                    help="sample: repeats (each job takes tens of seconds)")
    ap.add_argument("--profile", type=int, default=0,
                    help="distill: print the N costliest operators of each side")
    ap.add_argument("--digits-teacher",
                    help="heun, likelihood: a trained digits teacher checkpoint (default: random "
                    "weights; the likelihood's NFE depends on the weights, the time per NFE does not)")
    a = ap.parse_args()
    global PROFILE_TOP, DIGITS_TEACHER, CLOCK
    PROFILE_TOP, DIGITS_TEACHER, CLOCK = a.profile, a.digits_teacher, a.clock
    torch.set_num_threads(a.threads)
    rows = a.only.split(",")
    kd = load_kdiffusion(a.kdiffusion) if {"heun", "likelihood"} & set(rows) else None
    if "distill" in rows and not a.official:
        raise SystemExit("error: the distill row needs --official PATH (a checkout of "
                         "Kim-Dongjun/ctm-cifar10)")
    official = load_official(a.official) if "distill" in rows else None
    load0 = os.getloadavg()
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} thread(s), {os.cpu_count()} CPUs, "
          f"{CLOCK} clock, "
          f"load {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for r in rows:
            if r == "distill":
                row_distill(official, a.batch, a.k, a.reps)
            elif r == "heun":
                row_heun(kd, a.reps, folder)
            elif r == "likelihood":
                row_likelihood(kd, a.reps, folder)
            elif r == "sample":
                row_sample(a.sample_reps, folder, a.sample_n)
            else:
                raise SystemExit(f"error: unknown row {r!r}; choose from distill, heun, likelihood, sample")
    load1 = os.getloadavg()
    print(f"# load after {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}")


if __name__ == "__main__":
    main()
