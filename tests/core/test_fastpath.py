"""The traced, frozen Heun program against `solvers.heun` (the eager path): the same solve to float32
rounding."""

from __future__ import annotations

import pytest
import torch

from ctmtool.core import solvers
from ctmtool.core.fastpath import heun_program
from ctmtool.core.models import load_model
from ctmtool.core.schedules import karras_sigmas
from ctmtool.jobs.export import random_checkpoint

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
    sigmas = torch.cat([karras_sigmas(18, model.sigma_min, model.sigma_max, 7.0),
                        torch.zeros(1, dtype=torch.float64)])
    x = torch.randn(batch, *model.data_shape,
                    generator=torch.Generator().manual_seed(batch)) * model.sigma_max
    _check(model, x, sigmas)


def test_conditional_unet_teacher_without_a_final_zero(tmp_path):
    over = ["net.unet.model_channels=16", "net.unet.channel_mult=[1,2]", "net.unet.num_blocks=1",
            "net.unet.attn_resolutions=[16]", "net.label_dim=10"]
    model = load_model(random_checkpoint(tmp_path / "c.safetensors", "cifar10", "teacher", overrides=over))
    # stops at 0.5: the last step keeps Heun's correction
    sigmas = karras_sigmas(4, 0.5, model.sigma_max, 7.0)
    x = torch.randn(2, *model.data_shape, generator=torch.Generator().manual_seed(0)) * model.sigma_max
    _check(model, x, sigmas, labels=torch.tensor([3, 7]))


# ------------------------------------------------------------------ the sampling path of sample / fid / sweep

TINY_UNET = ["net.unet.model_channels=16", "net.unet.channel_mult=[1,2]", "net.unet.num_blocks=1",
             "net.unet.attn_resolutions=[16]"]


def test_choice_cpu_batch_program_and_its_reasons(tmp_path):
    from ctmtool.core.fastpath import choose_sampling, cpu_batch
    from ctmtool.jobs.plan import plan_explicit

    assert (cpu_batch((3, 32, 32), 1024) == 16 and cpu_batch((1, 8, 8), 256) == 256
            and cpu_batch((3, 64, 64), 256) == 4)
    assert cpu_batch((3, 512, 512), 8) == 1
    model = load_model(random_checkpoint(tmp_path / "c.safetensors", "cifar10-fast", "ctm",
                                         overrides=TINY_UNET))
    plan = plan_explicit(model, nfe=1, batch=1024)
    c = choose_sampling(model, "cpu", 10_000, plan, batch_given=False)
    assert (c.batch, c.program) == (16, True) and "traced" in c.describe() and "batch 16" in c.describe()
    # a given batch is kept
    assert choose_sampling(model, "cpu", 10_000, plan, batch_given=True).batch == 1024
    assert not choose_sampling(model, "cpu", 40, plan, batch_given=False).program  # fewer than 4 batches
    noisy = plan_explicit(model, nfe=2, gamma=0.5, batch=1024)
    assert not choose_sampling(model, "cpu", 10_000, noisy, batch_given=False).program  # noise between jumps
    one = plan_explicit(model, nfe=1, gamma=0.5, batch=1024)
    # one jump: gamma draws nothing
    assert choose_sampling(model, "cpu", 10_000, one, batch_given=False).program
    off = choose_sampling(model, "cpu", 10_000, plan, batch_given=False, fast=False)
    assert (off.batch, off.program) == (1024, False) and "off" in off.reason
    cuda = choose_sampling(model, "cuda", 10_000, plan, batch_given=False)
    assert (cuda.batch, cuda.program) == (1024, False)


@pytest.mark.parametrize("kind,preset,options", [
    ("ctm", "cifar10-fast", dict(solver="gamma", nfe=1)),
    ("ctm", "cifar10-fast", dict(solver="gamma", nfe=2, gamma=0.0)),
    ("teacher", "digits", dict(solver="heun", steps=4)),
])
def test_program_samples_are_the_eager_samples_to_float32_rounding(tmp_path, kind, preset, options):
    from ctmtool.core.fastpath import sampling_program
    from ctmtool.core.sampling import generate
    from ctmtool.jobs.plan import plan_explicit

    over = [*TINY_UNET, "net.label_dim=10"] if preset == "cifar10-fast" else []
    model = load_model(random_checkpoint(tmp_path / "m.safetensors", preset, kind, overrides=over))
    plan3, plan7 = plan_explicit(model, batch=3, **options), plan_explicit(model, batch=7, **options)
    prog = sampling_program(model, plan3)
    fast = torch.cat([x for x, _ in generate(model, 7, plan3, seed=5, program=prog)])  # 2 traced + 1 eager
    eager = torch.cat([x for x, _ in generate(model, 7, plan7, seed=5)])
    assert fast.shape == eager.shape
    assert float((fast - eager).abs().max()) <= RTOL * float(eager.abs().max())
    assert float(eager.std()) > 0.01  # not a trivial output


def test_sample_command_prints_its_path_and_eager_gives_the_same_images(tmp_path):
    import numpy as np
    from typer.testing import CliRunner

    from ctmtool.cli.app import app

    ckpt = random_checkpoint(tmp_path / "c.safetensors", "cifar10-fast", "ctm", overrides=TINY_UNET)
    runs = {}
    for flag in ("--fast", "--eager"):
        out = tmp_path / f"s{flag}.npz"
        r = CliRunner().invoke(app, ["sample", "--ckpt", str(ckpt), "--n", "64", "--device", "cpu", "--out",
                                     str(out), flag], env={"COLUMNS": "200"})
        assert r.exit_code == 0, r.stderr
        runs[flag] = (r.stderr, np.load(out)["samples"])
    assert "sampling path: traced TorchScript program, batch 16" in runs["--fast"][0]
    assert "sampling path: eager PyTorch, batch 1024 (fast path off)" in runs["--eager"][0]
    a, b = runs["--fast"][1], runs["--eager"][1]
    assert a.shape == b.shape == (64, 32, 32, 3)
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1  # uint8: float32 rounding moves at most one level


def test_program_first_batch_is_the_eager_solve_and_the_cache_is_reused(tmp_path, monkeypatch):
    """The first full batch comes out of the tracing run itself (bit for bit the eager solve); a second job
    with the same network and plan loads the saved program instead of tracing (tracing is made to fail), and
    gives the first job's program outputs bit for bit; other weights get another cache file."""
    from ctmtool.core import fastpath
    from ctmtool.core.sampling import generate
    from ctmtool.jobs.plan import plan_explicit

    ckpt = random_checkpoint(tmp_path / "m.safetensors", "cifar10-fast", "ctm", overrides=TINY_UNET)
    model = load_model(ckpt)
    plan = plan_explicit(model, nfe=1, batch=4)
    cache = tmp_path / "cache"
    lines = []
    first = [x for x, _ in generate(model, 12, plan, seed=3, program=fastpath.sampling_program(
        model, plan, cache, lines.append))]
    eager = [x for x, _ in generate(model, 12, plan, seed=3)]
    assert torch.equal(first[0], eager[0])  # the tracing run's own output
    assert float((first[1] - eager[1]).abs().max()) <= RTOL * float(eager[1].abs().max())
    saved = list(cache.glob("sample-*.pt"))
    assert len(saved) == 1 and "traced on the first batch into" in lines[0]

    def no_trace(*a, **k):
        raise AssertionError("traced again")

    monkeypatch.setattr(torch.jit, "trace", no_trace)
    again = [x for x, _ in generate(model, 12, plan, seed=3, program=fastpath.sampling_program(
        model, plan, cache, lines.append))]
    assert "loaded from" in lines[1]
    assert torch.equal(again[1], first[1]) and torch.equal(again[2], first[2])
    assert float((again[0] - eager[0]).abs().max()) <= RTOL * float(eager[0].abs().max())
    with torch.no_grad():
        next(iter(model.net.parameters())).add_(0.01)
    assert fastpath.program_key(model, plan, False) not in saved[0].name
    assert fastpath.program_key(model, plan, False) != fastpath.program_key(
        model, plan_explicit(model, nfe=2, batch=4), False)


def test_program_cache_folder_from_the_environment(monkeypatch, tmp_path):
    from ctmtool.core.fastpath import program_cache_dir

    monkeypatch.setenv("CTMTOOL_PROGRAM_CACHE", str(tmp_path))
    assert program_cache_dir() == tmp_path
    monkeypatch.setenv("CTMTOOL_PROGRAM_CACHE", "off")
    assert program_cache_dir() is None
    monkeypatch.delenv("CTMTOOL_PROGRAM_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert program_cache_dir() == tmp_path / "xdg" / "ctmtool" / "programs"
