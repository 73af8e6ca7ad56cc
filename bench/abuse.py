"""Re-measure issue 29's audit: hostile inputs and faults run as a user would, each classified as one of
  ok         one `error: ...` line as the last line of stderr, the expected non-zero exit code, no traceback
  traceback  a Python traceback on stderr
  exit0      exit code 0 for a request that cannot be served (or the wrong exit code)
  hang       still running after --timeout seconds (killed)
  lost       data lost or left behind (a checkpoint rotated away, a half-written or stray output)

    python bench/abuse.py [--timeout 60] [--jobs 2] [--keep DIR]

Every case runs `python -m ctmtool ...` in a fresh folder holding small checkpoints, point files and hostile
pickles. Prints one line per case and the counts per class (the audit: 10 tracebacks, 22 exit-0 failures, 3
hangs, 4 lost-data cases before the fixes).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["net.mlp.hidden=16", "net.mlp.depth=1", "net.mlp.emb=8"]


def tiny_checkpoint(path: Path, kind: str = "ctm", preset: str = "toy") -> Path:
    """A small untrained checkpoint (as tests/cli/conftest.py's)."""
    import torch

    from ctmtool.checkpoint import Checkpoint, save_checkpoint
    from ctmtool.config import load_preset
    from ctmtool.core.models import build_precond

    p = load_preset(preset, SMALL)
    torch.manual_seed(0)
    net = build_precond(kind, p, (2,))
    save_checkpoint(path, Checkpoint(kind, p, (2,), groups={"ema": net.state_dict()}))
    return path


def toy_points(path: Path) -> None:
    np.savez(path, samples=np.random.default_rng(0).normal(0, 0.5, (6, 2)).astype(np.float32))

CTM, GCTM = "ctm.safetensors", "gctm.safetensors"
TINY = ["--set", "net.mlp.hidden=16", "--set", "net.mlp.depth=1", "--set", "net.mlp.emb=8", "--set",
        "data.n=512", "--set", "teacher.batch=32", "--set", "teacher.ckpt_every_kimg=0.32", "--set",
        "teacher.keep_checkpoints=1"]


def _rewrite(src: Path, dest: Path, drop_checksum=False, **changes) -> None:
    with safe_open(src, "pt") as f:
        meta, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    for k, edit in changes.items():
        meta[k] = edit(meta[k])
    if drop_checksum:
        meta.pop("checksum", None)
    save_file(tensors, dest, metadata=meta)


def _laughs(levels=12, width=200) -> bytes:
    b = bytearray(b"\x80\x04]\x94")
    for i in range(1, levels + 1):
        b += b"](" + (b"h" + bytes([i - 1])) * width + b"e\x94"
    b += b"}\x8c\x03ema}\x8c\x05state}\x8c\x0c_init_kwargs" + b"h" + bytes([levels]) + b"sss."
    return bytes(b)


def workspace(root: Path) -> None:
    """The files every case may use."""
    import pickle

    tiny_checkpoint(root / CTM)
    tiny_checkpoint(root / GCTM, kind="gctm", preset="toy-translate")
    flipped = bytearray((root / CTM).read_bytes())
    flipped[-3] ^= 0x40
    (root / "flipped.safetensors").write_bytes(bytes(flipped))
    _rewrite(root / CTM, root / "kind.safetensors", kind=lambda k: "gctm")

    def huge(t):
        p = json.loads(t)
        p["net"]["mlp"]["hidden"] = 2**24
        return json.dumps(p)

    _rewrite(root / CTM, root / "huge.safetensors", drop_checksum=True, preset=huge)
    _rewrite(root / CTM, root / "nanlevel.safetensors", drop_checksum=True,
             preset=lambda t: t.replace('"sigma_max":2.0', '"sigma_max":NaN')
                               .replace('"sigma_max":80.0', '"sigma_max":NaN'))
    toy_points(root / "p.npz")
    np.savez(root / "complex.npz", samples=(np.ones((4, 2)) + 1j).astype(np.complex64))
    (root / "latin1.toml").write_bytes('name = "caf\xe9"\n'.encode("latin-1"))
    (root / "laughs.pkl").write_bytes(_laughs())
    (root / "deep.pkl").write_bytes(b"\x80\x04" + b"(" * 200_000 + b".")
    (root / "biglist.pkl").write_bytes(pickle.dumps([list(range(50))] * 2000, protocol=4))
    (root / "imgs").mkdir()


# (name, arguments, expected exit code); each runs in its own copy of the workspace
CASES = [
    ("non-UTF-8 preset", ["presets", "latin1.toml"], 2),
    ("betas outside [0, 1)", ["presets", "toy", "--set", "distill.betas=[0.9,1.5]"], 2),
    ("lr NaN", ["presets", "toy", "--set", "teacher.lr=nan"], 2),
    ("integer beyond 64 bits", ["presets", "toy", "--set", "teacher.seed=99999999999999999999999"], 2),
    ("integer of 5001 digits", ["presets", "toy", "--set", "teacher.seed=1" + "0" * 5000], 2),
    ("inf where an integer is expected", ["presets", "toy", "--set", "teacher.batch=inf"], 2),
    ("--kimg inf", ["teacher", "--kimg", "inf", "--run-dir", "r"], 2),
    ("--max-upload-mb inf", ["serve", "--ckpt", CTM, "--max-upload-mb", "inf"], 2),
    ("--n 2^70", ["sample", "--ckpt", CTM, "--n", str(2**70), "--out", "-"], 2),
    ("--data for built-in data", ["teacher", "--preset", "toy", "--data", "imgs", "--run-dir", "r", *TINY],
     2),
    ("complex data", ["likelihood", "complex.npz", "--ckpt", CTM, "--device", "cpu"], 2),
    ("--name with ..", ["fid", "stats", "imgs", "--name", "../../escaped", "--no-features"], 2),
    ("flipped weight byte", ["sample", "--ckpt", "flipped.safetensors", "--out", "-"], 2),
    ("edited header kind", ["sample", "--ckpt", "kind.safetensors", "--out", "-"], 2),
    ("header of 1 PB network", ["sample", "--ckpt", "huge.safetensors", "--out", "-"], 2),
    ("NaN level in header", ["sample", "--ckpt", "nanlevel.safetensors", "--out", "-"], 2),
    ("--nfe 1000000", ["sample", "--ckpt", CTM, "--nfe", "1000000", "--out", "-"], 2),
    ("rk4 --steps 1e8", ["likelihood", "p.npz", "--ckpt", CTM, "--solver", "rk4", "--steps", "100000000"], 2),
    ("--kimg 1e12", ["teacher", "--kimg", "1e12", "--run-dir", "r"], 2),
    ("pickle: shared references", ["teacher", "import", "laughs.pkl", "-o", "l.safetensors"], 2),
    ("pickle: deep nesting", ["teacher", "import", "deep.pkl", "-o", "d.safetensors"], 2),
    ("pickle: huge list", ["teacher", "import", "biglist.pkl", "-o", "b.safetensors"], 2),
    ("--out and --grid one path", ["translate", "p.npz", "--ckpt", GCTM, "--out", "x.png", "--grid", "x.png"],
     2),
    ("sweep table on the plot's path", ["sample", "sweep", "--ckpt", CTM, "--out", "t.png"], 2),
    ("--host 0.0.0.0 without --expose", ["serve", "--ckpt", CTM, "--host", "0.0.0.0"], 2),
]
# (name, arguments, signal, seconds to wait, expected exit code)
SIGNALS = [
    ("likelihood rk4 SIGINT", ["likelihood", "p.npz", "--ckpt", CTM, "--solver", "rk4", "--steps", "3000000",
                               "--device", "cpu", "--no-limits"], signal.SIGINT, 130),
    ("likelihood SIGTERM", ["likelihood", "p.npz", "--ckpt", CTM, "--solver", "rk4", "--steps", "3000000",
                            "--device", "cpu", "--no-limits"], signal.SIGTERM, 143),
    ("sample SIGTERM", ["sample", "--ckpt", CTM, "--nfe", "300000", "--n", "64", "--out", "-", "--no-limits",
                        "--device", "cpu"], signal.SIGTERM, 143),
    ("serve SIGINT", ["serve", "--ckpt", CTM, "--port", "8937", "--backend", "torch"], signal.SIGINT, 130),
    ("serve SIGTERM", ["serve", "--ckpt", CTM, "--port", "8938", "--backend", "torch"], signal.SIGTERM, 143),
]


def classify(rc: int | None, err: str, code: int) -> str:
    if rc is None:
        return "hang"
    if "Traceback" in err:
        return "traceback"
    if rc != code:
        return "exit0" if rc == 0 else f"exit{rc}"
    lines = [ln for ln in err.splitlines() if ln.strip()]
    return "ok" if lines and lines[-1].startswith("error: ") else "no-line"


def _py() -> list[str]:
    return [sys.executable, "-m", "ctmtool"]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "COLUMNS": "200"}


def run_case(base: Path, name: str, args: list[str], code: int, timeout: float) -> tuple[str, str, str]:
    d = Path(tempfile.mkdtemp(dir=base))
    shutil.copytree(base / "ws", d, dirs_exist_ok=True)
    before = {p.relative_to(d) for p in d.rglob("*")}
    try:
        r = subprocess.run(_py() + args, cwd=d, env=_env(), capture_output=True, text=True, timeout=timeout)
        rc, err = r.returncode, r.stderr
    except subprocess.TimeoutExpired as e:
        rc, err = None, ((e.stderr or b"").decode(errors="replace") if isinstance(e.stderr, bytes)
                         else (e.stderr or ""))
    cls = classify(rc, err, code)
    after = {p.relative_to(d) for p in d.rglob("*")}
    stray = sorted(str(p) for p in after - before)
    if cls == "ok" and stray:
        cls = "lost"  # something half-written or stray was left
    escaped = list(base.glob("**/escaped*")) + list(Path.home().glob(".cache/**/escaped*"))
    if escaped:
        cls = "lost"
    last = err.strip().splitlines()[-1][:150] if err.strip() else ""
    return name, cls, last + (f"  [left: {', '.join(stray)}]" if stray else "")


def run_signal(base: Path, name: str, args: list[str], sig, code: int,
               timeout: float) -> tuple[str, str, str]:
    d = Path(tempfile.mkdtemp(dir=base))
    shutil.copytree(base / "ws", d, dirs_exist_ok=True)
    proc = subprocess.Popen(_py() + args, cwd=d, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    seen = []
    t0 = time.time()
    while time.time() - t0 < timeout:
        line = proc.stderr.readline()
        seen.append(line)
        if not line or any(w in line for w in ("likelihood of", "using checkpoint", "serving")):
            break
    time.sleep(2)  # at work
    proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=timeout)
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        rc = None
    err = "".join(seen) + err
    return name, classify(rc, err, code), (err.strip().splitlines() or [""])[-1][:150]


def run_race(base: Path, timeout: float) -> tuple[str, str, str]:
    """Two runs into one run directory, the second started while the first trains: the second must be refused
    and the first's checkpoints kept."""
    d = Path(tempfile.mkdtemp(dir=base))
    cmd = _py() + ["teacher", "--preset", "toy", *TINY, "--run-dir", "run", "--device", "cpu"]
    first = subprocess.Popen(cmd + ["--kimg", "100000"], cwd=d, env=_env(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    while not list((d / "run").glob("ckpt-*")) and time.time() - t0 < timeout and first.poll() is None:
        time.sleep(0.1)
    second = subprocess.run(cmd + ["--kimg", "0.64", "--force"], cwd=d, env=_env(), capture_output=True,
                            text=True, timeout=timeout)
    alive = first.poll() is None
    first.send_signal(signal.SIGTERM)
    first.communicate(timeout=timeout)
    cls = classify(second.returncode, second.stderr, 2)
    if cls == "ok" and (not alive or not list((d / "run").glob("ckpt-*"))):
        cls = "lost"
    return "two runs into one run directory", cls, (second.stderr.strip().splitlines() or [""])[-1][:150]


def _supported(args: list[str]) -> list[str]:
    """Drop --no-limits where this ctmtool has no such option (measuring a version before issue 29)."""
    if "--no-limits" in args and "--no-limits" not in subprocess.run(
            _py() + ["sample", "--help"], env=_env(), capture_output=True, text=True).stdout:
        return [a for a in args if a != "--no-limits"]
    return args


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--timeout", type=float, default=60)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--keep", type=Path, default=None)
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="abuse-", dir=args.keep))
    (base / "ws").mkdir()
    workspace(base / "ws")
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda c: run_case(base, *c, args.timeout), CASES))
    results += [run_signal(base, name, _supported(a), sig, code, args.timeout)
                for name, a, sig, code in SIGNALS]
    results.append(run_race(base, max(args.timeout, 120)))
    counts: dict[str, int] = {}
    for name, cls, last in results:
        counts[cls] = counts.get(cls, 0) + 1
        print(f"{cls:9s} {name}: {last}")
    print(f"{len(results)} cases: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    if args.keep is None:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
