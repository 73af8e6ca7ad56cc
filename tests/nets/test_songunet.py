"""SongUNet: EDM's DDPM++/NCSN++ architecture (names, shapes, counts), resampling, attention, CTM's s
input."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ctmtool.checkpoint import load_state
from ctmtool.core.models import S_LAYER_PREFIXES
from ctmtool.nets.songunet import Conv2d, SongUNet, UNetBlock

DDPMPP = dict(model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[8], dropout=0.0)
NCSNPP = dict(DDPMPP, embedding_type="fourier", channel_mult_noise=2, encoder_type="residual",
              decoder_type="skip", resample_filter=[1, 3, 3, 1])


def _net(seed: int = 0, **kw) -> SongUNet:
    torch.manual_seed(seed)
    return SongUNet(16, 3, 3, **{**DDPMPP, **kw}).eval()


def _randomise(net: torch.nn.Module, seed: int = 1, scale: float = 0.2) -> None:
    """Replace the zero/near-zero initialisations so every path matters in comparisons."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)


def _inputs(b: int = 2, seed: int = 2):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, 16, 16, generator=g), torch.randn(b, generator=g)


@pytest.mark.parametrize("kw", [DDPMPP, NCSNPP], ids=["ddpmpp", "ncsnpp"])
def test_output_shape_and_finite(kw):
    net = _net(**kw)
    x, t = _inputs(3)
    y = net(x, t)
    assert y.shape == x.shape and torch.isfinite(y).all()


def test_edm_parameter_names_and_shapes():
    sd = _net(label_dim=10, augment_dim=9).state_dict()
    c, e = 16, 64
    expected = {
        "map_layer0.weight": (e, c), "map_layer1.bias": (e,), "map_label.weight": (c, 10),
        "map_label.bias": (c,), "map_augment.weight": (c, 9),
        "enc.16x16_conv.weight": (c, 3, 3, 3),
        "enc.16x16_block0.norm0.weight": (c,), "enc.16x16_block0.conv0.weight": (c, c, 3, 3),
        "enc.16x16_block0.affine.weight": (c, e), "enc.16x16_block0.conv1.bias": (c,),
        "enc.8x8_down.conv0.resample_filter": (1, 1, 2, 2), "enc.8x8_down.skip.weight": (c, c, 1, 1),
        "enc.8x8_down.skip.resample_filter": (1, 1, 2, 2),
        "enc.8x8_block0.skip.weight": (2 * c, c, 1, 1),
        "enc.8x8_block0.norm2.weight": (2 * c,), "enc.8x8_block0.qkv.weight": (6 * c, 2 * c, 1, 1),
        "enc.8x8_block0.proj.weight": (2 * c, 2 * c, 1, 1),
        "dec.8x8_in0.qkv.weight": (6 * c, 2 * c, 1, 1), "dec.8x8_in1.conv0.weight": (2 * c, 2 * c, 3, 3),
        "dec.8x8_block0.conv0.weight": (2 * c, 4 * c, 3, 3), "dec.8x8_block1.qkv.bias": (6 * c,),
        "dec.16x16_up.conv0.resample_filter": (1, 1, 2, 2),
        "dec.16x16_block1.conv0.weight": (c, 2 * c, 3, 3), "dec.16x16_block0.conv0.weight": (c, 3 * c, 3, 3),
        "dec.16x16_aux_norm.weight": (c,), "dec.16x16_aux_conv.weight": (3, c, 3, 3),
    }
    for k, shape in expected.items():
        assert k in sd, k
        assert tuple(sd[k].shape) == shape, (k, tuple(sd[k].shape))
    assert "map_augment.bias" not in sd and "enc.16x16_block0.skip.weight" not in sd
    assert "dec.8x8_block0.qkv.weight" not in sd  # attention only in the last block of a level
    assert not any(k.startswith(S_LAYER_PREFIXES) or ".affine_s" in k for k in sd)


def test_ncsnpp_names():
    sd = _net(**NCSNPP).state_dict()
    assert sd["map_noise.freqs"].shape == (16,)  # model_channels * channel_mult_noise / 2
    assert sd["map_layer0.weight"].shape == (64, 32)
    assert sd["enc.8x8_aux_residual.weight"].shape == (16, 3, 3, 3)
    assert sd["enc.8x8_aux_residual.resample_filter"].shape == (1, 1, 4, 4)
    assert sd["dec.16x16_aux_up.resample_filter"].shape == (1, 1, 4, 4)
    assert "dec.8x8_aux_up.resample_filter" not in sd
    assert sd["dec.8x8_aux_conv.weight"].shape == (3, 32, 3, 3)
    f = sd["enc.8x8_down.conv0.resample_filter"][0, 0]
    torch.testing.assert_close(f,
                               torch.outer(torch.tensor([1.0, 3, 3, 1]), torch.tensor([1.0, 3, 3, 1])) / 64)


def test_cifar10_ddpmpp_parameter_count():
    """EDM's CIFAR-10 DDPM++ (augment_dim 9 as in its pickles): 55,733,891 parameters."""
    kw = dict(model_channels=128, channel_mult=[2, 2, 2], num_blocks=4, attn_resolutions=[16])
    count = lambda net: sum(p.numel() for p in net.parameters())  # noqa: E731
    assert count(SongUNet(32, 3, 3, augment_dim=9, **kw)) == 55_733_891
    small = SongUNet(32, 3, 3, model_channels=64, channel_mult=[1, 2, 2], num_blocks=2, attn_resolutions=[16])
    assert count(small) == 6_989_891


def test_init_modes():
    net = _net()
    blk = net.enc["8x8_block0"]
    assert blk.conv1.weight.abs().max() <= 1e-5 * math.sqrt(6 / (2 * 32 * 9)) + 1e-12  # init_zero
    assert blk.proj.weight.abs().max() <= 1e-5 * math.sqrt(6 / (2 * 32)) + 1e-12
    qkv_bound = math.sqrt(0.2) * math.sqrt(6 / (32 + 96))
    assert blk.qkv.weight.abs().max() <= qkv_bound and blk.qkv.weight.abs().max() > 0.5 * qkv_bound
    assert all(not b.any() for n, b in net.named_parameters() if n.endswith("bias") and "norm" not in n)
    assert (blk.norm1.num_groups == 8 and blk.norm1.eps == 1e-6
            and net.enc["16x16_block0"].norm0.num_groups == 4)


def test_resample_filter_11_is_nearest_up_and_avg_pool_down():
    x = torch.randn(2, 4, 8, 8)
    up = Conv2d(4, 4, 0, up=True, resample_filter=[1, 1])
    down = Conv2d(4, 4, 0, down=True, resample_filter=[1, 1])
    torch.testing.assert_close(up(x), F.interpolate(x, scale_factor=2, mode="nearest"))
    torch.testing.assert_close(down(x), F.avg_pool2d(x, 2))
    fir_up = Conv2d(4, 4, 0, up=True, resample_filter=[1, 3, 3, 1])
    fir_down = Conv2d(4, 4, 0, down=True, resample_filter=[1, 3, 3, 1])
    assert fir_up(x).shape == (2, 4, 16, 16) and fir_down(x).shape == (2, 4, 4, 4)
    c = torch.ones(1, 4, 8, 8)  # the FIR filters preserve constants away from the border
    torch.testing.assert_close(fir_up(c)[..., 2:-2, 2:-2], torch.ones(1, 4, 12, 12))
    torch.testing.assert_close(fir_down(c)[..., 1:-1, 1:-1], torch.ones(1, 4, 2, 2))
    fused = Conv2d(4, 6, 3, down=True, resample_filter=[1, 3, 3, 1], fused_resample=True)
    assert fused(x).shape == (2, 6, 4, 4)


@pytest.mark.parametrize("heads", [1, 2])
def test_attention_matches_edm_einsum(heads):
    torch.manual_seed(0)
    blk = UNetBlock(8, 8, 16, attention=True, num_heads=heads)
    h = torch.randn(2, 8, 4, 4)
    q, k, v = blk.qkv(h).reshape(2 * heads, 8 // heads, 3, 16).unbind(2)
    w = torch.einsum("ncq,nck->nqk", q, k / math.sqrt(k.shape[1])).softmax(dim=2)
    ref = torch.einsum("nqk,nck->ncq", w, v).reshape(2, 8, 4, 4)
    torch.testing.assert_close(blk._attention(h), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("heads", [1, 2])
def test_attention_gradient_matches_edm_einsum(heads):
    """The fused (flash) SDPA kernel on contiguous operands: output and input gradient within float32 rounding
    of EDM's einsum formulation computed in float64 (stated tolerance: 1e-5 relative, 1e-6 absolute)."""
    torch.manual_seed(0)
    blk = UNetBlock(16, 16, 16, attention=True, num_heads=heads)
    h = torch.randn(3, 16, 8, 8, requires_grad=True)
    h64 = h.detach().double().requires_grad_(True)
    q, k, v = blk.double().qkv(h64).reshape(3 * heads, 16 // heads, 3, 64).unbind(2)
    w = torch.einsum("ncq,nck->nqk", q, k / math.sqrt(k.shape[1])).softmax(dim=2)
    ref = torch.einsum("nqk,nck->ncq", w, v).reshape(3, 16, 8, 8)
    g = torch.randn(ref.shape, dtype=torch.float64)
    (ref * g).sum().backward()
    out = blk.float()._attention(h)
    (out * g.float()).sum().backward()
    assert out.is_contiguous()
    torch.testing.assert_close(out, ref.float(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(h.grad, h64.grad.float(), rtol=1e-5, atol=1e-6)


def test_student_with_teacher_weights_is_the_teacher():
    for kw in (DDPMPP, NCSNPP):
        teacher = _net(**kw)
        _randomise(teacher)
        student = SongUNet(16, 3, 3, use_s=True, **kw).eval()
        fresh = load_state(student, teacher.state_dict(), allow_missing=S_LAYER_PREFIXES)
        assert fresh and all(k.startswith("map_s_layer") or ".affine_s." in k for k in fresh)
        assert {k.split(".")[0] for k in fresh if k.startswith("map_s")} == {"map_s_layer0", "map_s_layer1"}
        x, t = _inputs()
        s = torch.rand(2) * t
        with torch.no_grad():
            ref = teacher(x, t)
            assert torch.equal(student(x, t, s), ref)
            assert torch.equal(student(x, t), ref)
            with torch.no_grad():
                for blk in student.modules():
                    if isinstance(blk, UNetBlock):
                        blk.affine_s.weight.normal_(0, 0.5)
            y_s, y_t = student(x, t, s), student(x, t, t)
        assert not torch.equal(y_s, y_t)
        assert torch.equal(student(x, t, None), y_t)


def test_s_layers_receive_gradient():
    student = _net(use_s=True).train()
    x, t = _inputs()
    student(x, t, t / 2).square().sum().backward()
    assert student.enc["16x16_block0"].affine_s.weight.grad.abs().sum() > 0


def test_conditional_labels():
    net = _net(label_dim=5)
    _randomise(net)
    x, t = _inputs(3)
    labels = torch.tensor([0, 3, 4])
    with torch.no_grad():
        y_int = net(x, t, labels=labels)
        y_hot = net(x, t, labels=F.one_hot(labels, 5).float())
        y_other = net(x, t, labels=torch.tensor([1, 3, 4]))
        y_none = net(x, t)
        y_zero = net(x, t, labels=torch.zeros(3, 5))
    assert torch.equal(y_int, y_hot)
    assert not torch.equal(y_int[0], y_other[0]) and torch.equal(y_int[1:], y_other[1:])
    assert torch.equal(y_none, y_zero)
    net.train().label_dropout = 0.999999  # training with dropout ~ every label dropped: the all-zero label
    torch.manual_seed(0)
    with torch.no_grad():
        for m in net.modules():
            m.training = m is net  # label dropout only; blocks stay deterministic (dropout=0 anyway)
        y_drop = net(x, t, labels=labels)
    torch.testing.assert_close(y_drop, y_none)


def test_augment_labels():
    net = _net(augment_dim=9)
    _randomise(net)
    x, t = _inputs()
    with torch.no_grad():
        assert not torch.equal(net(x, t, augment_labels=torch.randn(2, 9)), net(x, t))
        assert torch.equal(net(x, t, augment_labels=torch.zeros(2, 9)), net(x, t))


def test_channels_last_matches():
    net = _net(**NCSNPP)
    _randomise(net, scale=0.1)
    x, t = _inputs()
    with torch.no_grad():
        ref = net(x, t)
        net_cl = net.to(memory_format=torch.channels_last)
        y = net_cl(x.to(memory_format=torch.channels_last), t)
    torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-5)


def test_bf16_autocast():
    net = _net(use_s=True)
    _randomise(net, scale=0.1)
    x, t = _inputs()
    with torch.no_grad():
        ref = net(x, t, t / 2)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = net(x, t, t / 2)
    assert y.shape == ref.shape and torch.isfinite(y).all()
    assert (y.float() - ref).norm() < 0.1 * ref.norm()


def test_class_label_joins_the_s_embedding():
    """ctm-cifar10 networks.py 408-417: emb_s = MLP_s(embed(noise_s) + map_label(onehot * sqrt(L)))."""
    import math

    from ctmtool.nets.songunet import SongUNet

    torch.manual_seed(0)
    for s_label in (True, False):
        net = SongUNet(8, 3, 3, label_dim=4, model_channels=16, channel_mult=[1], num_blocks=1,
                       attn_resolutions=[], use_s=True, s_label=s_label).eval()
        seen = []
        net.map_s_layer0.register_forward_pre_hook(lambda m, a, seen=seen: seen.append(a[0].clone()))
        labels = torch.tensor([1, 3])
        net(torch.randn(2, 3, 8, 8), torch.tensor([0.3, -1.0]), torch.tensor([-0.5, -1.5]), labels=labels)
        want = net._embed(torch.tensor([-0.5, -1.5]))
        if s_label:
            want = want + net.map_label(torch.nn.functional.one_hot(labels, 4).float() * math.sqrt(4))
        assert torch.allclose(seen[0], want, atol=1e-6)
