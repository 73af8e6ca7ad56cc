"""The box filter's resampling as pooling / nearest upsampling: the FIR convolutions' results within float32
rounding."""

from __future__ import annotations

import pytest
import torch

from ctmtool.nets.songunet import Conv2d, SongUNet, upsample_nearest2x

# the FIR path and the pooling path sum the same four products x * 1/4 in another order: at most a few ulps
# apart
DOWN_RTOL = 4 * torch.finfo(torch.float32).eps


def _fir(conv: Conv2d) -> Conv2d:
    """The same layer forced onto the FIR convolution path."""
    twin = Conv2d(conv.in_channels, conv.out_channels,
                  conv.weight.shape[-1] if conv.weight is not None else 0, up=conv.up, down=conv.down,
                  fused_resample=conv.fused_resample)
    twin.load_state_dict(conv.state_dict())
    twin.box = False
    return twin


@pytest.mark.parametrize("kernel,up,down,fused", [(0, False, True, False), (0, True, False, False),
                                                  (1, False, True, False), (3, True, False, False),
                                                  (3, False, True, True)])
def test_box_resampling_matches_the_fir_convolution(kernel, up, down, fused):
    torch.manual_seed(0)
    conv = Conv2d(6, 6 if kernel == 0 else 5, kernel, up=up, down=down, fused_resample=fused)
    assert conv.box
    fir = _fir(conv)
    x = torch.randn(3, 6, 8, 8, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    a, b = conv(x), fir(x2)
    assert a.shape == b.shape
    if up and kernel == 0:
        assert torch.equal(a, b)  # nearest upsampling: every output is one input times 1
    torch.testing.assert_close(a, b, rtol=DOWN_RTOL, atol=1e-6 * float(b.detach().abs().max()))
    g = torch.randn_like(a)
    a.backward(g)
    b.backward(g)
    torch.testing.assert_close(x.grad, x2.grad, rtol=DOWN_RTOL, atol=1e-6 * float(x2.grad.abs().max()))


def test_other_filters_keep_the_fir_path():
    assert not Conv2d(4, 4, 0, down=True, resample_filter=[1, 3, 3, 1]).box


def test_whole_ddpmpp_network_within_float32_rounding():
    torch.manual_seed(0)
    net = SongUNet(16, 3, 3, model_channels=16, channel_mult=[1, 2], num_blocks=1,
                   attn_resolutions=[8]).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(0.2 * torch.randn(p.shape, generator=g))
    x, noise = torch.randn(2, 3, 16, 16, generator=g), torch.randn(2, generator=g)
    with torch.no_grad():
        fast = net(x, noise)
        for m in net.modules():
            if isinstance(m, Conv2d):
                m.box = False
        slow = net(x, noise)
    assert (fast - slow).abs().max() <= 1e-5 * slow.abs().max()
    assert not torch.equal(fast, torch.zeros_like(fast))


@pytest.mark.parametrize("shape", [(8, 64, 16, 16), (2, 3, 5, 7)])
def test_nearest_upsampling_is_interpolate_bit_for_bit_with_its_gradient(shape):
    """The copies replacing `interpolate(mode="nearest")` on the CPU: forward and gradient bit-identical."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    a, b = upsample_nearest2x(x), torch.nn.functional.interpolate(x2, scale_factor=2, mode="nearest")
    assert torch.equal(a, b) and a.is_contiguous()
    with torch.no_grad():
        assert torch.equal(upsample_nearest2x(x), b)
    grad = torch.randn(b.shape, generator=g)
    a.backward(grad)
    b.backward(grad)
    assert torch.equal(x.grad, x2.grad)


def test_upsampling_3x3_convolution_as_one_transposed_convolution():
    """On the CPU, nearest upsampling + 3x3 convolution runs as one stride-2 transposed convolution with the
    taps summed (16 instead of 36 multiply-adds per input pixel): output and the gradients of input, weight
    and bias within float32 rounding of upsample-then-convolve (stated tolerance: 1e-5 of each tensor's
    largest value)."""
    torch.manual_seed(0)
    conv = Conv2d(16, 8, 3, up=True)
    with torch.no_grad():
        conv.weight.normal_(0, 0.2)
        conv.bias.normal_(0, 0.2)
    x = torch.randn(3, 16, 7, 9, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    a = conv(x)
    w = conv.weight.detach().clone().requires_grad_(True)
    b = conv.bias.detach().clone().requires_grad_(True)
    up = torch.nn.functional.interpolate(x2, scale_factor=2, mode="nearest")
    ref = torch.nn.functional.conv2d(up, w, b, padding=1)
    assert a.shape == ref.shape == (3, 8, 14, 18)
    g = torch.randn_like(ref)
    a.backward(g)
    ref.backward(g)
    for got, want in ((a, ref), (x.grad, x2.grad), (conv.weight.grad, w.grad), (conv.bias.grad, b.grad)):
        assert float((got - want).detach().abs().max()) <= 1e-5 * float(want.detach().abs().max())
    assert not torch.equal(a, torch.zeros_like(a))
