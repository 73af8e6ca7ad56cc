"""The GCTM objective: time grid, weighted distance, gradient flow, the DSM optimum, moments in
checkpoints."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ctmtool.checkpoint import save_checkpoint
from ctmtool.config import load_preset
from ctmtool.core.models import build_precond, load_model
from ctmtool.core.precond import GCTMPrecond
from ctmtool.core.schedules import gctm_times as gctm_grid
from ctmtool.core.schedules import karras_sigmas
from ctmtool.gctm.couplings import IndependentCoupling
from ctmtool.losses.distances import PseudoHuber, SquaredL2
from ctmtool.train.gctm_objective import GCTMLoss, gctm_objective, interpolate, weighted_distance


def _gctm_preset(**sets):
    over = ["net.mlp.hidden=32", "net.mlp.depth=1", "net.mlp.emb=16", "gctm.grid=6", "gctm.max_steps=3",
            "distill.batch=64"] + [f"{k}={v}" for k, v in sets.items()]
    return load_preset("toy-translate", over)


def test_grid_maps_karras_sigmas_with_exact_ends():
    t = gctm_grid(18)
    s = karras_sigmas(18)
    assert t[0] == 1.0 and t[-1] == 0.0
    assert torch.allclose(t[1:-1], (s / (1 + s))[1:-1])
    assert (t[1:] < t[:-1]).all()
    assert gctm_grid(2).tolist() == [1.0, 0.0]


def test_interpolate_is_the_flow_matching_path():
    x0, x1 = torch.randn(3, 2), torch.randn(3, 2)
    t = torch.tensor([0.0, 0.25, 1.0])
    xt = interpolate(x0, x1, t)
    assert torch.allclose(xt[0], x0[0]) and torch.allclose(xt[2], x1[2])
    assert torch.allclose(xt[1], 0.75 * x0[1] + 0.25 * x1[1])


def test_weighted_distance_matches_the_reference_formulas():
    x, y = torch.randn(5, 3, 4, 4), torch.randn(5, 3, 4, 4)
    w, c = torch.rand(5) + 0.1, 0.03
    sq = (x - y).flatten(1).square().sum(1)
    ref_ph = ((sq + (c * w) ** 2).sqrt() - c * w) / w  # 1202kbs/GCTM distances.ph_loss with weight w
    assert torch.allclose(weighted_distance(x, y, w, PseudoHuber(c)), ref_ph, rtol=1e-5)
    assert torch.allclose(weighted_distance(x, y, w, SquaredL2()), sq / w**2, rtol=1e-5)


class CallLog(nn.Module):
    """Wraps a GCTMPrecond and records, for every jump / g call, whether gradients were being recorded."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, []

    def jump(self, x, t, s, labels=None):
        self.calls.append(("jump", torch.is_grad_enabled()))
        return self.inner.jump(x, t, s, labels)

    def denoise(self, x, t, labels=None):
        self.calls.append(("denoise", torch.is_grad_enabled()))
        return self.inner.denoise(x, t, labels)

    def coefficients(self, t):
        return self.inner.coefficients(t)


def _random_gctm(seed=0, dim=2):
    torch.manual_seed(seed)
    p = _gctm_preset()
    net = build_precond("gctm", p, (dim,), {"moments": {"var0": 0.25, "var1": 0.3, "cov01": 0.1}})
    for prm in net.parameters():  # the output layer starts at zero: make F non-trivial
        nn.init.normal_(prm, std=0.3)
    return net


def test_ctm_term_gradient_reaches_the_estimate_only():
    online, target = _random_gctm(0), _random_gctm(1).requires_grad_(False)
    log_online, log_target = CallLog(online), CallLog(target)
    loss = GCTMLoss(gctm_grid(6), 3, PseudoHuber(0.01))
    x0, x1 = torch.randn(32, 2), torch.randn(32, 2)
    per_sample, x_est = loss.ctm(log_online, log_target, x0, x1,
                                 index_generator=torch.Generator().manual_seed(0))
    assert per_sample.shape == (32,) and x_est.requires_grad
    assert log_online.calls[0] == ("jump", True)  # the estimate G_theta(x_t, t, s)
    assert all(not grad for _, grad in log_online.calls[1:])  # the target jump G_sg(theta)(x_u, u, s)
    # Heun on the EMA
    assert log_target.calls and all(kind == "denoise" and not grad for kind, grad in log_target.calls)
    per_sample.mean().backward()
    grads = [p.grad for p in online.parameters()]
    assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0
    assert all(p.grad is None for p in target.parameters())


def test_ctm_term_with_the_online_net_as_target_equals_a_detached_target():
    """Even when the solver runs on the online net itself, the target side carries no gradient."""
    net = _random_gctm(2)
    loss = GCTMLoss(gctm_grid(6), 3, SquaredL2())
    x0, x1 = torch.randn(16, 2), torch.randn(16, 2)
    l1, _ = loss.ctm(net, net, x0, x1, index_generator=torch.Generator().manual_seed(3))
    g1 = torch.autograd.grad(l1.sum(), list(net.parameters()))
    assert all(torch.isfinite(g).all() for g in g1)
    with torch.no_grad():
        l2, _ = loss.ctm(net, net, x0, x1, index_generator=torch.Generator().manual_seed(3))
    assert torch.allclose(l1.detach(), l2)


class LinearF(nn.Module):
    """F(x) = a * x + b: F = 0 (a = b = 0) makes g(x_t, t, t) = c_skip(t) x_t."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Parameter(torch.zeros(())), nn.Parameter(torch.zeros(()))

    def forward(self, x, noise_t, noise_s=None, labels=None):
        return self.a * x + self.b


def test_dsm_term_is_minimised_by_the_posterior_mean():
    """x0 ~ N(0, v0 I), x1 ~ N(0, v1 I) independent: E[x0 | x_t] = c_skip(t) x_t, so F = 0 is optimal and the
    expected loss there is exactly D (each dimension's residual variance is c_out^2)."""
    v0, v1, dim, n = 0.25, 1.0, 4, 40000
    model = GCTMPrecond(LinearF(), var0=v0, var1=v1, cov01=0.0)
    loss = GCTMLoss(gctm_grid(18), 17, SquaredL2(), dsm_times="uniform")
    g = torch.Generator().manual_seed(0)
    x0, x1 = (math.sqrt(v0) * torch.randn(n, dim, generator=g),
              math.sqrt(v1) * torch.randn(n, dim, generator=g))

    def dsm(a: float, b: float) -> torch.Tensor:
        with torch.no_grad():
            model.net.a.fill_(a)
            model.net.b.fill_(b)
        return loss.dsm(model, x0, x1, generator=torch.Generator().manual_seed(1)).mean()

    def value(a: float, b: float) -> float:
        return float(dsm(a, b).detach())

    at_opt = dsm(0.0, 0.0)
    assert float(at_opt.detach()) == pytest.approx(dim, rel=0.03)
    grads = torch.autograd.grad(at_opt, [model.net.a, model.net.b])
    assert all(abs(float(gr)) < 0.05 * dim for gr in grads)
    for a, b in ((0.2, 0.0), (-0.2, 0.0), (0.0, 0.2), (0.0, -0.2)):
        assert value(a, b) > float(at_opt.detach()) + 0.02 * dim


def test_dsm_times_cover_the_grid_including_t_equal_one():
    for kind in ("lognormal", "uniform", "beta_3_1"):
        loss = GCTMLoss(gctm_grid(6), 3, SquaredL2(), dsm_times=kind)
        t = loss.sample_dsm_times(4000, torch.Generator().manual_seed(0))
        assert t.shape == (4000,) and (t > 0).all() and (t <= 1).all()
        assert (t == 1.0).any()  # the grid share includes t_0 = 1, where translation starts


def test_objective_step_and_moments_round_trip(tmp_path):
    p = _gctm_preset(**{"gctm.coupling": '"toy:moons"'})
    moments = {"var0": 0.21, "var1": 0.34, "cov01": -0.05}
    obj = gctm_objective(p, (2,), torch.device("cpu"), IndependentCoupling(), moments)
    x = torch.randn(64, 2)
    before = [q.clone() for q in obj.net.parameters()]
    logs = obj.step([(x, None)], 0.0)
    assert set(logs) == {"loss", "ctm", "dsm", "w_dsm"} and all(torch.isfinite(v) for v in logs.values())
    assert any(not torch.equal(a, b) for a, b in zip(before, obj.net.parameters(), strict=True))
    ckpt = obj.checkpoint({"step": 1, "kimg": 0.064})
    # the labels as the reference's network: t = 0 -> sigma_min, t = 1 -> sigma_max (ln(sigma_max)/4, not
    # ln(9999)/4)
    want = {**moments, "label_range": [p.diffusion.sigma_min, p.diffusion.sigma_max]}
    assert ckpt.kind == "gctm" and ckpt.meta["moments"] == want
    path = save_checkpoint(tmp_path / "g.safetensors", ckpt)
    model = load_model(path)
    assert model.kind == "gctm"
    assert (model.net.var0, model.net.var1, model.net.cov01) == (0.21, 0.34, -0.05)
    xt, t = torch.randn(8, 2), torch.full((8,), 0.7)
    with torch.no_grad():
        assert torch.allclose(model.net.jump(xt, t, t * 0), obj.sampling_model().jump(xt, t, t * 0),
                              atol=1e-6)
    obj2 = gctm_objective(p, (2,), torch.device("cpu"), IndependentCoupling(), model.meta["moments"])
    from ctmtool.checkpoint import load_checkpoint

    obj2.restore(load_checkpoint(path))
    assert obj2.steps == 1
    assert all(torch.equal(a, b) for a, b in zip(obj.net.parameters(), obj2.net.parameters(), strict=True))


def test_non_finite_loss_is_reported_not_applied():
    p = _gctm_preset(**{"gctm.coupling": '"toy:moons"'})
    obj = gctm_objective(p, (2,), torch.device("cpu"), IndependentCoupling(),
                         {"var0": 0.25, "var1": 1.0, "cov01": 0.0})
    before = [q.clone() for q in obj.net.parameters()]
    out = obj.step([(torch.full((8, 2), float("nan")), None)], 0.0)
    assert out == {"finite": False}
    assert all(torch.equal(a, b) for a, b in zip(before, obj.net.parameters(), strict=True))


# ---------------------------------------------------------------------------------------------- torchrun

DDP_RUN = ["net.mlp.hidden=16", "net.mlp.depth=1", "net.mlp.emb=8", "data.n=512", "distill.batch=16",
           "distill.kimg=0.048", "gctm.grid=6", "gctm.max_steps=3", 'gctm.coupling="toy:moons"']


def _fit_gctm(run_dir):
    from ctmtool.cli.common import Reporter
    from ctmtool.data import load_dataset
    from ctmtool.train.gctm_run import make_coupling_for
    from ctmtool.train.loop import fit

    preset = load_preset("toy-translate", DDP_RUN)
    data = load_dataset(preset.data)
    obj = gctm_objective(preset, data.shape, torch.device("cpu"), make_coupling_for(preset),
                        {"var0": 0.25, "var1": 0.25, "cov01": 0.0})
    res = fit(obj, data, preset.distill, run_dir, Reporter(quiet=True), device=torch.device("cpu"))
    return obj, res


def _ddp_worker(r: int, world: int, port: int, out: str):
    import os

    from ctmtool.core import distributed as ddp

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(r),
                      LOCAL_RANK=str(r), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    ddp.setup(torch.device("cpu"))
    obj, res = _fit_gctm(os.path.join(out, "run"))
    if r == 0:
        torch.save({"net": obj.net.state_dict(), "steps": res.steps}, os.path.join(out, "rank0.pt"))
    ddp.teardown()


def test_two_gloo_ranks_equal_one_process(tmp_path):
    import socket

    import torch.distributed as dist

    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("needs gloo")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_ddp_worker, args=(2, port, str(tmp_path / "ddp")), nprocs=2, join=True)
    got = torch.load(tmp_path / "ddp" / "rank0.pt")
    obj, res = _fit_gctm(tmp_path / "one")
    assert got["steps"] == res.steps == 3
    for (name, p), q in zip(got["net"].items(), obj.net.state_dict().values(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)
