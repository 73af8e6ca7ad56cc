"""The class-Gaussian `latent` coupling (1202kbs/GCTM couplings.py 118-130) against closed forms: the class
statistics, the official pairing formula draw for draw, the pairs' class-conditional moments on a toy whose
classes are Gaussians, the coupling's overall moments, and the map between class Gaussians."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ctmtool.core.precond import GCTMPrecond
from ctmtool.data.base import Dataset
from ctmtool.errors import UserError
from ctmtool.gctm import couplings as C
from ctmtool.gctm.degrade import randn


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# three classes in 4-D, each an axis-aligned Gaussian: means M[c], stds S[c]; weights 1 : 2 : 1
M = torch.tensor([[1.0, -1.0, 0.5, 0.0], [-0.5, 0.5, 0.0, 2.0], [0.0, 0.0, -1.5, -1.0]])
S = torch.tensor([[0.3, 0.5, 0.2, 0.4], [0.6, 0.1, 0.3, 0.2], [0.2, 0.2, 0.5, 0.3]])
W = torch.tensor([1.0, 2.0, 1.0])


def class_toy(n: int = 40000, seed: int = 7) -> Dataset:
    g = gen(seed)
    y = torch.multinomial(W / W.sum(), n, replacement=True, generator=g)
    x = M[y] + S[y] * torch.randn(n, 4, generator=g)
    return Dataset(x, y, 3, name="class toy")


def test_class_statistics_are_the_per_class_mean_and_unbiased_std():
    ds = class_toy(3000)
    means, stds = C.class_statistics(ds.values, ds.labels, 3)
    x, y = ds.values.double().numpy(), ds.labels.numpy()
    for c in range(3):
        assert np.allclose(means[c].numpy(), x[y == c].mean(0), atol=1e-6)
        assert np.allclose(stds[c].numpy(), x[y == c].std(0, ddof=1), atol=1e-6)
    means2, stds2 = C.class_statistics(ds.values, ds.labels, 3, sigma=0.5)
    assert torch.equal(means2, means) and bool((stds2 == 0.5).all())
    # a dimension constant over a class keeps a proper Gaussian (digit borders)
    flat = torch.zeros(4, 2)
    _, sd = C.class_statistics(flat, torch.tensor([0, 0, 1, 1]))
    assert bool((sd == C.MIN_CLASS_STD).all())


def test_statistics_in_chunks_match_and_the_dataset_path_agrees(monkeypatch):
    """Chunked two-pass statistics (CIFAR-10 does not fit in float64 at once) equal the one-shot numpy ones;
    LatentCoupling.from_dataset (chunks of ds.get) gives the same tensors as class_statistics."""
    monkeypatch.setattr(C, "STATS_CHUNK", 7)
    ds = class_toy(300)
    means, stds = C.class_statistics(ds.values, ds.labels, 3)
    x, y = ds.values.double().numpy(), ds.labels.numpy()
    for c in range(3):
        assert np.allclose(means[c].numpy(), x[y == c].mean(0), atol=1e-6)
        assert np.allclose(stds[c].numpy(), x[y == c].std(0, ddof=1), atol=1e-6)
    st = C.LatentCoupling.from_dataset(ds).source_state()
    assert torch.equal(st["source_means"], means) and torch.equal(st["source_stds"], stds)
    with pytest.raises(ValueError, match="too few items"):
        C.class_statistics(ds.values[:5], torch.zeros(5, dtype=torch.long), 2)


def test_pairs_follow_the_official_formula_draw_for_draw():
    """1202kbs/GCTM: X1 = mus[y0] + randn_like(X0) * stds[y0]; the same noise gives the same x1, bit for
    bit."""
    ds = class_toy(512)
    means, stds = C.class_statistics(ds.values, ds.labels, 3)
    cp = C.LatentCoupling(means, stds)
    x0, y0 = ds.get(torch.arange(64))
    a, x1 = cp.pair(x0, y0, gen(3))
    official = means[y0] + randn(x0.shape, gen(3), x0.device, x0.dtype) * stds[y0]
    assert torch.equal(a, x0) and torch.equal(x1, official)
    # source noise (the reference's X1_eps_std) is added after pairing, as data.py sample_joint
    _, x1n = C.LatentCoupling(means, stds, source_noise=0.1).pair(x0, y0, gen(3))
    assert not torch.equal(x1n, x1)


def test_pairs_have_the_class_conditional_moments_in_closed_form():
    """Given class c, x1 ~ N(mu_c, diag s_c^2) independent of x0: mean, variance and Cov(x0, x1 | c) = 0,
    within 5 standard errors; overall Cov(x0, x1) is the spread of the class means (the law of total
    covariance)."""
    ds = class_toy()
    cp = C.make_coupling("latent", data=ds)
    x0, y = ds.get(torch.arange(len(ds)))
    _, x1 = cp.pair(x0, y, gen(11))
    for c in range(3):
        a, b = x0[y == c].double(), x1[y == c].double()
        n = len(a)
        assert torch.allclose(b.mean(0), M[c].double(), atol=5 * float(S[c].max()) / n**0.5)
        assert torch.allclose(b.std(0), S[c].double(), rtol=5 * (0.5 / n) ** 0.5)
        cov = ((a - a.mean(0)) * (b - b.mean(0))).mean(0)
        assert bool((cov.abs() < 5 * (S[c].double() ** 2) / n**0.5).all())
    p = (W / W.sum()).double()
    mbar = (p[:, None] * M.double()).sum(0)
    between = (p[:, None] * (M.double() - mbar) ** 2).sum(0)  # Var_c E[x | c], the same on both sides
    within = (p[:, None] * S.double() ** 2).sum(0)
    m = cp.moments(x0, y, gen(12), batch=len(x0))
    assert m["cov01"] == pytest.approx(float(between.mean()), rel=0.03)
    assert m["var1"] == pytest.approx(float((between + within).mean()), rel=0.03)
    assert m["var0"] == pytest.approx(float((between + within).mean()), rel=0.03)


def test_latent_sigma_spec_uses_one_std():
    ds = class_toy(2000)
    cp = C.make_coupling("latent:0.25", data=ds)
    x0, y = ds.get(torch.arange(len(ds)))
    _, x1 = cp.pair(x0, y, gen(1))
    for c in range(3):
        r = x1[y == c] - cp.source_state()["source_means"][c]
        assert float(r.std()) == pytest.approx(0.25, rel=0.06)


@pytest.mark.parametrize("spec", ["latent:0", "latent:-1", "latent:abc", "latent:inf"])
def test_bad_sigma_is_refused(spec):
    with pytest.raises(UserError, match="sigma must be a positive number"):
        C.make_coupling(spec, data=class_toy(100))


def test_data_without_labels_is_refused_in_one_line():
    ds = Dataset(torch.randn(20, 4), name="unlabelled points")
    with pytest.raises(UserError) as err:
        C.make_coupling("latent", data=ds)
    msg = str(err.value)
    assert "\n" not in msg and "no labels" in msg and "unlabelled points" in msg
    with pytest.raises(ValueError, match="needs labels"):
        C.LatentCoupling(torch.zeros(2, 4), torch.ones(2, 4)).pair(torch.zeros(3, 4))


def test_move_latent_is_the_map_between_class_gaussians():
    """mu_b + (s_b / s_a)(x - mu_a) sends N(mu_a, s_a^2) to N(mu_b, s_b^2) exactly; equal stds: a shift."""
    net = GCTMPrecond(torch.nn.Identity(), class_source=(3, 4))
    net.set_class_source(M, S)
    z = torch.randn(6, 4, generator=gen(2))
    a, b = torch.tensor([0, 0, 1, 1, 2, 2]), torch.tensor([1, 2, 0, 2, 0, 1])
    moved = net.move_latent(M[a] + S[a] * z, a, b)
    assert torch.allclose(moved, M[b] + S[b] * z, atol=1e-6)
    net.set_class_source(M, torch.full_like(S, 0.3))
    x = torch.randn(6, 4, generator=gen(3))
    assert torch.allclose(net.move_latent(x, a, b), x + M[b] - M[a], atol=1e-6)
    with pytest.raises(ValueError, match="no classes"):
        GCTMPrecond(torch.nn.Identity()).move_latent(x, a, b)
    assert net.state_dict()["source_means"].shape == (3, 4)
