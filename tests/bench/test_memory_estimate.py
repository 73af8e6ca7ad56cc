"""bench/memory_estimate.py on a tiny preset: the linear extension of the step's transient memory from
micro-batches 1 and 2 predicts the measured one at 8, and the resident part is the sizes of what lives between
steps."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "memory_estimate.py"


def _module():
    spec = importlib.util.spec_from_file_location("memory_estimate", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_tiny_preset_estimate_predicts_batch_8():
    me = _module()
    r = me.estimate("digits", me.TINY, check=8)
    assert r["precision"] == "bf16" and r["transient_per_item"] > 0
    measured, predicted = r["measured"][8], r["predicted_check"]
    assert abs(predicted - measured) <= 0.15 * measured, (predicted, measured)
    net = r["params_net_m"] * 1e6 * 4
    assert r["resident"]["grads"] == round(net) and r["resident"]["optimiser"] == round(2 * net)
    assert r["resident"]["net"] >= net and r["resident"]["teacher"] > 0 and r["resident"]["emas"] > 0
    assert r["peak"] == r["resident_total"] + r["transient_base"] + 8 * r["transient_per_item"]
