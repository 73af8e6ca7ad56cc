"""Recipe switches of the CTM objective: the official target dropout and the halflognormal DSM sampler."""

import pytest
import torch

from ctmtool.config import load_preset
from ctmtool.core.models import build_precond
from ctmtool.train.trajectory import ctm_objective

TINY_UNET = ["net.kind=unet", "net.unet.model_channels=8", "net.unet.channel_mult=[1]",
             "net.unet.num_blocks=1", "net.unet.attn_resolutions=[]", "net.unet.dropout=0.13",
             "distill.batch=8", "ctm.grid=4", "ctm.max_steps=2", "ctm.eval_emas=[0.9]"]


def _objective(*sets):
    p = load_preset("digits", TINY_UNET + list(sets))
    teacher = build_precond("teacher", p, (1, 8, 8)).eval().requires_grad_(False)
    return ctm_objective(p, (1, 8, 8), torch.device("cpu"), teacher, teacher.state_dict())


def test_official_dropout_keeps_the_target_in_train_mode_with_independent_masks():
    matched, official = _objective(), _objective("ctm.dropout=official")
    assert not matched.target.training and matched._dropout_seed() is not None
    assert official.target.training and official._dropout_seed() is None
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():  # a network in train mode with dropout 0.13 draws a fresh mask on every call
        for p in official.target.parameters():  # away from the near-zero init of the output layers
            p.add_(0.1 * torch.randn_like(p))
        a, b = official.target.jump(x, 2.0, 0.5), official.target.jump(x, 2.0, 0.5)
        assert not torch.equal(a, b)


def test_halflognormal_dsm_sampler_is_wired():
    obj = _objective("ctm.dsm_sampler=halflognormal")
    assert obj.terms.dsm_loss.sampler == "halflognormal"
    s = obj.terms.dsm_loss.sigmas(1000, "cpu", torch.Generator().manual_seed(0))
    assert float(s[500:].min()) > 0.3 and float(s[:500].min()) < 0.05


def test_adaptive_dsm_weight_is_computed_per_micro_batch(monkeypatch):
    """As ctm-cifar10 (karras_diffusion.py 384-392 inside train_util.py 1043's micro-batch loop): one
    lambda_DSM per micro-batch, from that micro-batch's mean losses; the step logs their mean."""
    import ctmtool.train.trajectory as traj

    obj = _objective("distill.batch=8", "distill.micro_batch=4", "ctm.dsm_weight=adaptive",
                     "net.unet.dropout=0")
    calls = []
    real = traj.adaptive_weight

    def spy(main, other, last, lo, hi):
        w = real(main, other, last, lo, hi)
        calls.append((float(main.detach()), float(other.detach()), float(w)))
        return w

    monkeypatch.setattr(traj, "adaptive_weight", spy)
    g = torch.Generator().manual_seed(0)
    batches = [(torch.rand(4, 1, 8, 8, generator=g) * 2 - 1, None) for _ in range(2)]
    logs = obj.step(batches, 0.0)
    assert len(calls) == 2 and calls[0][2] != calls[1][2]
    assert float(logs["w_dsm"]) == pytest.approx((calls[0][2] + calls[1][2]) / 2, rel=1e-6)
