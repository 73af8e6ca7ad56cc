"""Couplings: shapes, pairing and second moments against values known in closed form."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ctmtool.config import GCTMConfig, load_preset
from ctmtool.core.precond import GCTMPrecond
from ctmtool.data.base import Dataset
from ctmtool.errors import UserError
from ctmtool.gctm import couplings as C


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def uniform_images(n=512, c=3, h=8, w=8, seed=1234) -> torch.Tensor:
    """i.i.d. uniform pixels on [-1, 1]: per-dimension variance 1/3 (a seed apart from the couplings')."""
    return torch.rand(n, c, h, w, generator=gen(seed)) * 2 - 1


def sq_displacement(x0, x1) -> float:
    return float((x0 - x1).flatten(1).square().sum(1).mean())


# ---------------------------------------------------------------------------------------------- moments


def test_batch_moments_match_numpy():
    g = gen()
    a = torch.randn(50, 3, 2, generator=g)
    b = 0.5 * a + torch.randn(50, 3, 2, generator=g)
    m = C.batch_moments(a, b)
    A, B = a.flatten(1).double().numpy(), b.flatten(1).double().numpy()
    assert m["var0"] == pytest.approx(A.var(0, ddof=1).mean())
    assert m["var1"] == pytest.approx(B.var(0, ddof=1).mean())
    cov = np.mean([np.cov(A[:, d], B[:, d])[0, 1] for d in range(A.shape[1])])
    assert m["cov01"] == pytest.approx(cov)


def test_batch_moments_refuse_mismatched_batches():
    with pytest.raises(ValueError):
        C.batch_moments(torch.zeros(4, 2), torch.zeros(5, 2))


# ------------------------------------------------------------------------------------------- independent / ot


def test_independent_coupling_gives_standard_gaussian_source():
    x = uniform_images()
    x0, x1 = C.IndependentCoupling().pair(x, generator=gen())
    assert x0 is x and x1.shape == x.shape
    m = C.IndependentCoupling().moments(uniform_images(2048), generator=gen())
    assert m["var0"] == pytest.approx(1 / 3, rel=0.02)
    assert m["var1"] == pytest.approx(1.0, rel=0.02)
    assert abs(m["cov01"]) < 0.01


def test_source_noise_and_scale_add_up_in_var1():
    m = C.IndependentCoupling(scale=0.5, source_noise=0.3).moments(uniform_images(2048), generator=gen())
    assert m["var1"] == pytest.approx(0.25 + 0.09, rel=0.03)


def test_pairs_are_a_function_of_the_generator():
    x = uniform_images(64)
    for cp in (C.IndependentCoupling(), C.OTCoupling(), C.make_coupling("corrupt:inpaint_random:0.5"),
               C.make_coupling("toy-ot:moons")):
        data = x if not isinstance(cp, C.DistributionCoupling) else torch.randn(64, 2, generator=gen(9))
        a = cp.pair(data, generator=gen(1))[1]
        assert torch.equal(a, cp.pair(data, generator=gen(1))[1])
        assert not torch.equal(a, cp.pair(data, generator=gen(2))[1])


def test_ot_coupling_shortens_the_paths():
    x = uniform_images(128)
    ind = C.IndependentCoupling().pair(x, generator=gen())[1]
    ot = C.OTCoupling().pair(x, generator=gen())[1]
    assert ot.shape == x.shape
    assert sq_displacement(x, ot) < sq_displacement(x, ind) - 20  # 257 -> 218 per item here
    m = C.OTCoupling().moments(uniform_images(1024), generator=gen(), batch=128)
    assert m["cov01"] > 0.02 and m["var1"] == pytest.approx(1.0, rel=0.05)


def test_ot_coupling_keeps_the_data_batch_and_labels():
    x, y = uniform_images(32), torch.arange(32)
    x0, _ = C.OTCoupling().pair(x, y, generator=gen())
    assert x0 is x


# ---------------------------------------------------------------------------------------------- corrupt


def test_corrupt_coupling_with_noise_only_has_cov_equal_var0():
    identity = lambda x, generator=None: x  # noqa: E731
    m = C.CorruptCoupling(identity, source_noise=0.2).moments(uniform_images(2048), generator=gen())
    assert m["cov01"] == pytest.approx(m["var0"], rel=1e-2)
    assert m["var1"] == pytest.approx(m["var0"] + 0.04, rel=1e-2)


def test_corrupt_noise_spec_moments():
    m = C.make_coupling("corrupt:noise:0.5").moments(uniform_images(2048), generator=gen())
    assert m["cov01"] == pytest.approx(1 / 3, rel=0.02)
    assert m["var1"] == pytest.approx(1 / 3 + 0.25, rel=0.02)


def test_corrupt_sr4_moments_are_those_of_block_means():
    """x1 = mean of 16 i.i.d. pixels: Var x1 = Cov(x0, x1) = Var x0 / 16."""
    x = uniform_images(2048, h=8, w=8)
    x0, x1 = C.make_coupling("corrupt:sr4").pair(x, generator=gen())
    assert x0 is x and x1.shape == x.shape
    m = C.make_coupling("corrupt:sr4").moments(x, generator=gen())
    assert m["var1"] == pytest.approx(1 / 48, rel=0.05)
    assert m["cov01"] == pytest.approx(1 / 48, rel=0.05)


def test_corrupt_coupling_gives_no_gradient_to_the_data():
    x = uniform_images(4).requires_grad_()
    _, x1 = C.make_coupling("corrupt:blur").pair(x)
    assert not x1.requires_grad


def test_moments_from_a_dataset():
    values = (torch.rand(300, 3, 4, 4, generator=gen()) * 256).to(torch.uint8)
    ds = Dataset(values, name="tiny")
    m = C.make_coupling("corrupt:colorize").moments(ds, generator=gen(), n=200)
    x = values.float() / 127.5 - 1
    assert 0 < m["var1"] < m["var0"] == pytest.approx(x.flatten(1).var(0).mean().item(), rel=0.15)


def test_moments_feed_the_generalised_preconditioning():
    m = C.make_coupling("corrupt:noise:0.3").moments(uniform_images(512), generator=gen())
    pre = GCTMPrecond(torch.nn.Identity(), **m)
    c_skip, c_out, _, _ = pre.coefficients(torch.tensor([0.0, 1.0]))
    assert c_skip[0].item() == pytest.approx(1.0) and c_out[0].item() < 1e-5  # t = 0: x_t is x0
    assert c_skip[1].item() == pytest.approx(m["cov01"] / m["var1"])  # t = 1: regression of x0 on x1


# ---------------------------------------------------------------------------------------------- paired


def test_split_side_by_side():
    left, right = torch.zeros(2, 3, 4, 4), torch.ones(2, 3, 4, 4)
    a, b = C.split_side_by_side(torch.cat([left, right], -1))
    assert torch.equal(a, left) and torch.equal(b, right)
    with pytest.raises(ValueError, match="even"):
        C.split_side_by_side(torch.zeros(1, 3, 4, 5))


@pytest.mark.parametrize("side", ["left", "right"])
def test_paired_coupling_takes_the_source_half(side):
    left, right = uniform_images(8, seed=101), uniform_images(8, seed=102)
    x0, x1 = C.make_coupling(f"paired:{side}").pair(torch.cat([left, right], -1))
    src, tgt = (left, right) if side == "left" else (right, left)
    assert torch.equal(x0, tgt) and torch.equal(x1, src)
    assert torch.equal(C.make_coupling("paired").pair(torch.cat([left, right], -1))[1], left)  # default: left


def test_paired_coupling_moments():
    a = uniform_images(2048, seed=103)  # source half
    b = 0.5 * a + 0.1 * torch.randn(a.shape, generator=gen(104))  # target half
    m = C.PairedCoupling().moments(torch.cat([a, b], -1), generator=gen())
    assert m["var0"] == pytest.approx(0.25 / 3 + 0.01, rel=0.03)
    assert m["var1"] == pytest.approx(1 / 3, rel=0.03)
    assert m["cov01"] == pytest.approx(0.5 / 3, rel=0.03)


def _save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_load_paired_side_by_side_folder(tmp_path):
    rng = np.random.default_rng(0)
    pairs = [rng.integers(0, 256, (16, 32, 3), dtype=np.uint8) for _ in range(3)]
    for i, p in enumerate(pairs):
        _save(tmp_path / f"{i}.png", p)
    ds = C.load_paired(tmp_path)
    assert ds.values.shape == (3, 3, 16, 32) and ds.values.dtype == torch.uint8
    assert torch.equal(ds.values[1], torch.from_numpy(pairs[1]).permute(2, 0, 1))
    small = C.load_paired(tmp_path, size=8)
    assert small.values.shape == (3, 3, 8, 16)
    x0, x1 = C.PairedCoupling().pair(small.get(torch.arange(3))[0])
    assert x0.shape == x1.shape == (3, 3, 8, 8)


def test_load_paired_resizes_halves_apart(tmp_path):
    img = np.zeros((16, 32, 3), np.uint8)
    img[:, 16:] = 255  # black left half, white right half
    _save(tmp_path / "a.png", img)
    v = C.load_paired(tmp_path, size=4).values[0]
    assert v[:, :, :4].eq(0).all() and v[:, :, 4:].eq(255).all()  # nothing bleeds across the seam


def test_load_paired_a_b_folders_match_by_name(tmp_path):
    rng = np.random.default_rng(1)
    a = {n: rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for n in ("x", "y", "z")}
    b = {n: rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for n in ("y", "x", "w")}
    for n, arr in a.items():
        _save(tmp_path / "A" / f"{n}.png", arr)
    for n, arr in b.items():
        _save(tmp_path / "B" / f"{n}.png", arr)
    ds = C.load_paired(tmp_path)
    assert ds.values.shape == (2, 3, 8, 16)  # x and y have partners
    for k, n in enumerate(("x", "y")):
        assert torch.equal(ds.values[k, :, :, :8], torch.from_numpy(a[n]).permute(2, 0, 1))
        assert torch.equal(ds.values[k, :, :, 8:], torch.from_numpy(b[n]).permute(2, 0, 1))


def test_load_paired_refuses_non_pairs(tmp_path):
    _save(tmp_path / "sq.png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(UserError, match="side-by-side"):
        C.load_paired(tmp_path)
    with pytest.raises(UserError, match="not a folder"):
        C.load_paired(tmp_path / "missing")


def test_item_shape():
    assert C.item_shape("paired", (3, 64, 128)) == (3, 64, 64)
    assert C.item_shape("corrupt:sr4", (3, 32, 32)) == (3, 32, 32)


# ---------------------------------------------------------------------------------------------- toy


def test_toy_coupling_draws_moons():
    target = torch.randn(256, 2, generator=gen())
    x0, x1 = C.make_coupling("toy:moons").pair(target, generator=gen())
    assert x0 is target and x1.shape == (256, 2)
    assert x1[:, 1].std() < x1[:, 0].std()  # moons are wider than tall


def test_toy_ot_shortens_the_paths():
    target = C.toy_sampler("checkerboard")(256, gen(1))
    ind = C.make_coupling("toy:moons").pair(target, generator=gen())[1]
    ot = C.make_coupling("toy-ot:moons").pair(target, generator=gen())[1]
    assert sq_displacement(target, ot) < 0.5 * sq_displacement(target, ind)


def test_toy_gmm_source_needs_its_config():
    gmm = load_preset("toy").data.gmm
    x1 = C.make_coupling("toy:gmm", gmm=gmm).pair(torch.zeros(100, 2), generator=gen())[1]
    assert x1.norm(dim=1).mean().item() == pytest.approx(0.7, abs=0.05)  # the ring of radius 0.7
    with pytest.raises(UserError):
        C.make_coupling("toy:gmm")


# ---------------------------------------------------------------------------------------------- parser


@pytest.mark.parametrize(("spec", "cls"), [("independent", C.IndependentCoupling), ("ot", C.OTCoupling),
                                           ("paired", C.PairedCoupling), ("paired:right", C.PairedCoupling),
                                           ("corrupt:sr4", C.CorruptCoupling),
                                           ("corrupt:blur:2.0", C.CorruptCoupling),
                                           ("toy:moons", C.DistributionCoupling),
                                           ("toy-ot:swissroll", C.DistributionCoupling)])
def test_make_coupling_builds_each_kind(spec, cls):
    cp = C.make_coupling(spec, source_noise=0.05, sinkhorn_reg=0.02)
    assert type(cp) is cls and cp.source_noise == 0.05
    assert cls.__name__ in repr(cp)
    if cls is C.OTCoupling or spec.startswith("toy-ot"):
        assert cp.reg == 0.02


@pytest.mark.parametrize("spec",
                         ["", "gaussian", "ot:3", "independent:x", "paired:top", "corrupt", "corrupt:",
                                  "corrupt:webp", "toy", "toy:spiral", "toy-ot:"])
def test_make_coupling_refuses_bad_specs(spec):
    with pytest.raises(UserError) as err:
        C.make_coupling(spec)
    assert isinstance(err.value, ValueError)
    if spec in ("", "gaussian"):
        assert "valid couplings" in str(err.value) and "corrupt:<degradation>" in str(err.value)


def test_coupling_from_config():
    cp = C.coupling_from_config(GCTMConfig(coupling="ot", source_noise=0.1, sinkhorn_reg=0.05))
    assert isinstance(cp, C.OTCoupling) and cp.source_noise == 0.1 and cp.reg == 0.05
