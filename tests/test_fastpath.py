"""The traced, frozen Heun program against `solvers.heun` (the eager path): the same solve to float32 rounding."""

from __future__ import annotations

import pytest
import torch

from ctmtool import solvers
from ctmtool.export import random_checkpoint
from ctmtool.fastpath import heun_program
from ctmtool.models import load_model
from ctmtool.schedules import karras_sigmas

# The folded noise embedding is one row instead of B (a GEMM may sum in another order): a few float32 ulps per
# step, carried through 18 steps of an ODE that contracts them. Stated tolerance: 1e-5 of the output's scale.
RTOL = 1e-5


def _check(model, x, sigmas, labels=None):
    prog = heun_program(model.net, sigmas, x, labels)
    want = solvers.heun(model.net, x, sigmas, labels)
    got = prog(x, labels)
    assert got.shape == want.shape and got.dtype == want.dtype
    assert float((got - want).abs().max()) <= RTOL * float(want.abs().max())
    # the program is reused on new inputs of the same shape
    x2 = torch.randn(x.shape, generator=torch.Generator().manual_seed(9)) * float(sigmas[0])
    want2, got2 = solvers.heun(model.net, x2, sigmas, labels), prog(x2, labels)
    assert float((got2 - want2).abs().max()) <= RTOL * float(want2.abs().max())
    assert not torch.allclose(got2, got)


@pytest.mark.parametrize("batch", [1, 5])
def test_digits_teacher_heun_program(tmp_path, batch):
    model = load_model(random_checkpoint(tmp_path / "t.safetensors", "digits", "teacher"))
    sigmas = torch.cat([karras_sigmas(18, model.sigma_min, model.sigma_max, 7.0), torch.zeros(1, dtype=torch.float64)])
    x = torch.randn(batch, *model.data_shape, generator=torch.Generator().manual_seed(batch)) * model.sigma_max
    _check(model, x, sigmas)


def test_conditional_unet_teacher_without_a_final_zero(tmp_path):
    over = ["net.unet.model_channels=16", "net.unet.channel_mult=[1,2]", "net.unet.num_blocks=1",
            "net.unet.attn_resolutions=[16]", "net.label_dim=10"]
    model = load_model(random_checkpoint(tmp_path / "c.safetensors", "cifar10", "teacher", overrides=over))
    sigmas = karras_sigmas(4, 0.5, model.sigma_max, 7.0)  # stops at 0.5: the last step keeps Heun's correction
    x = torch.randn(2, *model.data_shape, generator=torch.Generator().manual_seed(0)) * model.sigma_max
    _check(model, x, sigmas, labels=torch.tensor([3, 7]))
