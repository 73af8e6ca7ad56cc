"""ctmtool.serve.engine: the page's requests computed by the library's samplers, in PyTorch and ONNX
Runtime."""

from __future__ import annotations

import math

import pytest
import torch

from ctmtool.core.models import load_model
from ctmtool.errors import UserError
from ctmtool.serve.engine import Engine


def test_generate_is_one_jump_from_the_walk_noise(digits_engine):
    """NFE 1, gamma 0: x = clamp(G(sigma_max z, sigma_max, sigma_min)) (Kim et al. 2024, Alg. 1, N = 1)."""
    m = digits_engine.model
    x, ms = digits_engine.generate(seed=3, phase=0.0)
    z = torch.randn((1, *m.data_shape), generator=torch.Generator().manual_seed(6))
    ref = m.net.jump(m.sigma_max * z, m.sigma_max, m.sigma_min).clamp(-1, 1)
    assert ms > 0 and torch.allclose(x, ref, atol=1e-6)


def test_walk_noise_is_a_great_circle(digits_engine):
    za, zb = digits_engine.noise(2, 0.0, 1), digits_engine.noise(2, math.pi / 2, 1)
    mid = digits_engine.noise(2, 0.3, 1)
    assert torch.allclose(mid, math.cos(0.3) * za + math.sin(0.3) * zb)
    assert not torch.allclose(za, zb)


def test_edit_is_the_library_sdedit(digits_engine):
    from ctmtool.core.editing import sdedit, strength_to_level
    from ctmtool.jobs.plan import plan_editing

    m = digits_engine.model
    x = torch.rand((1, *m.data_shape)) * 2 - 1
    out, _ = digits_engine.edit(x, 0.4, seed=5, nfe=2, gamma=0.5)
    level = strength_to_level(m, 0.4)
    ref = sdedit(m, x, level, plan_editing(m, level, nfe=2, gamma=0.5),
                 generator=torch.Generator().manual_seed(5))
    assert torch.allclose(out, ref, atol=1e-6)


def test_bad_requests_raise_user_errors(digits_engine):
    with pytest.raises(UserError, match="does not match"):
        digits_engine.edit(torch.zeros(1, 3, 8, 8), 0.5)
    with pytest.raises(UserError, match="NaN"):
        digits_engine.edit(torch.full((1, 1, 8, 8), float("nan")), 0.5)
    with pytest.raises(UserError, match="strength"):
        digits_engine.edit(torch.zeros(1, 1, 8, 8), 1.5)
    with pytest.raises(UserError, match="translation needs a GCTM"):
        digits_engine.translate(torch.zeros(1, 1, 8, 8))


def test_onnxruntime_backend_matches_torch(tmp_path):
    """The served fast path (exported, verified, run in ONNX Runtime) gives PyTorch's samples and edits."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from ctmtool.jobs.export import random_checkpoint

    model = load_model(random_checkpoint(tmp_path / "toy.safetensors", "toy", "ctm"))
    slow, fast = Engine(model, backend="torch"), Engine(model, backend="onnxruntime")
    assert fast.backend == "onnxruntime" and fast.info()["backend"] == "onnxruntime"
    for nfe, gamma in ((1, 0.0), (3, 0.4)):
        a, b = slow.generate(1, 0.7, nfe, gamma, n=64)[0], fast.generate(1, 0.7, nfe, gamma, n=64)[0]
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4), float((a - b).abs().max())
    pts = torch.randn(32, 2)
    a, b = slow.edit(pts, 0.3, seed=2)[0], fast.edit(pts, 0.3, seed=2)[0]
    assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)


def test_teacher_generates_but_does_not_edit(tmp_path):
    from ctmtool.jobs.export import random_checkpoint

    eng = Engine(load_model(random_checkpoint(tmp_path / "t.safetensors", "toy", "teacher")), backend="torch")
    assert eng.info()["editor"] == [] and eng.info()["generate"]
    x, _ = eng.generate(0, 0.0, nfe=2, n=10)
    assert x.shape == (10, 2) and torch.isfinite(x).all()
    with pytest.raises(UserError, match="cannot edit"):
        eng.edit(torch.zeros(4, 2), 0.5)


def test_class_choice_of_a_conditional_model(tmp_path):
    from ctmtool.jobs.export import random_checkpoint

    over = ["net.label_dim=10", "net.mlp.hidden=32", "net.mlp.depth=1", "net.mlp.emb=16"]
    eng = Engine(load_model(random_checkpoint(tmp_path / "c.safetensors", "digits", "ctm", overrides=over)),
                 backend="torch")
    assert eng.info()["label_dim"] == 10
    m = eng.model
    x4, _ = eng.generate(1, 0.0, label=4)
    z = eng.noise(1, 0.0, 1)
    ref = m.net.jump(m.sigma_max * z, m.sigma_max, m.sigma_min, torch.tensor([4])).clamp(-1, 1)
    assert torch.allclose(x4, ref, atol=1e-6) and not torch.allclose(x4, eng.generate(1, 0.0, label=5)[0])
    with pytest.raises(UserError, match="class 10 is outside 0..9"):
        eng.generate(1, 0.0, label=10)
