"""The papers' claims in miniature on digits and the toy mixture: every row a `ctmtool` command.

    python bench/claims.py train  [--rows teacher,ctm,...] [--out DIR] [--tiny]   # trains (resumable, row by
                                                                                  # row)
    python bench/claims.py score  [--rows ...] [--out DIR] [--tiny]               # samples + metrics ->
                                                                                  # DIR/scores.json
    python bench/claims.py table  [--out DIR]                                      # markdown tables from
                                                                                   # scores.json
    python bench/claims.py all --tiny --out DIR                                    # the CI smoke run (about
                                                                                   # 40 s)

Rows (digits unless named toy_/gctm_): `teacher` (EDM, Heun 18 steps = 35 NFE); `ctm` (CTM + DSM, no GAN);
`ctm_more` and `ctm_gan` (both resumed from `ctm`'s checkpoint for the same extra images, the second with the
GAN term and the scratch discriminator: phase 2 of the recipe against its no-GAN control); `cd` (the same
training with s fixed at sigma_min: consistency distillation); `ctm_nodsm` (DSM weight 0); `ctm_self` (no
teacher: the target net's own jumps); `toy_ctm` (the toy mixture's CTM, for the gamma figure); `gctm_sr`
(x2 super-resolution of digits from 4x4, paired coupling); `gctm_ind` / `gctm_ot` (noise -> digits with the
independent / minibatch-OT coupling, checkpoints along the way for FD against steps).

Every command is printed and logged under DIR/<row>/; a row whose DIR/<row>/done.json exists is skipped, an
interrupted row continues from its newest checkpoint (--auto-resume). ctmtool is only called through its CLI
(`python -m ctmtool`), so this script does not depend on the package's module layout.

Metrics (score): a small classifier (an MLP on the 64 pixels, trained here on the 1,437-image training split,
held-out accuracy on the 360-image test split reported) gives feature FD (its 128-wide penultimate layer) and
an Inception-Score analogue exp(E KL(p(y|x) || p(y))); pixel FD (64 dims, 0..255) beside it. References: the
training split. Each model: n = 2,000 samples for each of 3 sampling-seed sets (image seeds 0-1999, 2000-3999,
4000-5999), mean and
spread (min..max); the real-vs-real baseline is the held-out split at its size n = 360, and models are also
scored at n = 360 (the first 360 of each set) so that baseline is at the same n (scikit-learn ships only 1,797
real digits, so no real set of 2,000 exists apart from the training reference).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Run lengths in thousands of images. FULL: ~1 h 15 min on one core of the 2-core development machine (see
# docs/results.md); every compared pair of rows sees the same images.
FULL = dict(teacher=1000.0, ctm=200.0, extra=100.0, toy_ctm=1792.0, gctm=150.0, gctm_ckpt=25.0,
            n=2000, seeds=3, nfes=(1, 2, 4, 8), gammas=(0.0, 0.5, 1.0), toy_n=65536)
TINY = dict(teacher=2.0, ctm=1.0, extra=0.5, toy_ctm=1.0, gctm=1.0, gctm_ckpt=0.5,
            n=200, seeds=1, nfes=(1, 2), gammas=(0.0, 1.0), toy_n=4096)
DIGIT_ROWS = ["teacher", "ctm", "cd", "ctm_gan", "ctm_more", "ctm_nodsm", "ctm_self"]
OTHER_ROWS = ["toy_ctm", "gctm_sr", "gctm_ind", "gctm_ot"]
TINY_ROWS = ["teacher", "ctm"]


def ctmtool(*args: str) -> list[str]:
    return [sys.executable, "-m", "ctmtool", *args]


def row_commands(row: str, out: Path, L: dict) -> list[list[str]]:
    """The ctmtool command(s) that train `row` into out/row (resumable with --auto-resume)."""
    d, t = str(out / row), str(out / "teacher")
    dev = ["--device", "cpu"]
    base = ["distill", "--preset", "digits", "--run-dir", d, *dev]
    a, b = L["ctm"], L["ctm"] + L["extra"]
    if row == "teacher":
        return [ctmtool("teacher", "--preset", "digits", "--run-dir", d, "--kimg", str(L["teacher"]),
                        "--auto-resume", *dev)]
    if row == "ctm":
        return [ctmtool(*base, "--teacher", t, "--kimg", str(a), "--auto-resume")]
    if row == "ctm_more":  # phase 2's control: the same extra images without the GAN term
        return [ctmtool(*base, "--teacher", t, "--kimg", str(b), "--resume")]
    if row == "ctm_gan":  # phase 2: resumed from the CTM checkpoint with the GAN term (scratch discriminator)
        return [ctmtool(*base, "--teacher", t, "--kimg", str(b), "--resume", "--set", "gan.enabled=true")]
    if row == "cd":
        return [ctmtool(*base, "--teacher", t, "--kimg", str(a), "--auto-resume", "--set",
                        "ctm.s_sampler=sigma_min")]
    if row == "ctm_nodsm":
        return [ctmtool(*base, "--teacher", t, "--kimg", str(a), "--auto-resume", "--set",
                        "ctm.dsm_weight=0")]
    if row == "ctm_self":
        return [ctmtool(*base, "--kimg", str(a), "--auto-resume", "--set", "ctm.teacher=self")]
    if row == "toy_ctm":  # the exact mixture denoiser as the teacher (the toy preset's default)
        return [ctmtool("distill", "--preset", "toy", "--run-dir", d, "--kimg", str(L["toy_ctm"]),
                        "--auto-resume", *dev)]
    if row in ("gctm_sr", "gctm_ind", "gctm_ot"):
        return [ctmtool(*gctm_args(row, d, L), *dev)]
    raise SystemExit(f"error: unknown row {row!r}; rows: {', '.join(DIGIT_ROWS + OTHER_ROWS)}")


def gctm_args(row: str, d: str, L: dict) -> list[str]:
    """GCTM rows: `distill` with bench/claims-digits-gctm.toml (a [gctm] preset trains a GCTM)."""
    extra = {"gctm_sr": ["gctm.coupling='corrupt:sr2'", "gctm.source_noise=0.05", "gctm.grid=5",
                         "gctm.max_steps=4", "ctm.dsm_weight=0.1"],
             "gctm_ind": ["gctm.coupling='independent'"], "gctm_ot": ["gctm.coupling='ot'"]}[row]
    sets = [x for e in extra for x in ("--set", e)]
    return ["distill", "--preset", str(ROOT / "bench" / "claims-digits-gctm.toml"), "--run-dir", d,
            "--kimg", str(L["gctm"]), "--auto-resume", "--set", f"distill.ckpt_every_kimg={L['gctm_ckpt']}",
            *sets]


def seed_phase2(row: str, out: Path) -> None:
    """ctm_more / ctm_gan start from ctm's newest checkpoint (copied once, so each branch resumes on its
    own)."""
    dst = out / row
    if row not in ("ctm_more", "ctm_gan") or any(dst.glob("ckpt-*")):
        return
    src = sorted((out / "ctm").glob("ckpt-*.safetensors"))
    if not src:
        raise SystemExit(f"error: {row} resumes from row ctm, which has no checkpoint in {out / 'ctm'}; "
                         "train ctm first")
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src[-1], dst / src[-1].name)


def train(rows: list[str], out: Path, L: dict) -> None:
    for row in rows:
        done = out / row / "done.json"
        if done.exists():
            print(f"[claims] {row}: done already ({done})", flush=True)
            continue
        seed_phase2(row, out)
        (out / row).mkdir(parents=True, exist_ok=True)
        t0 = time.time()
        for cmd in row_commands(row, out, L):
            print(f"[claims] {row}: {' '.join(cmd[1:])}", flush=True)
            with open(out / row / "train.log", "a") as log:
                log.write(f"$ {' '.join(cmd[1:])}\n")
                log.flush()
                r = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=_env())
            if r.returncode != 0:
                raise SystemExit(f"error: row {row} failed (exit {r.returncode}); see "
                                 f"{out / row / 'train.log'}")
        done.write_text(json.dumps({"row": row, "seconds": round(time.time() - t0, 1),
                                    "commands": [" ".join(c[1:]) for c in row_commands(row, out, L)]},
                                   indent=1))
        print(f"[claims] {row}: {time.time() - t0:.0f} s", flush=True)


def _env() -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    return env


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stage", choices=["train", "score", "table", "all"])
    ap.add_argument("--rows", help="comma-separated rows (default: all; --tiny: " + ",".join(TINY_ROWS) + ")")
    ap.add_argument("--out", default="runs/claims", help="folder of the row run directories and scores.json")
    ap.add_argument("--tiny", action="store_true", help="seconds-long rows and few samples (CI)")
    a = ap.parse_args()
    L = TINY if a.tiny else FULL
    out = Path(a.out)
    rows = a.rows.split(",") if a.rows else (TINY_ROWS if a.tiny else DIGIT_ROWS + OTHER_ROWS)
    unknown = [r for r in rows if r not in DIGIT_ROWS + OTHER_ROWS]
    if unknown:
        raise SystemExit(f"error: unknown row {unknown[0]!r}; rows: {', '.join(DIGIT_ROWS + OTHER_ROWS)}")
    if a.stage in ("train", "all"):
        train(rows, out, L)
    if a.stage in ("score", "all"):
        from claims_score import score  # bench/claims_score.py

        score(rows, out, L, tiny=a.tiny)
    if a.stage in ("table", "all"):
        from claims_score import table

        print(table(out))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
