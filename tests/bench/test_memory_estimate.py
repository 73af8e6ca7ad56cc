"""bench/memory_estimate.py on a tiny preset: the linear extension of the step's transient memory from
micro-batches 1 and 2 predicts the measured one at 8, and the resident part is the sizes of what lives between
steps; the fake-tensor count (ImageNet-64) agrees with the profiler's count of real tensors."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
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


def _conv_step(batch: int):
    import torch

    torch.manual_seed(0)
    nn = torch.nn
    net = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.SiLU(), nn.Conv2d(32, 32, 3, padding=1), nn.SiLU(),
                        nn.Flatten(), nn.Linear(32 * 16 * 16, 10))
    x = torch.randn(batch, 3, 16, 16)
    return net, x


def test_live_bytes_on_fake_tensors_match_the_profiler_on_real_ones():
    """The fake-tensor count of a forward and backward pass is the profiler's count of the real pass, within
    15%, and allocates nothing real."""
    import torch

    me = _module()
    to = torch.nn.Module.to
    net, x = _conv_step(16)
    net(x).square().mean().backward()  # gradients exist before the measured pass, as in training
    real = me.transient_peak(lambda: net(x).square().mean().backward())
    with me.fake_tensors() as live:
        net, x = _conv_step(16)
        assert "FakeTensor" in type(x).__name__
        net(x).square().mean().backward()
        start = live.peak = live.live
        net(x).square().mean().backward()
        fake = live.peak - start
    assert real > 1e6 and abs(fake - real) <= 0.15 * real, (fake, real)
    assert start >= me.module_bytes(net) + sum(p.numel() * 4 for p in net.parameters())  # weights, gradients
    assert torch.nn.Module.to is to  # restored


def test_fake_estimate_counts_the_resident_state_and_runs_the_step(tmp_path):
    """`--fake --tiny` (in its own process, as users run it): the live bytes at the start of a step are the
    resident parts counted from parameter sizes, and the step's transient bytes add to them."""
    out = tmp_path / "rows.json"
    env = {**os.environ, "PYTHONPATH": str(SCRIPT.parents[1]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--fake", "--tiny", "--json", str(out)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| digits | 0.0M | pseudo_huber | no | 8 |" in proc.stdout
    (r,) = json.loads(out.read_text())
    assert r["micro_batch"] == 8 and r["precision"] == "bf16" and r["transient"] > 0
    resident = sum(r["resident"].values())
    assert abs(r["live_at_start"] - resident) <= 0.02 * resident, r["resident"]
    assert r["peak"] == r["live_at_start"] + r["transient"]


def test_imagenet64_presets_have_a_shape():
    me = _module()
    assert me.SHAPES["imagenet64"] == me.SHAPES["imagenet64-gan"] == (3, 64, 64)
