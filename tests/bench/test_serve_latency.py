"""bench/serve_latency.py --tiny through real headless Chromium: it measures input-to-paint latencies, the
display's rate and the walk's painted frames, and judges the goals (seconds; timings are never asserted)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

from ctmtool.serve.harness import find_browser

pytest.importorskip("playwright.sync_api",
                    reason="playwright is not installed (pip install 'ctmtool[serve]')")
SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "serve_latency.py"


@pytest.mark.skipif(find_browser() is None, reason="no Chromium on PATH (apt-get install chromium)")
def test_tiny_run_measures_input_to_paint(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("serve_latency", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rows = mod.main(["--tiny", "--json", str(tmp_path / "r.json")])
    assert len(rows) == 1
    r = rows[0]
    assert r["display_hz"] > 10 and r["stroke_events"] >= 3 * 8 and r["stroke_lost"] == 0 and not r["errors"]
    for k in ("stroke_paint_ms_median", "stroke_paint_ms_p90", "stroke_next_ms_median",
              "slider_paint_ms_median"):
        assert math.isfinite(r[k]) and r[k] > 0, k
    assert r["stroke_paint_ms_p90"] >= r["stroke_paint_ms_median"] >= r["stroke_arrive_ms_median"] > 0
    assert r["walk_frames"] >= 5 and r["walk_painted_fps"] > 0
    assert set(r["goals"]) == {"stroke_paint", "walk_fps"}
    assert r["goals"]["stroke_paint"]["goal"] == pytest.approx(1.5 * 1000 / r["display_hz"])
    assert json.loads((tmp_path / "r.json").read_text())["rows"][0]["stroke_events"] == r["stroke_events"]
    assert "| digits (tiny MLP, random weights) | torch |" in capsys.readouterr().out
