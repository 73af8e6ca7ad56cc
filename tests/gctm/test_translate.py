"""Translation and editing with trajectory models: shapes, determinism, schedules, refusals."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ctmtool import editing as E
from ctmtool.config import load_preset
from ctmtool.errors import UserError
from ctmtool.gctm import translate as T
from ctmtool.models import Model, build_precond
from ctmtool.precond import GCTMPrecond
from ctmtool.sampling import ImageNoise, gamma_sample

SMALL = ["net.mlp.hidden=32", "net.mlp.depth=1", "net.mlp.emb=16"]
IMG = (1, 8, 8)


def _randomise(net: nn.Module, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    for p in net.parameters():  # the output layer starts at zero: make F non-trivial
        nn.init.normal_(p, std=0.2)
    return net.eval().requires_grad_(False)


def gctm_model(coupling="toy-ot:moons", shape=(2,), seed=0, source_noise=0.0) -> Model:
    p = load_preset("toy-translate", SMALL + [f'gctm.coupling="{coupling}"', f"gctm.source_noise={source_noise}"])
    net = build_precond("gctm", p, shape, {"moments": {"var0": 0.25, "var1": 0.5, "cov01": 0.1}})
    return Model("gctm", _randomise(net, seed), p, shape)


def ctm_model(shape=IMG, seed=0, randomise=True) -> Model:
    p = load_preset("toy", SMALL)
    net = build_precond("ctm", p, shape)
    net = _randomise(net, seed) if randomise else net.eval().requires_grad_(False)
    return Model("ctm", net, p, shape)


@pytest.mark.parametrize("nfe", [1, 2])
def test_translate_shapes_and_determinism(nfe):
    m = gctm_model()
    x1 = torch.randn(10, 2, generator=torch.Generator().manual_seed(0))
    a, b = T.translate(m, x1, nfe=nfe), T.translate(m, x1, nfe=nfe)
    assert a.shape == x1.shape and torch.isfinite(a).all()
    assert torch.equal(a, b)
    assert not torch.allclose(a, x1)


def test_one_step_translation_is_the_jump_from_one_to_zero():
    m = gctm_model()
    x1 = torch.randn(6, 2)
    with torch.no_grad():
        expect = m.net.jump(x1, torch.ones(6), torch.zeros(6))
    assert torch.allclose(T.translate(m, x1), expect)
    assert T.translation_schedule(m, 1).tolist() == [1.0, 0.0]
    t3 = T.translation_schedule(m, 3)
    assert t3[0] == 1 and t3[-1] == 0 and (t3[1:] < t3[:-1]).all()


def test_stochastic_multistep_is_seeded_per_item_and_batch_independent():
    m = gctm_model("independent", IMG)
    x1 = torch.randn(6, *IMG, generator=torch.Generator().manual_seed(1))
    whole = T.translate(m, x1, nfe=3, gamma=0.5, noise=ImageNoise(range(6), IMG))
    parts = torch.cat([T.translate(m, x1[:2], nfe=3, gamma=0.5, noise=ImageNoise(range(2), IMG)),
                       T.translate(m, x1[2:], nfe=3, gamma=0.5, noise=ImageNoise(range(2, 6), IMG))])
    assert torch.allclose(whole, parts, atol=1e-6)
    assert whole.abs().max() <= 1  # images are clamped
    other = T.translate(m, x1, nfe=3, gamma=0.5, noise=ImageNoise(range(10, 16), IMG))
    assert not torch.allclose(whole, other)


def test_source_noise_is_added_only_with_a_noise_source():
    m = gctm_model(source_noise=0.05)
    x1 = torch.randn(4, 2)
    plain = T.translate(m, x1)
    noisy = T.translate(m, x1, noise=ImageNoise(range(4), (2,)))
    assert torch.equal(plain, T.translate(m, x1)) and not torch.allclose(plain, noisy)


def test_translate_refusals():
    with pytest.raises(UserError, match="GCTM"):
        T.translate(ctm_model((2,)), torch.randn(3, 2))
    with pytest.raises(UserError, match="gamma"):
        T.translate(gctm_model(), torch.randn(3, 2), nfe=2, gamma=0.5, noise=ImageNoise(range(3), (2,)))
    with pytest.raises(UserError, match="shape"):
        T.translate(gctm_model(), torch.randn(3, 3))


class Recorder(nn.Module):
    """A stand-in GCTM (unit Gaussian source): every jump returns zeros and records its input."""

    renoise = GCTMPrecond.renoise
    source_std = 1.0

    def __init__(self):
        super().__init__()
        self.inputs = []

    def jump(self, x, t, s, labels=None):
        self.inputs.append((x.clone(), t, s))
        return torch.zeros_like(x)


def test_gamma_one_renoises_along_the_interpolation():
    """gamma = 1: jump to 0, then x_t' = (1 - t') x0_hat + t' z: the second jump sees std t'."""
    rec = Recorder()
    z = torch.randn(20000, 2, generator=torch.Generator().manual_seed(0))
    gamma_sample(rec, torch.randn(20000, 2), [1.0, 0.6, 0.0], noise=lambda: z, gamma=1.0)
    (_, t0, s0), (x_second, t1, s1) = rec.inputs
    assert (t0, s0, t1, s1) == (1.0, 0.0, 0.6, 0.0)
    assert torch.allclose(x_second, 0.6 * z)
    rec2 = Recorder()
    gamma_sample(rec2, torch.randn(4, 2), [1.0, 0.6, 0.0], gamma=0.0)
    assert [(t, s) for _, t, s in rec2.inputs] == [(1.0, 0.6), (0.6, 0.0)]


def test_strength_maps_to_levels_of_equal_snr():
    g, c = gctm_model("independent", IMG), ctm_model()
    assert E.strength_to_level(g, 0.3) == 0.3
    assert E.strength_to_level(c, 0.5) == pytest.approx(1.0)
    assert E.strength_to_level(c, 1.0) == c.sigma_max
    with pytest.raises(UserError):
        E.strength_to_level(c, 0.0)


@pytest.mark.parametrize("kind", ["ctm", "gctm"])
def test_edit_schedules_run_from_the_level_to_the_end(kind):
    m = ctm_model() if kind == "ctm" else gctm_model("independent", IMG)
    level = E.strength_to_level(m, 0.4)
    for nfe in (1, 3):
        s = E.edit_schedule(m, level, nfe)
        assert len(s) == nfe + 1 and float(s[0]) == pytest.approx(level)
        assert float(s[-1]) == (m.sigma_min if kind == "ctm" else 0.0) and (s[1:] < s[:-1]).all()


def test_sdedit_keeps_more_of_the_image_at_lower_strength():
    m = ctm_model(randomise=False)  # F = 0 at init: g = c_skip x, a smooth denoiser
    x = torch.rand(4, *IMG, generator=torch.Generator().manual_seed(0)) * 2 - 1
    changes = []
    for strength in (0.01, 0.5, 0.9):
        y = E.sdedit(m, x, E.strength_to_level(m, strength), noise=ImageNoise(range(4), IMG))
        assert y.shape == x.shape and y.abs().max() <= 1
        changes.append(float((y - x).abs().mean()))
    assert changes[0] < 0.05 and changes[0] < changes[1] < changes[2]
    a = E.sdedit(m, x, 1.0, generator=torch.Generator().manual_seed(5))
    b = E.sdedit(m, x, 1.0, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_sdedit_with_a_gaussian_source_gctm_and_refusals():
    m = gctm_model("independent", IMG)
    x = torch.rand(3, *IMG) * 2 - 1
    y = E.sdedit(m, x, 0.5, noise=ImageNoise(range(3), IMG), nfe=2, gamma=0.3)
    assert y.shape == x.shape and torch.isfinite(y).all()
    with pytest.raises(UserError, match="SDEdit"):
        E.sdedit(gctm_model("corrupt:sr2", IMG), x, 0.5, noise=ImageNoise(range(3), IMG))
    with pytest.raises(UserError, match="range"):
        E.sdedit(ctm_model(), x, 500.0, noise=ImageNoise(range(3), IMG))
    teacher = Model("teacher", nn.Identity(), m.preset, IMG)
    with pytest.raises(UserError, match="CTM or a GCTM"):
        E.sdedit(teacher, x, 0.5)


def test_stroke_edit_composites_and_keeps_the_unmasked_part():
    m = ctm_model()
    image = torch.zeros(2, *IMG)
    strokes = image.clone()
    strokes[:, :, 2:5, 2:5] = 0.8
    mask = E.stroke_mask(image, strokes)
    assert mask.shape == (2, 1, 8, 8) and int(mask.sum()) == 2 * 9
    assert torch.equal(E.composite(image, strokes), strokes)
    out = E.stroke_edit(m, image, strokes, None, 2.0, noise=ImageNoise(range(2), IMG), keep_unmasked=True)
    assert torch.equal(out * (1 - mask), image * (1 - mask))
    free = E.stroke_edit(m, image, strokes, None, 2.0, noise=ImageNoise(range(2), IMG))
    assert not torch.equal(free * (1 - mask), image * (1 - mask))
