"""bench/claims.py --tiny (CPU, seconds-long rows): rows train through the ctmtool CLI, a finished row is
skipped on a rerun, scores.json and the table are written; the bench's Frechet distance against closed
forms."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "claims.py"


def _run(args: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(SCRIPT), *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_tiny_trains_scores_and_resumes(tmp_path):
    r = _run(["all", "--tiny", "--out", str(tmp_path)])  # about 40 s on an idle 2-core machine
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    for row in ("teacher", "ctm"):
        assert (tmp_path / row / "done.json").is_file() and list((tmp_path / row).glob("ckpt-*.safetensors"))
    s = json.loads((tmp_path / "scores.json").read_text())
    assert 0.5 < s["judge"]["test_accuracy"] <= 1.0
    for row, name in (("teacher", "heun18"), ("ctm", "nfe1_g0"), ("ctm", "nfe2_g0"), ("ctm", "nfe2_g1")):
        m = s[row][name][0]["n2000"]
        assert np.isfinite(m["fd"]) and m["fd"] > 0 and 1.0 <= m["is"] <= 10.0, (row, name, m)
    assert "| teacher | heun18 |" in r.stdout and "real (held-out split)" in r.stdout
    again = _run(["train", "--tiny", "--out", str(tmp_path)], timeout=60)  # finished rows are not retrained
    assert again.returncode == 0 and again.stdout.count("done already") == 2, again.stdout + again.stderr


def test_unknown_row_is_one_line_error(tmp_path):
    r = _run(["train", "--tiny", "--rows", "nope", "--out", str(tmp_path)], timeout=60)
    assert r.returncode != 0 and "error: unknown row 'nope'" in r.stderr


def test_frechet_matches_closed_forms():
    sys.path.insert(0, str(ROOT / "bench"))
    from claims_score import frechet, inception_score

    rng = np.random.default_rng(0)
    a = rng.standard_normal((20000, 3))
    assert abs(frechet(a, a)) < 1e-6
    assert abs(frechet(a, a + [1.0, 2.0, 2.0]) - 9.0) < 1e-6  # a shift c adds |c|^2
    # N(0, I) against N(0, 4 I) in 3 dims: tr(I + 4I - 2 * 2I) = 3
    assert abs(frechet(a, 2 * rng.standard_normal((20000, 3))) - 3.0) < 0.15
    assert (abs(inception_score(np.eye(10)) - 10.0) < 1e-6
            and abs(inception_score(np.full((5, 10), 0.1)) - 1.0) < 1e-9)
