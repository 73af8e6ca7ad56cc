"""ctm.s_sampler = "sigma_min": consistency distillation (CD) as the CTM objective with s fixed at
sigma_min."""

from __future__ import annotations

import pytest
import torch

from ctmtool.config import load_preset
from ctmtool.core.schedules import karras_sigmas
from ctmtool.losses.ctm import CTMLoss


class Recorder:
    """A stand-in network: G(x, t, s) = x, recording every (t, s) it is asked for."""

    def __init__(self):
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def jump(self, x, t, s, labels=None):
        self.calls.append((t.clone(), s.clone()))
        return x


def _draws(s_sampler: str) -> tuple[Recorder, Recorder]:
    grid = karras_sigmas(8)
    loss = CTMLoss(grid, max_steps=3, distance=lambda a, b: (a - b).flatten(1).pow(2).sum(1),
                   s_sampler=s_sampler)
    loss.solver = lambda model, x, path, labels=None: x  # no teacher solve needed to see the draws
    online, target = Recorder(), Recorder()
    x0 = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    loss(online, target, None, x0, generator=torch.Generator().manual_seed(1),
         index_generator=torch.Generator().manual_seed(2))
    return online, target


def test_cd_fixes_s_at_sigma_min_and_keeps_the_other_draws():
    grid = karras_sigmas(8)
    smin = float(grid[-1])
    cd_online, _ = _draws("sigma_min")
    ctm_online, _ = _draws("uniform")
    (t_cd, s_cd), (u_cd, s2_cd) = cd_online.calls  # estimate G(x_t, t, s) and target-side G(x_u, u, s)
    (t_ctm, s_ctm), (u_ctm, _) = ctm_online.calls
    assert torch.allclose(s_cd, torch.full_like(s_cd, smin)) and torch.allclose(s2_cd, s_cd)
    assert torch.equal(t_cd, t_ctm) and torch.equal(u_cd, u_ctm)  # the same t, u stream as CTM
    # CTM's s does vary: the setting changes something
    assert float((s_ctm > smin * 1.0001).float().mean()) > 0.3


def test_s_sampler_is_a_preset_setting():
    assert load_preset("digits").ctm.s_sampler == "uniform"
    p = load_preset("digits", ["ctm.s_sampler=sigma_min"])
    assert p.ctm.s_sampler == "sigma_min"
    with pytest.raises(Exception, match="s_sampler"):
        load_preset("digits", ["ctm.s_sampler=zero"])
    with pytest.raises(ValueError, match="s_sampler"):
        CTMLoss(karras_sigmas(4), 1, lambda a, b: a, s_sampler="zero")
