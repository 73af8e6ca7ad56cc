"""The training steps under bf16 autocast, as CUDA runs them (`precision = "bf16"`), checked on the CPU.

`ctmtool.device.autocast` is a no-op on the CPU, so CI never ran the dtypes the GPU's first minutes run: here
it is replaced by CPU bf16 autocast, and a teacher step and CTM steps (CTM + DSM with the adaptive weight,
then the GAN phase) must run, stay finite, keep float32 parameters, gradients, EMAs and optimiser state,
actually compute in bf16, and give losses near the float32 steps' (bf16 keeps 8 bits of mantissa: about 1%
here).
"""

from __future__ import annotations

import copy
from contextlib import nullcontext

import pytest
import torch

from ctmtool.config import load_preset
from ctmtool.core.models import build_precond
from ctmtool.nets.discriminator import Discriminator
from ctmtool.train import teacher_objective as objectives
from ctmtool.train import trajectory
from ctmtool.train.teacher_objective import TeacherObjective
from ctmtool.train.trajectory import ctm_objective

TINY_UNET = ["net.kind=unet", "net.unet.model_channels=8", "net.unet.channel_mult=[1,2]",
             "net.unet.num_blocks=1", "net.unet.attn_resolutions=[4]", "net.unet.dropout=0.0", "ctm.grid=6",
             "ctm.max_steps=3", "ctm.eval_emas=[0.9]", "ctm.dsm_weight=adaptive"]
CPU = torch.device("cpu")


def _cpu_bf16(device, precision="fp32"):
    return torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else nullcontext()


@pytest.fixture
def bf16_on_cpu(monkeypatch):
    for mod in (objectives, trajectory):
        monkeypatch.setattr(mod, "autocast", _cpu_bf16)


def _conv_dtypes(net: torch.nn.Module) -> set:
    seen = set()
    for m in net.modules():
        if m.__class__.__name__ == "Conv2d" and getattr(m, "weight", None) is not None:
            m.register_forward_hook(lambda mod, inp, out: seen.add(out.dtype))
    return seen


def _batches(shape, n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(n, *shape, generator=g) * 2 - 1, None)]


def _all_float32(obj) -> None:
    for name, opt in obj.optimizers.items():
        for group in opt.param_groups:
            for p in group["params"]:
                assert p.dtype == torch.float32 and (p.grad is None or p.grad.dtype == torch.float32), name
                for v in opt.state[p].values():
                    assert (not torch.is_tensor(v) or v.dtype in (torch.float32, torch.int64)
                            or v.ndim == 0), name


def _finite(logs: dict) -> None:
    for k, v in logs.items():
        assert torch.isfinite(torch.as_tensor(v)).all(), (k, v)


def test_teacher_step_under_bf16(bf16_on_cpu):
    shape = (1, 8, 8)
    losses = {}
    for precision in ("fp32", "bf16"):
        p = load_preset("digits", TINY_UNET + [f"teacher.precision={precision}"])
        obj = TeacherObjective(p, shape, CPU)
        seen = _conv_dtypes(obj.net)
        logs = obj.step(_batches(shape), 0.0)
        _finite(logs)
        _all_float32(obj)
        assert all(t.dtype == torch.float32 for t in obj.ema.state_dict().values() if t.is_floating_point())
        assert seen == ({torch.bfloat16} if precision == "bf16" else {torch.float32})
        losses[precision] = float(logs["loss"])
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=0.05)


@pytest.mark.parametrize("gan", [False, True])
def test_ctm_steps_under_bf16(bf16_on_cpu, gan):
    shape = (1, 8, 8)
    out = {}
    for precision in ("fp32", "bf16"):
        p = load_preset("digits",
                        TINY_UNET + [f"distill.precision={precision}", f"gan.enabled={str(gan).lower()}",
                                               "gan.g_period=1"])
        torch.manual_seed(0)
        teacher = build_precond("teacher", p, shape).eval().requires_grad_(False)
        disc = Discriminator(1, 8, channels=8) if gan else None
        obj = ctm_objective(p, shape, CPU, teacher, copy.deepcopy(teacher.state_dict()), discriminator=disc)
        seen = _conv_dtypes(obj.net)
        before = [q.clone() for q in obj.net.parameters()]
        logs = [obj.step(_batches(shape, seed=i), 1e6) for i in range(2)]
        for lg in logs:
            _finite(lg)
        _all_float32(obj)
        assert any(not torch.equal(a, b) for a, b in zip(before, obj.net.parameters(), strict=True))
        for m in (obj.target, *obj.emas.values()):
            assert all(t.dtype == torch.float32 for t in m.state_dict().values() if t.is_floating_point())
        assert seen == ({torch.bfloat16} if precision == "bf16" else {torch.float32})
        if gan:
            assert "gan" in logs[0] and "disc" in logs[0]
        out[precision] = float(logs[0]["ctm"]), float(logs[0]["dsm"])
    for a, b in zip(out["bf16"], out["fp32"], strict=True):
        assert a == pytest.approx(b, rel=0.05)
