"""Hinge losses on known values; the adaptive weight against closed-form gradient norms, its clamps and edge
cases."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ctmtool.losses.gan import adaptive_weight, d_hinge_loss, g_hinge_loss


def test_d_hinge_known_values():
    real = [torch.tensor([2.0, 0.5, -1.0]), torch.tensor([[0.0]])]
    fake = [torch.tensor([-2.0, 0.0, 1.0]), torch.tensor([[-0.5]])]
    # head 1: relu(1-r) = (0, .5, 2) -> 5/6; relu(1+f) = (0, 1, 2) -> 1; head 2: 1 + 0.5
    expected = ((2.5 / 3 + 1.0) + (1.0 + 0.5)) / 2
    torch.testing.assert_close(d_hinge_loss(real, fake), torch.tensor(expected))
    torch.testing.assert_close(d_hinge_loss(torch.tensor([3.0]), torch.tensor([-3.0])), torch.tensor(0.0))


def test_g_hinge_known_values():
    fake = [torch.tensor([1.0, 3.0]), torch.tensor([[-4.0]])]
    torch.testing.assert_close(g_hinge_loss(fake), torch.tensor(-(2.0 - 4.0) / 2))
    torch.testing.assert_close(g_hinge_loss(torch.tensor([0.5])), torch.tensor(-0.5))


def test_hinge_errors():
    with pytest.raises(ValueError, match="2 real heads but 1 fake"):
        d_hinge_loss([torch.zeros(1), torch.zeros(1)], [torch.zeros(1)])
    with pytest.raises(ValueError, match="no logits"):
        g_hinge_loss([])


def _linear():
    """y = W x with W (1, 2); for a fixed x, grad_W (a . y) = a x^T, of norm |a| ||x||."""
    lin = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[0.3, -0.7]]))
    x = torch.tensor([[3.0, 4.0]])  # ||x|| = 5
    return lin, lin(x).sum()


def test_adaptive_weight_closed_form():
    lin, y = _linear()
    main, other = 2.0 * y, 0.5 * y  # gradient norms 10 and 2.5
    w = adaptive_weight(main, other, lin.weight, lo=0.0, hi=1e4)
    torch.testing.assert_close(w, torch.tensor(10.0 / (2.5 + 1e-4)))
    assert not w.requires_grad
    (main + w * other).backward()  # graphs retained
    assert lin.weight.grad is not None


def test_adaptive_weight_quadratic():
    """main = ||W||^2 -> grad 2W; other = W . v -> grad v."""
    W = torch.tensor([[1.0, 2.0, 2.0]], requires_grad=True)  # ||W|| = 3
    v = torch.tensor([[0.0, 4.0, 0.0]])
    w = adaptive_weight(W.square().sum(), (W * v).sum(), W, lo=0.0, hi=100.0)
    torch.testing.assert_close(w, torch.tensor(6.0 / (4.0 + 1e-4)))


def test_adaptive_weight_clamps():
    lin, y = _linear()
    assert adaptive_weight(1000 * y, y, lin.weight, lo=0.01, hi=10.0).item() == 10.0
    assert adaptive_weight(1e-6 * y, y, lin.weight, lo=0.01, hi=10.0).item() == pytest.approx(0.01)


def test_adaptive_weight_module_and_list():
    lin = nn.Linear(2, 1)
    x = torch.tensor([[3.0, 4.0]])
    y = lin(x).sum()  # grad_W = x (norm 5), grad_b = 1: joint norm sqrt(26)
    w = adaptive_weight(y, 2 * y, lin, lo=0.0, hi=1e4)
    torch.testing.assert_close(w, torch.tensor(math.sqrt(26) / (2 * math.sqrt(26) + 1e-4)))
    w2 = adaptive_weight(y, 2 * y, [lin.weight, lin.bias], lo=0.0, hi=1e4)
    torch.testing.assert_close(w, w2)


def test_adaptive_weight_unreached_losses():
    lin, y = _linear()
    other_param = torch.ones(2, requires_grad=True)
    unreached = other_param.sum()  # has a graph, but not through lin.weight
    assert adaptive_weight(y, unreached, lin.weight, lo=0.01, hi=10.0).item() == 10.0
    assert adaptive_weight(y, torch.tensor(3.0), lin.weight, lo=0.01, hi=10.0).item() == 10.0  # constant
    assert adaptive_weight(unreached, y, lin.weight, lo=0.01, hi=10.0).item() == pytest.approx(0.01)


def test_adaptive_weight_nan_gives_lo():
    lin, y = _linear()
    w = adaptive_weight(y * torch.tensor(float("nan")), y, lin.weight, lo=0.01, hi=10.0)
    assert w.item() == pytest.approx(0.01)


def test_adaptive_weight_needs_scalars():
    W = torch.ones(2, requires_grad=True)
    with pytest.raises(ValueError, match="scalar"):
        adaptive_weight(W * 2, W.sum(), W, lo=0.0, hi=1.0)


def test_alternation_of_generator_and_discriminator_steps():
    """ctm-cifar10 train_util.py run_step: with g_learning_period 2, G on even steps, D on odd ones."""
    from ctmtool.losses.gan import Alternation

    a = Alternation(2)
    assert [a.generator(k) for k in range(6)] == [True, False, True, False, True, False]
    assert [a.discriminator(k) for k in range(6)] == [False, True, False, True, False, True]
    assert a.step_of(3, 2) == 5 and not a.generator(a.step_of(3, 2))
    a3 = Alternation(3)
    assert [a3.generator(k) for k in range(6)] == [True, False, False, True, False, False]
    one = Alternation(1)
    assert all(one.generator(k) and one.discriminator(k) for k in range(4)) and one.step_of(7, 7) == 7
    import pytest

    with pytest.raises(ValueError):
        Alternation(0)
