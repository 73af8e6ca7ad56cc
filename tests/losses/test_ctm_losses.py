"""The CTM objective's terms on tiny shapes: gradients go where the paper says, optima are where they should
be."""

import torch

from ctmtool.config import load_preset
from ctmtool.core.analytic import GaussianMixture
from ctmtool.core.models import build_precond
from ctmtool.core.schedules import karras_sigmas
from ctmtool.losses.ctm import CTMLoss, DSMLoss, fixed_dropout, has_dropout
from ctmtool.losses.distances import squared_l2
from ctmtool.losses.edm import EDMLoss, edm_weight
from ctmtool.train.teacher_objective import frozen_copy


def _nets(seed=0):
    torch.manual_seed(seed)
    p = load_preset("toy", ["net.mlp.hidden=16", "net.mlp.depth=1", "net.mlp.emb=8"])
    online = build_precond("ctm", p, (2,))
    # a non-trivial output layer, so gradients are not all zero at init
    torch.nn.init.normal_(online.net.out[1].weight, std=0.1)
    target = frozen_copy(online)
    gmm = GaussianMixture(torch.tensor([[0.5, 0.0], [-0.5, 0.0]]), torch.tensor([1.0, 1.0]), 0.1)
    return p, online, target, gmm


def test_ctm_loss_gradient_reaches_online_but_not_target_or_teacher():
    p, online, target, gmm = _nets()
    teacher_net = build_precond("teacher", p, (2,))  # a network teacher: must get no gradient either
    for q in teacher_net.parameters():
        q.requires_grad_(True)
    loss_fn = CTMLoss(karras_sigmas(6), max_steps=3, distance=squared_l2)
    x0 = gmm.sample(32, torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(2)
    loss, x_est = loss_fn(online, target, teacher_net, x0, generator=g,
                          index_generator=torch.Generator().manual_seed(3))
    assert loss.shape == (32,) and x_est.requires_grad
    loss.mean().backward()
    assert all(q.grad is None for q in target.parameters())
    assert all(q.grad is None for q in teacher_net.parameters())
    grads = [q.grad for q in online.parameters() if q.grad is not None]
    assert grads and sum(float(gr.abs().sum()) for gr in grads) > 0


def test_ctm_loss_is_zero_for_the_exact_trajectory_map():
    """If the student's G is the teacher's own ODE map, estimate and target coincide: zero loss."""
    from ctmtool.core.analytic import ExactTrajectory

    _, _, _, gmm = _nets()
    exact = ExactTrajectory(gmm, steps=64)
    grid = karras_sigmas(5)
    # teacher = the same fine solver, so Solver(x_t, t -> u) followed by G(u -> s) equals G(t -> s) up to
    # solver error
    loss_fn = CTMLoss(grid, max_steps=1, distance=squared_l2)
    loss_fn.solver = lambda model, x, path, labels=None: exact.jump(x, path[0], path[-1])
    x0 = gmm.sample(64, torch.Generator().manual_seed(1))
    loss, _ = loss_fn(exact, exact, gmm, x0, generator=torch.Generator().manual_seed(0),
                      index_generator=torch.Generator().manual_seed(0))
    assert float(loss.max()) < 1e-6


def test_dsm_loss_optimum_is_the_posterior_mean():
    """The DSM term is minimised by the exact denoiser: any perturbation of it raises the loss."""
    _, _, _, gmm = _nets()

    class Shifted(torch.nn.Module):
        def __init__(self, eps):
            super().__init__()
            self.eps = eps

        def denoise(self, x, sigma, labels=None):
            return gmm.denoise(x, sigma) + self.eps

    x0 = gmm.sample(20000, torch.Generator().manual_seed(1))
    dsm = DSMLoss(karras_sigmas(18))
    losses = [float(dsm(Shifted(e), x0, generator=torch.Generator().manual_seed(7)).mean())
              for e in (0.0, 0.05, -0.05)]
    assert losses[0] < losses[1] and losses[0] < losses[2]


def test_edm_loss_matches_its_formula_and_weight():
    sd = 0.5
    sig = torch.tensor([0.1, 1.0, 10.0])
    assert torch.allclose(edm_weight(sig, sd), (sig**2 + sd**2) / (sig * sd) ** 2)
    _, _, _, gmm = _nets()
    x0 = gmm.sample(8, torch.Generator().manual_seed(1))
    loss = EDMLoss()(gmm, x0, generator=torch.Generator().manual_seed(1))
    assert loss.shape == (8,) and bool((loss >= 0).all())


def test_fixed_dropout_gives_matched_masks():
    drop = torch.nn.Dropout(0.5)
    x = torch.ones(1000)
    with fixed_dropout(5, torch.device("cpu")):
        a = drop(x)
    with fixed_dropout(5, torch.device("cpu")):
        b = drop(x)
    with fixed_dropout(6, torch.device("cpu")):
        c = drop(x)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_has_dropout_and_unseeded_block_leaves_the_rng_alone():
    assert has_dropout(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.1)))
    assert not has_dropout(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.0)))
    torch.manual_seed(3)
    with fixed_dropout(None, torch.device("cpu")):
        a = torch.rand(4)
    torch.manual_seed(3)
    assert torch.equal(a, torch.rand(4))  # no reseeding: the block drew from the caller's stream


def test_halflognormal_sigmas_match_the_official_sampler():
    """ctm-cifar10 resample.py HalfLogNormalHalfUniformSampler: b//2 log-normal, then Karras at u ~ U[0,
    0.7]."""
    import math

    from ctmtool.losses.ctm import halflognormal_sigmas

    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    s = halflognormal_sigmas(7, -1.2, 1.2, 0.002, 80.0, 7.0, 0.7, generator=g1)
    logn = (torch.randn(3, generator=g2) * 1.2 - 1.2).exp()
    u = torch.rand(4, generator=g2) * 0.7
    karras = (80 ** (1 / 7) + u * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    assert torch.equal(s, torch.cat([logn, karras]))
    big = halflognormal_sigmas(20000, -1.2, 1.2, 0.002, 80.0, generator=torch.Generator().manual_seed(0))
    hi = big[10000:]
    low_end = (80 ** (1 / 7) + 0.7 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    assert abs(low_end - 0.318) < 1e-3  # the range the issue quotes
    assert hi.max() <= 80.0 and hi.min() >= low_end - 1e-6 and float(hi.min()) < 0.33
    assert (abs(float(big[:10000].log().mean()) + 1.2) < 0.05
            and abs(float(big[:10000].log().std()) - 1.2) < 0.05)
    assert math.isclose(float((hi.float() ** (1 / 7)).mean()),
                        80 ** (1 / 7) + 0.35 * (0.002 ** (1 / 7) - 80 ** (1 / 7)), rel_tol=0.01)


def test_has_dropout_sees_songunet_functional_dropout():
    """SongUNet applies dropout functionally (no nn.Dropout module); matched masks must still be used."""
    from ctmtool.nets.songunet import SongUNet

    kw = dict(model_channels=8, channel_mult=[1], num_blocks=1, attn_resolutions=[])
    assert has_dropout(SongUNet(8, 1, 1, dropout=0.13, **kw))
    assert not has_dropout(SongUNet(8, 1, 1, dropout=0.0, **kw))
