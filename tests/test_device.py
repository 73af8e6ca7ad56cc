"""Devices and precision (`ctmtool.device`): device names and refusals, autocast only where the policy says,
the float32 matmul/convolution policy."""

from __future__ import annotations

from contextlib import nullcontext

import pytest
import torch

from ctmtool.device import autocast, configure_matmul, select_device
from ctmtool.errors import UserError


@pytest.fixture
def restore_matmul_policy():
    """configure_matmul changes process-wide torch settings: put them back after the test."""
    saved = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    yield
    torch.set_float32_matmul_precision(saved[0])
    torch.backends.cudnn.allow_tf32 = saved[1]


def test_select_device_names(monkeypatch):
    assert select_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert select_device("auto") == torch.device("cpu") and select_device() == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert select_device("auto") == torch.device("cuda")
    assert select_device("cuda:1") == torch.device("cuda", 1)


@pytest.mark.parametrize("name", ["cuda", "cuda:0"])
def test_select_device_refuses_cuda_without_a_gpu(monkeypatch, name):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="no CUDA GPU") as err:
        select_device(name)
    assert repr(name) in str(err.value) and "cpu" in str(err.value)


@pytest.mark.parametrize("name", ["gpu", "tpu0", "cuda:x", ""])
def test_select_device_refuses_unknown_names(name):
    with pytest.raises(UserError, match="unknown device"):
        select_device(name)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_autocast_is_a_no_op_on_the_cpu(precision):
    """On the CPU a linear layer keeps float32 under ctmtool's autocast, whatever the preset asks; torch's own
    CPU autocast would give bfloat16 (the check can tell the two apart)."""
    layer, x = torch.nn.Linear(4, 3), torch.randn(2, 4)
    ctx = autocast(torch.device("cpu"), precision)
    assert isinstance(ctx, nullcontext)
    with ctx:
        assert layer(x).dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(x).dtype == torch.bfloat16


def test_autocast_on_cuda_is_bf16_only_when_asked():
    assert isinstance(autocast(torch.device("cuda"), "fp32"), nullcontext)
    with pytest.warns(UserWarning) if not torch.cuda.is_available() else nullcontext():
        ctx = autocast(torch.device("cuda"), "bf16")
    assert isinstance(ctx, torch.autocast) and ctx.fast_dtype == torch.bfloat16


def test_matmul_policy_full_float32_unless_tf32_asked(restore_matmul_policy):
    torch.set_float32_matmul_precision("medium")
    torch.backends.cudnn.allow_tf32 = True
    configure_matmul()
    assert torch.get_float32_matmul_precision() == "highest" and torch.backends.cudnn.allow_tf32 is False
    configure_matmul(tf32=True)
    assert torch.get_float32_matmul_precision() == "high" and torch.backends.cudnn.allow_tf32 is True


def test_the_policy_is_in_force_once_a_device_is_selected(restore_matmul_policy):
    torch.backends.cudnn.allow_tf32 = True  # torch's default
    select_device("cpu")
    assert torch.backends.cudnn.allow_tf32 is False and torch.get_float32_matmul_precision() == "highest"


def test_small_cpu_training_runs_on_one_thread_and_restores(monkeypatch):
    from ctmtool.device import SMALL_NETWORK, cpu_threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with cpu_threads(torch.device("cpu"), torch.nn.Linear(4, 4)):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the user's choice wins
        with cpu_threads(torch.device("cpu"), torch.nn.Linear(4, 4)):
            assert torch.get_num_threads() == 2
        monkeypatch.delenv("OMP_NUM_THREADS")
        big = torch.nn.Linear(SMALL_NETWORK // 1000 + 1, 1000)  # just over the threshold
        with cpu_threads(torch.device("cpu"), big):
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
