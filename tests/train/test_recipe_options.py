"""Recipe switches of the CTM objective: the official target dropout and the halflognormal DSM sampler."""

import torch

from ctmtool.config import load_preset
from ctmtool.core.models import build_precond
from ctmtool.train.trajectory import ctm_objective

TINY_UNET = ["net.kind=unet", "net.unet.model_channels=8", "net.unet.channel_mult=[1]", "net.unet.num_blocks=1",
             "net.unet.attn_resolutions=[]", "net.unet.dropout=0.13", "distill.batch=8", "ctm.grid=4",
             "ctm.max_steps=2", "ctm.eval_emas=[0.9]"]


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
