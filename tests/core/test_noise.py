"""Noise sources: per-image streams independent of batch, position and device; the EDM-equal option."""

from __future__ import annotations

import pytest
import torch

from ctmtool.core.noise import PhiloxNoise, make_noise
from ctmtool.core.sampling import ImageNoise
from ctmtool.errors import UserError


@pytest.mark.parametrize("kind", ["philox", "edm"])
def test_batch_independence(kind):
    big = make_noise(kind, [5, 6, 7, 8], (3, 4, 4))
    small = make_noise(kind, [8, 6], (3, 4, 4))
    for _ in range(3):  # every draw, not only the first
        a, b = big(), small()
        assert a.shape == (4, 3, 4, 4)
        assert torch.equal(a[3], b[0]) and torch.equal(a[1], b[1])
    assert torch.equal(big.integers(10)[[3, 1]], small.integers(10))


def test_successive_draws_differ():
    n = PhiloxNoise([1], (16,))
    assert not torch.equal(n(), n())


def test_philox_dtype_is_a_cast_of_the_float32_draw():
    a = PhiloxNoise([3, 4], (2, 3), dtype=torch.float64)()
    b = PhiloxNoise([3, 4], (2, 3), dtype=torch.float32)()
    assert a.dtype == torch.float64 and torch.equal(a.float(), b)
    assert torch.equal(PhiloxNoise([3, 4], (2, 3))(), b)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_philox_cuda_equals_cpu():
    seeds = list(range(100, 164))
    ref = PhiloxNoise(seeds, (3, 32, 32), "cpu")()
    backends = ("triton", "torch") if PhiloxNoise(seeds, (1,), "cuda").triton else ("torch",)
    for backend in backends:
        gpu = PhiloxNoise(seeds, (3, 32, 32), "cuda", backend=backend)
        assert (gpu().cpu() - ref).abs().max() < 1e-5
    assert torch.equal(PhiloxNoise(seeds, (1,), "cuda").integers(10).cpu(),
                       PhiloxNoise(seeds, (1,)).integers(10))


def test_edm_kind_is_image_noise():
    n = make_noise("edm", [0, 1], (3, 2, 2))
    assert isinstance(n, ImageNoise)
    assert torch.equal(n()[1], torch.randn((3, 2, 2), generator=torch.Generator().manual_seed(1)))


def test_unknown_kind_is_a_value_error_of_the_maths():
    with pytest.raises(ValueError, match="unknown `noise`") as info:  # plan_sampling refuses it for a user
        make_noise("mt", [0], (2,))
    assert not isinstance(info.value, UserError)


def test_generate_draws_from_the_chosen_stream():
    """generate(noise=...) picks the stream: the default equals EDM's per-seed latents (ImageNoise), philox
    differs from it and is itself independent of the batching."""
    from ctmtool.config import load_preset
    from ctmtool.core.models import Model, build_precond
    from tests.conftest import plan_and_generate as generate

    p = load_preset("toy", ["net.mlp.hidden=16", "net.mlp.depth=1", "net.mlp.emb=8"])
    m = Model("ctm", build_precond("ctm", p, (2,)).eval().requires_grad_(False), p, (2,))
    edm = torch.cat([x for x, _ in generate(m, 6, seed=3, batch=4)])
    ref = torch.cat([x for x, _ in generate(m, 6, seed=3, batch=6, noise="edm")])
    ph_a = torch.cat([x for x, _ in generate(m, 6, seed=3, batch=4, noise="philox")])
    ph_b = torch.cat([x for x, _ in generate(m, 6, seed=3, batch=1, noise="philox")])
    assert torch.equal(edm, ref) and torch.equal(ph_a, ph_b) and not torch.allclose(edm, ph_a)
    with torch.no_grad():
        top = m.net.sigma_max
        first = top * ImageNoise(range(3, 9), (2,))()
        assert torch.allclose(edm, m.net.jump(first, top, 0.002))
