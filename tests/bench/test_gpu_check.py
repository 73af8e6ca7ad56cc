"""bench/gpu_check.py --tiny (CPU, tiny networks): every stage reports a status, the JSON and the table are
written; a stage that overruns its budget is killed and the report is still written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "gpu_check.py"
STAGES = ["env", "correctness", "noise", "sampling", "train", "fid_pipeline", "peers", "real_run"]


def _shared(rel: str) -> str | None:
    for base in (ROOT.parent / "shared", Path("/work/shared")):
        if (base / rel).is_file():
            return str(base / rel)
    return None


def _run(args: list[str], env_extra: dict | None = None, timeout: float = 170) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **(env_extra or {})}
    return subprocess.run([sys.executable, str(SCRIPT), *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_tiny_writes_every_stage(tmp_path):
    # about 30 s; room for a loaded CI machine
    args = ["--tiny", "--budget", "150", "--out", str(tmp_path), "--work", str(tmp_path / "work")]
    feats, cifar = _shared("data/fd-cifar10/fd_a.pt"), _shared("data/cifar10-jpeg/cifar10-jpeg-q75.tar.gz")
    args += (["--features", feats] if feats else []) + (["--cifar", cifar] if cifar else [])
    r = _run(args)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    rep = json.loads((tmp_path / "gpu_check.json").read_text())
    assert list(rep["stages"]) == STAGES
    for name, st in rep["stages"].items():
        assert st["status"] in ("ok", "partial", "skipped", "error", "timeout"), name
    for name in ("env", "correctness", "noise", "sampling", "fid_pipeline"):
        assert rep["stages"][name]["status"] == "ok", (name, rep["stages"][name])
        assert rep["stages"][name]["rows"], name
    corr = {row["what"]: row["value"] for row in rep["stages"]["correctness"]["rows"]}
    assert corr["philox words, torch reference on device == CPU"] is True
    table = (tmp_path / "gpu_check.md").read_text()
    assert all(f"| {s} |" in table for s in STAGES)
    assert sorted(p.name for p in tmp_path.iterdir()
                  if p.name != "work") == ["gpu_check.json", "gpu_check.md"]


def test_overrun_stage_is_killed_and_reported(tmp_path):
    r = _run(["--tiny", "--no-inprocess", "--only", "noise", "--budget", "14", "--out", str(tmp_path),
              "--work", str(tmp_path / "work")],
             env_extra={"GPU_CHECK_HANG_STAGE": "noise"}, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    rep = json.loads((tmp_path / "gpu_check.json").read_text())
    assert list(rep["stages"]) == ["noise"]
    assert rep["stages"]["noise"]["status"] == "timeout"
    # what it wrote before it was killed
    assert rep["stages"]["noise"]["rows"][0]["what"] == "hang (test hook)"


def test_tiny_peers_stage_without_checkouts_measures_ctmtool_and_says_what_it_skipped(tmp_path):
    r = _run(["--tiny", "--only", "peers", "--budget", "100", "--out", str(tmp_path), "--work",
              str(tmp_path / "work")])
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    st = json.loads((tmp_path / "gpu_check.json").read_text())["stages"]["peers"]
    assert st["status"] == "ok", st
    rows = {row["what"]: row for row in st["rows"]}
    assert rows["official ctm-cifar10 step"]["value"] == "skipped"
    assert rows["k-diffusion sample_heun"]["value"] == "skipped"
    assert rows["CTM step ctmtool, batch 2, 16x16"]["value"] > 0
    assert any(w.startswith("Heun 35 NFE digits teacher, batch 64: ctmtool eager") for w in rows)
