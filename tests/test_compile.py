"""torch.compile(fullgraph=True) of every network call training and sampling make: no graph breaks (fullgraph
raises on one) and no recompilation across steps (one compiled frame for calls with new values).

Most checks use dynamo's CompileCounter backend (traces the whole graph, runs it eagerly: fast); the `slow`
ones lower the same graphs with Inductor on the CPU and compare with eager outputs.
"""

from __future__ import annotations

import pytest
import torch
import torch._dynamo as dynamo
from torch._dynamo.testing import CompileCounter

from ctmtool.core import solvers
from ctmtool.core.noise import PhiloxNoise
from ctmtool.core.precond import CTMPrecond, EDMPrecond
from ctmtool.core.sampling import gamma_sample
from ctmtool.core.schedules import ctm_default_schedule
from ctmtool.nets.mlp import MLP
from ctmtool.nets.songunet import SongUNet

UNET = dict(model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[8], dropout=0.1)


def _models(kind: str, label_dim: int = 0):
    """(CTM student, EDM teacher, a batch x) with non-trivial weights; tiny MLP or tiny SongUNet."""
    torch.manual_seed(0)
    if kind == "mlp":
        student, teacher, x = (MLP(6, 32, 2, 16, use_s=True, label_dim=label_dim), MLP(6, 32, 2, 16),
                               torch.randn(4, 6))
    else:
        student = SongUNet(16, 3, 3, use_s=True, label_dim=label_dim, **UNET)
        teacher, x = SongUNet(16, 3, 3, **UNET), torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        for p in list(student.parameters()) + list(teacher.parameters()):
            p.add_(torch.randn_like(p) * 0.05)
    return CTMPrecond(student).eval(), EDMPrecond(teacher).eval(), x


def _frames(fn, calls, backend=None) -> tuple[int, list]:
    """Compile fn with fullgraph=True, run every argument tuple of `calls`, return (frames compiled,
    outputs)."""
    dynamo.reset()
    cc = CompileCounter() if backend is None else backend
    f = torch.compile(fn, backend=cc, fullgraph=True)
    outs = [f(*a) for a in calls]
    return cc.frame_count, outs


def _levels(b: int, *values: float) -> list[torch.Tensor]:
    return [torch.full((b,), v) for v in values]


@pytest.mark.parametrize("kind", ["mlp", "unet"])
def test_jump_training_mode_one_graph_across_steps(kind):
    """The online network's jump G(x, t, s) with per-sample levels, with gradients (as in the CTM loss)."""
    ctm, _, x = _models(kind)
    ctm.train()
    b = x.shape[0]
    calls = [(x, torch.rand(b) * 80 + 0.01, torch.rand(b) * 0.5 + 0.002) for _ in range(3)]
    n, outs = _frames(ctm.jump, calls)
    assert n == 1
    outs[-1].square().mean().backward()
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in ctm.net.parameters())


@pytest.mark.parametrize("kind", ["mlp", "unet"])
def test_denoiser_and_heun_step_one_graph_across_steps(kind):
    ctm, teacher, x = _models(kind)
    b = x.shape[0]
    with torch.no_grad():
        n, outs = _frames(teacher.denoise, [(x, *_levels(b, s)) for s in (80.0, 1.0, 0.002)])
        assert n == 1 and torch.allclose(outs[1], teacher.denoise(x, torch.full((b,), 1.0)))
        n, _ = _frames(ctm.denoise, [(x, *_levels(b, s)) for s in (80.0, 1.0)])
        assert n == 1
        step = lambda x, t, nxt: solvers.heun_step(teacher, x, t, nxt)  # noqa: E731
        calls = [(x, *_levels(b, 80.0, 40.0)), (x, *_levels(b, 2.0, 1.0)),
                 (x, torch.tensor([2.0, 3.0] * (b // 2)), torch.tensor([0.0, 1.0] * (b // 2)))]
        n, outs = _frames(step, calls)
        assert n == 1
        want = solvers.heun(teacher, x,
                            torch.tensor([[2.0, 3.0] * (b // 2), [0.0, 1.0] * (b // 2)], dtype=torch.float64))
        assert torch.allclose(outs[2], want, atol=1e-5)


@pytest.mark.parametrize("kind", ["mlp", "unet"])
@pytest.mark.parametrize("nfe", [1, 2])
def test_gamma_sampler_fixed_nfe_one_graph_across_batches(kind, nfe):
    ctm, _, x = _models(kind)
    sched = [float(s) for s in ctm_default_schedule(nfe)]  # the schedule is fixed: part of the compiled graph
    sample = lambda x: gamma_sample(ctm, x, sched)  # noqa: E731
    with torch.no_grad():
        n, outs = _frames(sample, [(x * 80,), (torch.randn_like(x) * 80,), (x * 80,)])
        assert n == 1 and torch.allclose(outs[2], gamma_sample(ctm, x * 80, sched), atol=1e-5)


def test_gamma_sampler_with_philox_noise_one_graph():
    """gamma > 0 re-noises between jumps: the Philox source traces into the same graph (a fresh source per
    batch)."""
    ctm, _, x = _models("mlp")
    sched = [float(s) for s in ctm_default_schedule(3)]

    def sample(x, seeds):
        return gamma_sample(ctm, x, sched, PhiloxNoise(seeds, x.shape[1:]), gamma=0.5)

    with torch.no_grad():
        calls = [(x * 80, torch.arange(4)), (x * 80, torch.arange(4, 8)), (x, torch.arange(4))]
        n, outs = _frames(sample, calls)
        assert n == 1
        assert torch.allclose(outs[0], gamma_sample(ctm, x * 80, sched, PhiloxNoise(torch.arange(4), (6,)),
                                                    gamma=0.5), atol=1e-5)


def test_python_float_levels_recompile_so_pass_tensors():
    """Documents torch's behaviour the tests above rely on: float levels are specialised (one graph per
    value)."""
    ctm, _, x = _models("mlp")
    with torch.no_grad():
        n, _ = _frames(ctm.jump, [(x, 3.0, 1.0), (x, 5.0, 0.5)])
    assert n == 2


class InductorCounter:
    """Counts compiled frames and lowers each graph with Inductor."""

    def __init__(self):
        self.frame_count = 0

    def __call__(self, gm, example_inputs):
        from torch._inductor import config

        self.frame_count += 1
        with config.patch(compile_threads=1):  # CI has 2 cores
            return dynamo.lookup_backend("inductor")(gm, example_inputs)


@pytest.mark.slow
def test_inductor_jump_matches_eager():
    """Inductor on the tiny MLP only: the tiny U-Net takes over 100 s to lower on a loaded 2-core CPU (its
    graph is proven whole by the CompileCounter tests above; gpu_check.py compiles the real one on CUDA)."""
    ctm, _, x = _models("mlp")
    b = x.shape[0]
    calls = [(x, *_levels(b, 5.0, 1.0)), (x * 2, *_levels(b, 40.0, 0.3))]
    with torch.no_grad():
        n, outs = _frames(ctm.jump, calls, backend=InductorCounter())
        assert n == 1
        for (xi, t, s), out in zip(calls, outs, strict=True):
            assert torch.allclose(out, ctm.jump(xi, t, s), atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_inductor_heun_step_matches_eager():
    _, teacher, x = _models("mlp")
    b = x.shape[0]
    step = lambda x, t, nxt: solvers.heun_step(teacher, x, t, nxt)  # noqa: E731
    with torch.no_grad():
        n, outs = _frames(step, [(x, *_levels(b, 80.0, 40.0)), (x, *_levels(b, 1.0, 0.0))],
                          backend=InductorCounter())
        assert n == 1
        assert torch.allclose(outs[1], solvers.heun(teacher, x,
                                                    torch.tensor([1.0, 0.0], dtype=torch.float64)), atol=1e-5)
