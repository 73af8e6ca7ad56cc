"""Scores and tables for bench/claims.py: samples through the `ctmtool` CLI, metrics computed here.

Digits metrics (`Judge`): a small classifier trained here on the 1,437-image training split (an MLP
64-256-128-10 on pixels scaled to [-1, 1], Adam, 60 epochs, 1-pixel random shifts; seed 0, so the same network
every time). Feature FD: Frechet distance between its 128-wide penultimate features (after ReLU) of the
samples and of the training split; IS analogue: exp(E_x KL(p(y|x) || p(y))) (10 is the most, for confident and
balanced classes). Pixel FD: the same distance on the 64 raw pixels, 0..255. The toy mixture's metric is its
exact log-density.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from scipy import linalg

ROOT = Path(__file__).resolve().parents[1]
TOY_TRUE_LOGP = 1.0723  # the toy mixture's negative entropy, 10^6 draws (docs/results.md)
# sampling-seed set j of n samples is image seeds j * n ... (j + 1) * n - 1: one `ctmtool sample` call draws
# all sets


# -------------------------------------------------------------------------------------------- data and metric


def real_digits() -> dict[str, np.ndarray]:
    """scikit-learn's digits as uint8 (N, 8, 8), 0..16 scaled to 0..255 and rounded (ctmtool's digits source);
    train = index not a multiple of 5 (1,437), test = the other 360."""
    from sklearn.datasets import load_digits

    raw = load_digits()
    u8 = np.rint(raw.images * (255 / 16)).clip(0, 255).astype(np.uint8)
    keep = np.arange(len(u8)) % 5 != 0
    return {"train": u8[keep], "test": u8[~keep], "train_y": raw.target[keep], "test_y": raw.target[~keep]}


def _to_input(u8: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(u8.reshape(len(u8), 64).astype(np.float32)) / 127.5 - 1


class Judge:
    """The digits classifier: penultimate features for FD and class probabilities for the IS analogue."""

    def __init__(self, real: dict, epochs: int = 60, cache: Path | None = None):
        g = torch.Generator().manual_seed(0)
        torch.manual_seed(0)
        self.body = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 128),
                                        torch.nn.ReLU())
        self.head = torch.nn.Linear(128, 10)
        net = torch.nn.Sequential(self.body, self.head)
        if cache is not None and cache.exists():  # the same network for every later `score` of this folder
            net.load_state_dict(torch.load(cache, weights_only=True))
        else:
            opt = torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=1e-4)
            x, y = torch.from_numpy(real["train"]), torch.from_numpy(real["train_y"]).long()
            for _ in range(epochs):
                for idx in torch.randperm(len(x), generator=g).split(64):
                    xb = _shift(x[idx], g)
                    loss = torch.nn.functional.cross_entropy(net(_to_input(xb.numpy())), y[idx])
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
            if cache is not None:
                torch.save(net.state_dict(), cache)
        net.eval()
        with torch.no_grad():
            pred = net(_to_input(real["test"])).argmax(1).numpy()
        self.test_accuracy = float((pred == real["test_y"]).mean())
        self.ref_feat = self.features(real["train"])[0]
        self.ref_pix = real["train"].reshape(len(real["train"]), 64).astype(np.float64)

    def export(self, path: Path) -> Path:
        """The feature layer as TorchScript (uint8/float NCHW in [0, 255] -> (B, 128)), for `ctmtool sample
        sweep --metric fd --features` (its figure, and a check of ctmtool's FD against this file's on the same
        features)."""
        if not path.exists():
            module = torch.jit.trace(_Features(self.body).eval(), torch.zeros(2, 1, 8, 8))
            module.save(str(path))
        return path

    @torch.no_grad()
    def features(self, u8: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        f = self.body(_to_input(u8))
        return f.double().numpy(), torch.softmax(self.head(f), 1).double().numpy()

    def measure(self, u8: np.ndarray) -> dict:
        feat, prob = self.features(u8)
        pix = u8.reshape(len(u8), 64).astype(np.float64)
        return {"fd": frechet(feat, self.ref_feat), "pixel_fd": frechet(pix, self.ref_pix),
                "is": inception_score(prob), "nn": nearest_distance(pix, self.ref_pix)}


class _Features(torch.nn.Module):
    def __init__(self, body: torch.nn.Module):
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x.float().reshape(x.shape[0], 64) / 127.5 - 1)


def _shift(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random shifts by -1, 0 or 1 pixel in each direction (zero fill), one per batch."""
    dy, dx = (int(v) for v in torch.randint(-1, 2, (2,), generator=g))
    x = torch.roll(x, (dy, dx), (1, 2))
    if dy:
        x[:, 0 if dy > 0 else -1] = 0
    if dx:
        x[:, :, 0 if dx > 0 else -1] = 0
    return x


def frechet(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to the rows of a and of b."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    with warnings.catch_warnings():  # pixel covariances are singular (the digits' always-blank corner pixels)
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean, _ = linalg.sqrtm(s1 @ s2, disp=False)
    if not np.isfinite(covmean).all():
        eps = np.eye(len(s1)) * 1e-6
        covmean = linalg.sqrtm((s1 + eps) @ (s2 + eps))
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean.real))


def nearest_distance(x: np.ndarray, ref: np.ndarray) -> float:
    """Median Euclidean pixel distance (0..255 scale) from each row of x to its nearest row of ref: far below
    the held-out digits' figure means samples copy training digits (which FD against the training split
    rewards)."""
    d2 = (x**2).sum(1)[:, None] - 2 * x @ ref.T + (ref**2).sum(1)[None]
    return float(np.median(np.sqrt(np.maximum(d2.min(1), 0))))


def inception_score(p: np.ndarray) -> float:
    py = p.mean(0, keepdims=True)
    return float(np.exp((p * (np.log(p + 1e-12) - np.log(py + 1e-12))).sum(1).mean()))


# --------------------------------------------------------------------------------------------- sampling (CLI)


def _env() -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    return env


def cli(args: list[str], log: Path) -> None:
    cmd = [sys.executable, "-m", "ctmtool", *args]
    with open(log, "a") as f:
        f.write(f"$ ctmtool {' '.join(args)}\n")
        f.flush()
        r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=_env())
    if r.returncode != 0:
        raise SystemExit(f"error: `ctmtool {' '.join(args)}` failed (exit {r.returncode}); see {log}")


def draw(ckpt: Path, npz: Path, n: int, seed: int, opts: list[str], log: Path) -> np.ndarray:
    """`ctmtool sample` -> samples (N, H, W) uint8 for images or (N, 2) floats for points; cached in npz."""
    if not npz.exists():
        npz.parent.mkdir(parents=True, exist_ok=True)
        cli(["sample", "--ckpt", str(ckpt), "--n", str(n), "--seed", str(seed), *opts, "-o", str(npz),
             "--device", "cpu", "--force"], log)
    x = np.load(npz)["samples"]
    return x[..., 0] if x.ndim == 4 else x


# --------------------------------------------------------------------------------------------- what is scored


def digits_samplers(row: str, L: dict) -> list[tuple[str, list[str]]]:
    nfes, gammas = L["nfes"], L["gammas"]

    def g(nfe, gamma):
        return (f"nfe{nfe}_g{gamma:g}", ["--nfe", str(nfe), "--gamma", str(gamma)])

    if row == "teacher":
        return [("heun18", ["--solver", "heun", "--steps", "18"])]
    if row == "ctm":  # the gamma figure
        return [g(k, x) for k in nfes for x in (gammas if k > 1 else gammas[:1])]
    if row in ("cd", "ctm_nodsm"):  # many-step quality without s < ... (CD) or without DSM
        return [g(k, 0.0) for k in nfes] + ([g(k, 1.0) for k in nfes if k > 1] if row == "cd" else [])
    return [g(1, 0.0), g(2, 0.0)]


def score(rows: list[str], out: Path, L: dict, tiny: bool = False) -> dict:
    path = out / "scores.json"
    S = json.loads(path.read_text()) if path.exists() else {}

    def save():
        path.write_text(json.dumps(S, indent=1))

    real = real_digits()
    t0 = time.time()
    out.mkdir(parents=True, exist_ok=True)
    judge = Judge(real, epochs=5 if tiny else 60, cache=out / "judge.pt")
    S["judge"] = {"test_accuracy": judge.test_accuracy, "epochs": 5 if tiny else 60}
    S["real"] = {"test_n360": judge.measure(real["test"]), "train_is": judge.measure(real["train"])["is"]}
    S["settings"] = {"n": L["n"], "seeds": L["seeds"], "kimg": {k: L[k] for k in
                     ("teacher", "ctm", "extra", "toy_ctm", "gctm")}}
    save()
    print(f"[claims] judge: held-out accuracy {judge.test_accuracy:.4f} ({time.time() - t0:.0f} s)",
          flush=True)
    n, seeds = L["n"], L["seeds"]
    for row in rows:
        d = out / row
        if not (d / "done.json").exists():
            print(f"[claims] {row}: not trained, skipped", flush=True)
            continue
        # ctmtool's own gamma figure (a PNG beside the JSON)
        if row in ("ctm", "toy_ctm") and f"sweep_{row}" not in S:
            S[f"sweep_{row}"] = sweep(row, d, out, judge, real, L)
            save()
        if row == "toy_ctm":
            continue  # its figure is the sweep's exact log-density (one seed set of toy_n samples)
        if row == "gctm_sr":
            S[row] = score_sr(d, real, judge)
        elif row in ("gctm_ind", "gctm_ot"):
            S[row] = score_curve(d, judge, L)
        else:
            S.setdefault(row, {})
            for name, opts in digits_samplers(row, L):
                if name in S[row]:
                    continue
                xs = draw(d, d / "samples" / f"{name}.npz", n * seeds, 0, opts, d / "score.log")
                per = [{"n2000": judge.measure(x), "n360": judge.measure(x[:360])}
                       for x in np.split(xs, seeds)]
                grid_png(xs[:100], d / f"grid-{name}.png")
                S[row][name] = per
                save()
                print(f"[claims] {row} {name}: FD {np.mean([p['n2000']['fd'] for p in per]):.2f}", flush=True)
            if row != "teacher":  # FD against training steps: NFE 1 at every kept checkpoint
                S[f"curve_{row}"] = score_curve(d, judge, L, grid=False)
        save()
    return S


def sweep(row: str, d: Path, out: Path, judge: Judge, real: dict, L: dict) -> dict:
    """`ctmtool sample sweep`: quality against NFE for each gamma, with its plot. Digits: FD in the judge's
    features (exported as TorchScript) against the training split; its NFE-1 figure is on seed set 0, the same
    samples as this file's own FD, so the two implementations can be compared. Toy: the exact mean
    log-density."""
    nfe, gamma = ",".join(map(str, L["nfes"])), ",".join(f"{g:g}" for g in L["gammas"])
    js = d / "sweep.json"
    if row == "toy_ctm":
        metric = ["--metric", "logp", "--n", str(L["toy_n"])]
    else:
        ref = out / "digits-train.npz"
        if not ref.exists():
            np.savez(ref, samples=real["train"][..., None])
        metric = ["--metric", "fd", "--features", str(judge.export(out / "judge-features.pt")), "--ref",
                  str(ref), "--n", str(L["n"])]
    if not js.exists():
        cli(["sample", "sweep", "--ckpt", str(d), "--nfe", nfe, "--gamma", gamma, *metric, "--seed", "0",
             "-o", str(js), "--device", "cpu", "--force"], d / "score.log")
    return json.loads(js.read_text())


def score_sr(d: Path, real: dict, judge: Judge) -> dict:
    """x2 super-resolution of the 360 held-out digits (4x4 block means, the model's own degradation): PSNR and
    SSIM (scikit-image, 3x3 window) against the clean digits, feature FD against the training split."""
    from skimage.metrics import structural_similarity

    test = d / "samples" / "test.npz"
    test.parent.mkdir(parents=True, exist_ok=True)
    np.savez(test, samples=real["test"][..., None])
    res = {}
    for k in (1, 2, 4):
        npz = d / "samples" / f"sr_nfe{k}.npz"
        if not npz.exists():
            cli(["translate", str(test), "--ckpt", str(d), "--degrade", "--nfe", str(k), "-o", str(npz),
                 "--device", "cpu", "--force"], d / "score.log")
        z = np.load(npz)
        for name, x in ((f"nfe{k}", z["samples"][..., 0]), ("input", z["inputs"][..., 0])):
            if name in res:
                continue
            ref = real["test"].astype(np.float64)
            mse = ((x.astype(np.float64) - ref) ** 2).reshape(len(x), -1).mean(1)
            psnr = float(np.mean(10 * np.log10(255.0**2 / np.maximum(mse, 1e-10))))
            ssim = float(np.mean([structural_similarity(a, b, win_size=3, data_range=255.0) for a, b in
                                  zip(x.astype(np.float64), ref, strict=True)]))
            res[name] = {"psnr": psnr, "ssim": ssim, **judge.measure(x)}
            if name != "input":
                grid_png(np.concatenate([real["test"][:10], z["inputs"][:10, ..., 0], x[:10]]),
                         d / f"grid-sr-{name}.png", 10)
    return res


def score_curve(d: Path, judge: Judge, L: dict, grid: bool = True) -> dict:
    """FD (NFE 1, n samples, seed set 0) of every checkpoint of a GCTM generation run, against images seen."""
    res = {}
    for ck in sorted(d.glob("ckpt-*.safetensors")):
        x = draw(ck, d / "samples" / f"{ck.stem}.npz", L["n"], 0, ["--nfe", "1"], d / "score.log")
        res[ck.stem] = {"step": int(ck.stem.split("-")[1]), **judge.measure(x)}
    if grid:
        grid_png(x[:100], d / "grid-nfe1.png")
    return res


def grid_png(u8: np.ndarray, path: Path, cols: int = 10, scale: int = 4) -> None:
    from PIL import Image

    n = len(u8)
    rows = math.ceil(n / cols)
    canvas = np.full((rows * 9 + 1, cols * 9 + 1), 255, np.uint8)  # a 1-pixel white border between digits
    for i, im in enumerate(u8):
        r, c = divmod(i, cols)
        canvas[1 + r * 9:1 + r * 9 + 8, 1 + c * 9:1 + c * 9 + 8] = 255 - im  # dark ink on white
    Image.fromarray(canvas).resize((canvas.shape[1] * scale, canvas.shape[0] * scale),
                                   Image.NEAREST).save(path)


# ---------------------------------------------------------------------------------------------- tables


def _agg(per: list[dict], size: str, key: str) -> tuple[float, float, float]:
    v = [p[size][key] for p in per]
    return float(np.mean(v)), float(min(v)), float(max(v))


def _fmt(m: tuple[float, float, float], nd: int = 1) -> str:
    return f"{m[0]:.{nd}f} ({m[1]:.{nd}f}-{m[2]:.{nd}f})" if m[1] != m[2] else f"{m[0]:.{nd}f}"


def _mean(S: dict, row: str, name: str, key: str = "fd", size: str = "n2000") -> float | None:
    per = S.get(row, {}).get(name)
    return None if not per or not isinstance(per, list) else float(np.mean([p[size][key] for p in per]))


def table(out: Path) -> str:
    S = json.loads((out / "scores.json").read_text())
    kimg = S["settings"]["kimg"]
    lines = [f"classifier held-out accuracy: {S['judge']['test_accuracy']:.4f} (360 test digits)", "",
             "| row | sampler | feature FD, n = 2,000 | / teacher | IS analogue | pixel FD, n = 2,000 | "
             "feature FD, n = 360 | nearest training digit |", "|---|---|---|---|---|---|---|---|"]
    r = S["real"]["test_n360"]
    teacher = _mean(S, "teacher", "heun18")
    for row in ["teacher", "ctm", "ctm_more", "ctm_gan", "cd", "ctm_nodsm", "ctm_self"]:
        for name, per in S.get(row, {}).items():
            fd = _agg(per, "n2000", "fd")
            ratio = f"{fd[0] / teacher:.2f}x" if teacher else ""
            lines.append(f"| {row} | {name} | {_fmt(fd, 2)} | {ratio} | {_fmt(_agg(per, 'n2000', 'is'), 2)} "
                         f"| {_fmt(_agg(per, 'n2000', 'pixel_fd'), 0)} | {_fmt(_agg(per, 'n360', 'fd'), 2)} "
                         f"| {_agg(per, 'n2000', 'nn')[0]:.0f} |")
    lines.append(f"| real (held-out split) | n = 360 | | | {r['is']:.2f} | | {r['fd']:.2f} (pixel "
                 f"{r['pixel_fd']:.0f}) | {r['nn']:.0f} |")
    lines.append(f"| real (training split, the reference) | n = 1,437 | | | {S['real']['train_is']:.2f} | | "
                 "| |")

    gammas = sorted({float(k.split("_g")[1]) for k in S.get("ctm", {}) if k.startswith("nfe")})
    nfes = sorted({int(k.split("_")[0][3:]) for k in S.get("ctm", {}) if k.startswith("nfe")})
    if gammas:
        lines += ["", "digits gamma figure (row ctm; feature FD, n = 2,000, mean over seed sets):", "",
                  "| NFE | " + " | ".join(f"gamma {g:g}" for g in gammas)
                  + " | ctm_nodsm, gamma 0 | cd, gamma 0 | cd, gamma 1 |",
                  "|---|" + "---|" * (len(gammas) + 3)]
        for k in nfes:
            cells = [_fmt(_agg(S["ctm"][f"nfe{k}_g{g:g}" if k > 1 else "nfe1_g0"], "n2000", "fd"), 2)
                     for g in gammas]
            other = []
            for row, g in (("ctm_nodsm", 0), ("cd", 0), ("cd", 1)):
                per = S.get(row, {}).get(f"nfe{k}_g{g}" if k > 1 else "nfe1_g0")
                other.append(_fmt(_agg(per, "n2000", "fd"), 2) if per else "")
            lines.append(f"| {k} | " + " | ".join(cells + other) + " |")
    sw = S.get("sweep_ctm")
    if sw and "ctm" in S and "nfe1_g0" in S["ctm"]:
        one = next(x["score"] for x in sw["rows"] if x["nfe"] == 1)
        lines += ["", f"`ctmtool sample sweep` on the same features and samples, NFE 1: {one:.6f}; this "
                  f"script's FD of seed set 0: {S['ctm']['nfe1_g0'][0]['n2000']['fd']:.6f}"]
    sw = S.get("sweep_toy_ctm")
    if sw:
        gap = {(x["nfe"], x["gamma"]): x["score"] - TOY_TRUE_LOGP for x in sw["rows"]}
        lines += ["", f"toy mixture (row toy_ctm), mean log p of {sw['n']:,} samples minus the true samples' "
                  f"{TOY_TRUE_LOGP} nats (ctmtool sample sweep --metric logp):", "",
                  "| NFE | " + " | ".join(f"gamma {g:g}" for g in sorted({k[1] for k in gap})) + " |",
                  "|---|---|---|---|"]
        for k in sorted({k[0] for k in gap}):
            lines.append(f"| {k} | " + " | ".join(f"{gap.get((k, g), gap[(1, 0.0)]):+.3f}"
                                                  for g in sorted({k[1] for k in gap})) + " |")
    if "gctm_sr" in S:
        lines += ["",
                  "| GCTM x2 SR from 4x4 (360 held-out digits) | PSNR dB | SSIM | feature FD | pixel FD |",
                  "|---|---|---|---|---|"]
        for k, v in S["gctm_sr"].items():
            lines.append(f"| {k} | {v['psnr']:.2f} | {v['ssim']:.4f} | {v['fd']:.2f} | {v['pixel_fd']:.0f} |")
    curves = [k for k in S if k.startswith("curve_")]
    if curves:
        lines += ["", "FD (NFE 1, n = 2,000, seed set 0) at the kept checkpoints, by optimiser step (batch "
                      "128):", ""]
        lines += [f"- {k[6:]}: " + ", ".join(f"step {v['step']}: {v['fd']:.2f}" for v in S[k].values())
                  for k in curves]
    for row in ("gctm_ind", "gctm_ot"):
        if row in S:
            lines += ["", f"{row} (NFE 1, n = {S['settings']['n']}, seed set 0): "
                      + ", ".join(f"step {v['step']}: FD {v['fd']:.2f}" for v in S[row].values())]
    lines += ["", "goals:"] + goals(S, kimg)
    return "\n".join(lines)


def goals(S: dict, kimg: dict) -> list[str]:
    out = []
    t, g, m = _mean(S, "teacher", "heun18"), _mean(S, "ctm_gan", "nfe1_g0"), _mean(S, "ctm_more", "nfe1_g0")
    if t and g:
        out.append(f"- CTM + GAN NFE 1 / teacher 35 NFE: {g:.2f} / {t:.2f} = {g / t:.2f}x (goal <= 1.0x: "
                   f"{'met' if g <= t else 'not met'}); the no-GAN control at the same images: {m / t:.2f}x"
                   if m else "")
    c, d = _mean(S, "ctm", "nfe1_g0"), _mean(S, "cd", "nfe1_g0")
    if c and d:
        out.append(f"- CTM NFE 1 / CD NFE 1 ({kimg['ctm']:g} kimg each): {c:.2f} / {d:.2f} = {c / d:.2f}x "
                   f"(goal <= 0.7x: {'met' if c <= 0.7 * d else 'not met'})")
    seq = [(k, _mean(S, "ctm", f"nfe{k}_g0" if k > 1 else "nfe1_g0")) for k in (1, 2, 4, 8)]
    seq = [(k, v) for k, v in seq if v is not None]
    if len(seq) > 1:
        worse = [f"{a}->{b}" for (a, x), (b, y) in zip(seq, seq[1:], strict=False) if y > x]
        out.append("- digits gamma 0, FD by NFE: " + ", ".join(f"{k}: {v:.2f}" for k, v in seq)
                   + (f" (worse at {', '.join(worse)})" if worse else " (never worse)"))
    toy = {x["nfe"]: x["score"] - TOY_TRUE_LOGP for x in S.get("sweep_toy_ctm", {}).get("rows", [])
           if x["gamma"] == 0}
    tseq = sorted(toy.items())
    if len(tseq) > 1:
        worse = [f"{a}->{b}" for (a, x), (b, y) in zip(tseq, tseq[1:], strict=False) if abs(y) > abs(x)]
        out.append("- toy gamma 0, gap by NFE: " + ", ".join(f"{k}: {v:+.4f}" for k, v in tseq)
                   + (f" (worse at {', '.join(worse)})" if worse else " (never worse)"))
    ind, ot = S.get("gctm_ind"), S.get("gctm_ot")
    if ind and ot:
        final = list(ind.values())[-1]
        reach = next((v["step"] for v in ot.values() if v["fd"] <= final["fd"]), None)
        out.append(f"- OT reaches independent's final FD {final['fd']:.2f} (step {final['step']}) at step "
                   f"{reach}"
                   + (f" = {reach / final['step']:.2f}x (goal <= 0.7x)" if reach
                      else " (not within the run)"))
    return [x for x in out if x]
