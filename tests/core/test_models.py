"""Building models from presets, rebuilding them from checkpoints, and the student-from-teacher start."""

from __future__ import annotations

import math
import os
import time

import pytest
import torch

from ctmtool.checkpoint import Checkpoint, save_checkpoint
from ctmtool.config import load_preset, override_preset
from ctmtool.core.analytic import GaussianMixture
from ctmtool.core.models import (
    analytic_model,
    build_precond,
    load_model,
    model_from_checkpoint,
    newest_checkpoint,
    student_from_teacher,
)
from ctmtool.core.precond import CTMPrecond, EDMPrecond, GCTMPrecond, VEPrecond, VPPrecond
from ctmtool.errors import UserError

DIGITS_SHAPE = (1, 8, 8)
TEACHERS = {"edm": EDMPrecond, "vp": VPPrecond, "ve": VEPrecond}


@pytest.fixture
def unet_preset(tiny_preset):
    """The digits preset with a tiny U-Net and a given teacher preconditioning."""
    return lambda precond="edm": tiny_preset("digits", f"diffusion.precond={precond}", net="unet")


def _perturb(module: torch.nn.Module, seed: int = 0, scale: float = 0.05) -> torch.nn.Module:
    """Move every parameter off its initial value, so that outputs depend on all of them."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


def _x(shape, n=3, seed=1):
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("precond", ["edm", "vp", "ve"])
def test_build_precond_kinds_mlp(toy_preset, precond):

    p = override_preset(toy_preset, [f"diffusion.precond={precond}"])
    t = build_precond("teacher", p, (2,))
    assert type(t) is TEACHERS[precond]
    assert (t.sigma_min, t.sigma_max) == (0.002, p.diffusion.sigma_max)
    c = build_precond("ctm", p, (2,))
    assert isinstance(c, CTMPrecond) and c.scheme == "edm"  # the paper's student is EDM whatever the teacher
    c_teacher = build_precond("ctm", override_preset(p, ["ctm.student_precond=teacher"]), (2,))
    assert c_teacher.scheme == precond
    g = build_precond("gctm", p, (2,))
    assert isinstance(g, GCTMPrecond) and (g.var0, g.var1, g.cov01) == (0.25, 1.0, 0.0)
    x = _x((2,))
    assert t.denoise(x, 1.0).shape == (3, 2)
    assert c.jump(x, 80.0, 0.002).shape == (3, 2)
    assert g.jump(x, 1.0, 0.0).shape == (3, 2)
    # the CTM net takes an s input, the teacher's does not
    names_t = set(t.state_dict())
    names_c = set(c.state_dict())
    assert names_t < names_c
    assert all("map_s" in k for k in names_c - names_t)


def test_build_precond_gctm_moments(toy_preset):
    g = build_precond("gctm", toy_preset, (2,), meta={"moments": {"var0": 0.1, "var1": 0.7, "cov01": 0.05}})
    assert (g.var0, g.var1, g.cov01) == (0.1, 0.7, 0.05)
    with pytest.raises(ValueError):
        build_precond("student", toy_preset, (2,))


@pytest.mark.parametrize("kind", ["teacher", "ctm", "gctm"])
def test_build_precond_unet(kind, unet_preset):
    p = unet_preset()
    m = build_precond(kind, p, DIGITS_SHAPE).eval()
    x = _x(DIGITS_SHAPE)
    out = m.denoise(x, torch.tensor([0.1, 1.0, 10.0]) if kind != "gctm" else torch.tensor([0.1, 0.5, 0.9]))
    assert out.shape == x.shape and torch.isfinite(out).all()
    if kind != "teacher":
        assert m.jump(x, 0.9, 0.2).shape == x.shape


def test_unet_needs_square_images(unet_preset):
    with pytest.raises(ValueError, match="square"):
        build_precond("teacher", unet_preset(), (2,))


@pytest.mark.parametrize("kind", ["teacher", "ctm", "gctm"])
@pytest.mark.parametrize("net", ["mlp", "unet"])
def test_model_from_checkpoint_round_trip(tmp_path, toy_preset, kind, net, unet_preset):
    preset, shape = (toy_preset, (2,)) if net == "mlp" else (unet_preset(), DIGITS_SHAPE)
    meta = {"moments": {"var0": 0.2, "var1": 0.9, "cov01": 0.1}} if kind == "gctm" else {"kimg": 1.0}
    src = _perturb(build_precond(kind, preset, shape, meta)).eval()
    other = _perturb(build_precond(kind, preset, shape, meta), seed=5).eval()
    ck = Checkpoint(kind, preset, shape, groups={"ema": src.state_dict(), "net": other.state_dict()},
                    meta=meta)
    path = save_checkpoint(tmp_path / f"{kind}.safetensors", ck)
    m = load_model(path)
    assert m.kind == kind and m.data_shape == shape and m.path == path and m.meta == meta
    assert m.is_trajectory == (kind != "teacher") and m.is_image == (net == "unet")
    assert not m.net.training and not any(p.requires_grad for p in m.net.parameters())
    x = _x(shape)
    lv = 0.5 if kind == "gctm" else 2.0
    with torch.no_grad():
        assert torch.equal(m.net.denoise(x, lv), src.denoise(x, lv))
        if kind != "teacher":
            assert torch.equal(m.net.jump(x, lv, lv / 4), src.jump(x, lv, lv / 4))
    if kind == "gctm":
        assert (m.net.var0, m.net.var1, m.net.cov01) == (0.2, 0.9, 0.1)
    # the other weights of the same checkpoint
    m2 = load_model(path, which="net")
    with torch.no_grad():
        assert torch.equal(m2.net.denoise(x, lv), other.denoise(x, lv))
    with pytest.raises(UserError, match="ema_0.9999"):
        load_model(path, which="ema_0.9999")


def test_checkpoint_for_another_network_is_refused(tmp_path, toy_preset):
    from ctmtool.checkpoint import load_checkpoint

    src = build_precond("teacher", toy_preset, (2,))
    ck = Checkpoint("teacher", toy_preset, (2,), groups={"ema": src.state_dict()})
    path = save_checkpoint(tmp_path / "t.safetensors", ck)
    loaded = load_checkpoint(path)

    # a preset that does not fit the weights
    loaded.preset = override_preset(toy_preset, [f"net.mlp.hidden={2 * toy_preset.net.mlp.hidden}"])
    with pytest.raises(UserError, match="does not fit"):
        model_from_checkpoint(loaded)


@pytest.mark.parametrize("precond", ["edm", "vp", "ve"])
def test_student_from_teacher_is_the_teacher_at_init(precond, tiny_preset):
    """With ctm.student_precond = "teacher" (and always for an EDM teacher) the student starts as the
    teacher: the teacher's weights, s-layers at zero, so g(x, t, t) equals the teacher's denoiser exactly."""
    p = tiny_preset("digits", f"diffusion.precond={precond}", "ctm.student_precond=teacher", net="unet")
    teacher = _perturb(build_precond("teacher", p, DIGITS_SHAPE)).eval()
    student = student_from_teacher(teacher.state_dict(), p, DIGITS_SHAPE).eval()
    assert isinstance(student, CTMPrecond) and student.scheme == precond
    x = _x(DIGITS_SHAPE, n=4) * 3
    with torch.no_grad():
        for t in (0.002, 0.1, 2.5, 80.0):
            assert torch.equal(student.g(x, t, t), teacher.denoise(x, t)), t
            assert torch.equal(student.denoise(x, t), teacher.denoise(x, t))
        tt = torch.tensor([0.01, 0.5, 5.0, 60.0])
        assert torch.equal(student.g(x, tt, tt), teacher.denoise(x, tt))
    # every teacher tensor was copied; only s-layers are new
    st, te = student.state_dict(), teacher.state_dict()
    assert all(torch.equal(st[k], v) for k, v in te.items())
    assert set(st) - set(te) and all(("map_s" in k or "affine_s" in k) for k in set(st) - set(te))


def test_student_from_teacher_mlp_copies_weights(toy_preset):
    teacher = _perturb(build_precond("teacher", toy_preset, (2,)))
    student = student_from_teacher(teacher.state_dict(), toy_preset, (2,))
    st = student.state_dict()
    assert all(torch.equal(st[k], v) for k, v in teacher.state_dict().items())


def test_student_from_wrong_teacher_is_refused(toy_preset):
    teacher = build_precond("teacher", toy_preset, (2,))
    other = load_preset("toy", ["net.mlp.depth=2"])
    with pytest.raises(UserError, match="does not fit"):
        student_from_teacher(teacher.state_dict(), other, (2,), source="teacher.safetensors")


def test_analytic_model(toy_preset):
    m = analytic_model(toy_preset)
    assert m.kind == "analytic" and isinstance(m.net, GaussianMixture)
    assert m.data_shape == (2,) and not m.is_trajectory and not m.is_image
    assert (m.sigma_min, m.sigma_max) == (0.002, toy_preset.diffusion.sigma_max) and m.label_dim == 0
    with pytest.raises(ValueError, match="data.toy = 'gmm'") as info:
        analytic_model(load_preset("digits"))
    assert not isinstance(info.value, UserError)  # jobs/run_dirs.analytic_preset refuses it for a user


def test_newest_checkpoint(tmp_path, toy_preset):
    with pytest.raises(ValueError, match="`ckpt`") as info:
        newest_checkpoint(tmp_path)
    assert not isinstance(info.value, UserError)  # jobs/run_dirs.checkpoint_file refuses it for a user
    with pytest.raises(ValueError):
        newest_checkpoint(tmp_path / "missing")
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    b.write_bytes(b"1")
    a.write_bytes(b"2")
    now = time.time()
    os.utime(b, (now, now))
    os.utime(a, (now - 100, now - 100))
    assert newest_checkpoint(tmp_path) == b


@pytest.mark.parametrize("precond", ["edm", "vp", "ve"])
def test_default_student_has_edm_coefficients_at_the_ends(precond, unet_preset):
    """ctm-cifar10 karras_diffusion.py 62-90 / networks.py 870-875: whatever the teacher, the student uses
    c_in = 1/sqrt(t^2+sd^2), c_skip = sd^2/(t^2+sd^2), c_out = t sd/sqrt(t^2+sd^2), c_noise = ln(t)/4."""
    student = build_precond("ctm", unet_preset(precond), DIGITS_SHAPE)
    sd = 0.5
    for t in (80.0, 0.002):
        c_skip, c_out, c_in, c_noise = student.coefficients(torch.tensor([t], dtype=torch.float64))
        assert float(c_skip) == pytest.approx(sd**2 / (t**2 + sd**2), rel=1e-12)
        assert float(c_out) == pytest.approx(t * sd / math.sqrt(t**2 + sd**2), rel=1e-12)
        assert float(c_in) == pytest.approx(1 / math.sqrt(t**2 + sd**2), rel=1e-12)
        assert float(c_noise) == pytest.approx(math.log(t) / 4, rel=1e-12)
    # at t = 80: c_out ~ 0.49998 (not a VP teacher's -80), c_skip ~ 3.9e-5
    c_skip, c_out, _, _ = student.coefficients(torch.tensor([80.0], dtype=torch.float64))
    assert 0.4999 < float(c_out) < 0.5 and float(c_skip) < 4e-5


def test_edm_student_of_a_vp_teacher_feeds_ln_t_over_4_for_t_and_s(unet_preset):
    """The network sees c_in(t) x, ln(t)/4 and ln(s)/4 (ctm-cifar10 networks.py 870-875), not VP's 999
    t_vp."""
    seen = {}

    class Probe(torch.nn.Module):
        def forward(self, x, noise_t, noise_s=None, labels=None):
            seen.update(x=x.clone(), t=noise_t.clone(), s=noise_s.clone())
            return torch.zeros_like(x)

    student = build_precond("ctm", unet_preset("vp"), DIGITS_SHAPE)
    student.net = Probe()
    x = _x(DIGITS_SHAPE, n=2)
    student.g(x, torch.tensor([80.0, 1.0]), torch.tensor([0.002, 0.5]))
    assert torch.allclose(seen["t"], torch.tensor([math.log(80.0) / 4, 0.0]))
    assert torch.allclose(seen["s"], torch.tensor([math.log(0.002) / 4, math.log(0.5) / 4]))
    assert torch.allclose(seen["x"][0], x[0] / math.sqrt(80.0**2 + 0.25))
