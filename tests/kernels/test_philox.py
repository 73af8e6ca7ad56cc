"""Philox4x32-10: the PyTorch reference against Random123's published known answers, and the Triton kernel
against the reference (run by Triton's interpreter on the CPU)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ctmtool.kernels.philox import _mulhilo, philox4x32, philox_bits, philox_integers, philox_normal

# Random123 tests/kat_vectors, philox4x32 10 rounds: counter words, key words, expected output
# (the same three vectors appear in TensorFlow's and Random123-Boost's Philox tests).
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize("ctr,key,want", KAT)
def test_known_answers(ctr, key, want):
    out = philox4x32(tuple(torch.tensor(c) for c in ctr), tuple(torch.tensor(k) for k in key))
    assert tuple(int(w) for w in out) == want


def test_mulhilo_is_the_exact_64_bit_product():
    g = torch.Generator().manual_seed(0)
    c = torch.randint(0, 2**32, (1000,), generator=g, dtype=torch.int64)
    c[:3] = torch.tensor([0, 1, 2**32 - 1])
    for m in (0xD2511F53, 0xCD9E8D57, 2**32 - 1):
        hi, lo = _mulhilo(m, c)
        want = [m * int(v) for v in c]
        assert [int(h) for h in hi] == [w >> 32 for w in want]
        assert [int(v) for v in lo] == [w & 0xFFFFFFFF for w in want]


def test_normals_are_standard_and_seeds_differ():
    z = philox_normal(torch.arange(64), (3, 32, 32))
    assert z.dtype == torch.float32 and z.shape == (64, 3, 32, 32)
    n = z.numel()
    assert abs(float(z.mean())) < 4 / n**0.5
    assert abs(float(z.std()) - 1) < 0.01
    assert abs(float((z.abs() > 1.959964).float().mean()) - 0.05) < 0.003
    assert not torch.equal(z[0], z[1])
    assert not torch.equal(philox_normal(torch.tensor([3]), (8,), draw=0),
                           philox_normal(torch.tensor([3]), (8,), draw=1))


def test_integers_in_range_and_roughly_uniform():
    v = philox_integers(torch.arange(20000), 10)
    assert int(v.min()) == 0 and int(v.max()) == 9
    counts = torch.bincount(v, minlength=10).float()
    assert float((counts - 2000).abs().max()) < 200  # about 4.7 standard deviations


def test_bits_match_a_direct_call_per_element():
    seeds = torch.tensor([7, 2**40 + 3])
    w = philox_bits(seeds, 9, draw=2, tag=0)
    for b, s in enumerate([7, 2**40 + 3]):
        for j in range(3):
            out = philox4x32(tuple(torch.tensor(v) for v in (j, 2, 0, 0)),
                             (torch.tensor(s & 0xFFFFFFFF), torch.tensor(s >> 32)))
            assert [int(x) for x in w[b, 4 * j: 4 * j + 4]] == [int(x) for x in out]


KERNEL_CHECK = """
import torch
from ctmtool.kernels.philox import philox_bits, philox_normal
from ctmtool.kernels.philox_triton import philox_bits_triton, philox_normal_triton
seeds = torch.tensor([0, 1, 2**40 + 7, -5, 123456789])
for numel in (1, 6, 67):
    for draw in (0, 3):
        assert torch.equal(philox_bits(seeds, numel, draw),
                           philox_bits_triton(seeds, numel, draw)), (numel, draw)
        err = (philox_normal(seeds, (numel,), draw)
               - philox_normal_triton(seeds, (numel,), draw)).abs().max().item()
        assert err < 1e-5, (numel, draw, err)
print("ok")
"""


def test_triton_kernel_matches_reference_under_interpreter():
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(Path(__file__).resolve().parents[2]) + os.pathsep
           + os.environ.get("PYTHONPATH", "")}
    r = subprocess.run([sys.executable, "-c", KERNEL_CHECK], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-3000:]


def test_triton_kernel_compiles_for_sm90_without_a_gpu():
    """The real (not interpreted) compile path down to a cubin for an H100/H200 (sm_90), both variants."""
    triton = pytest.importorskip("triton")
    try:
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
    except ImportError:
        pytest.skip("this Triton has no ASTSource/GPUTarget API")
    from ctmtool.kernels.philox_triton import _philox_kernel

    for bits, out in ((False, "*fp32"), (True, "*i64")):
        sig = {"seeds_ptr": "*i64", "out_ptr": out, "numel": "i32", "nblk": "i32", "total": "i32",
               "draw": "i32", "tag": "i32", "BLOCK": "constexpr", "BITS": "constexpr"}
        src = ASTSource(fn=_philox_kernel, signature=sig, constexprs={"BLOCK": 256, "BITS": bits})
        assert triton.compile(src, target=GPUTarget("cuda", 90, 32)).asm["cubin"]
