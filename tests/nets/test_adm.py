"""ADM U-Net (nets/adm.py): shapes, official parameter names, attention and embedding formulas, CTM's
s-branch."""

from __future__ import annotations

import math

import pytest
import torch

from ctmtool.config import ADMConfig, NetConfig, Preset
from ctmtool.core.models import build_precond, student_from_teacher
from ctmtool.nets.adm import ADMUNet, AttentionBlock, timestep_embedding

TINY = dict(model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), head_channels=16)


def _net(seed: int = 0, **kw) -> ADMUNet:
    torch.manual_seed(seed)
    return ADMUNet(16, 3, 3, **{**TINY, **kw}).eval()


def _randomise(net: torch.nn.Module, seed: int = 1, scale: float = 0.2) -> None:
    """Redraw every tensor, zero-initialised ones included, so every path matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)


def _preset(**adm) -> Preset:
    return Preset(net=NetConfig(kind="adm", label_dim=5, adm=ADMConfig(**{**dict(
        model_channels=32, channel_mult=[1, 2], num_res_blocks=1, attn_resolutions=[8], head_channels=16),
                                                                          **adm})),
        data={"source": "folder", "resolution": 16, "channels": 3})


@pytest.mark.parametrize("kw", [{}, {"label_dim": 5}, {"qkv_order": "heads"}, {"resblock_updown": False},
                                {"scale_shift": False}, {"use_s": True, "label_dim": 5}])
def test_output_shape_and_finite(kw):
    net = _net(**kw)
    _randomise(net)
    x = torch.randn(3, 3, 16, 16)
    labels = torch.tensor([0, 4, 2]) if kw.get("label_dim") else None
    out = net(x, torch.randn(3), torch.randn(3) if kw.get("use_s") else None, labels=labels)
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_official_parameter_names_and_shapes():
    sd = _net(label_dim=5, use_s=True).state_dict()
    expect = {
        "time_embed.0.weight": (128, 32), "time_embed.2.weight": (128, 128),
        "time_embed_s.0.weight": (128, 32), "label_emb.weight": (5, 128),
        "input_blocks.0.0.weight": (32, 3, 3, 3), "input_blocks.1.0.in_layers.2.weight": (32, 32, 3, 3),
        "input_blocks.1.0.emb_layers.1.weight": (64, 128),
        "input_blocks.1.0.emb_layers_s.1.weight": (64, 128),
        # the down-sampling ResBlock
        "input_blocks.1.0.out_layers.3.weight": (32, 32, 3, 3), "input_blocks.2.0.in_layers.0.weight": (32,),
        "input_blocks.3.0.skip_connection.weight": (64, 32, 1, 1),
        "input_blocks.3.1.qkv.weight": (192, 64, 1, 1), "input_blocks.3.1.proj_out.weight": (64, 64, 1, 1),
        "middle_block.1.norm.weight": (64,), "middle_block.2.emb_layers.1.weight": (128, 128),
        "output_blocks.0.0.in_layers.0.weight": (128,),
        "output_blocks.1.2.in_layers.2.weight": (64, 64, 3, 3),  # the up-sampling ResBlock after attention
        "output_blocks.3.0.skip_connection.weight": (32, 64, 1, 1), "out.0.weight": (32,),
        "out.2.weight": (3, 32, 3, 3),
    }
    for name, shape in expect.items():
        assert tuple(sd[name].shape) == shape, name
    tops = {k.split(".")[0] for k in sd}
    assert tops == {"time_embed", "time_embed_s", "label_emb", "input_blocks", "middle_block",
                    "output_blocks", "out"}


def test_attention_is_softmax_attention_with_three_major_split():
    """The block equals x + proj(softmax(q^T k / sqrt(d)) v) with q, k, v taken as qkv[(three, head, d)]."""
    torch.manual_seed(0)
    blk = AttentionBlock(32, head_channels=8)
    _randomise(blk)
    x = torch.randn(2, 32, 4, 4)
    qkv = blk.qkv(blk.norm(x)).reshape(2, 3, 4, 8, 16)  # (b, three, heads, d, T)
    q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]
    w = torch.softmax(torch.einsum("bhdt,bhds->bhts", q, k) / math.sqrt(8), dim=-1)
    a = torch.einsum("bhts,bhds->bhdt", w, v).reshape(2, 32, 4, 4)
    torch.testing.assert_close(blk(x), x + blk.proj_out(a), rtol=1e-5, atol=1e-5)


def test_timestep_embedding_and_time_scale():
    """[cos, sin] of 1000 * ln(sigma)/4 = 250 ln(sigma) (the official ImageNet time input)."""
    sigma = torch.tensor([0.002, 1.0, 80.0])
    emb = timestep_embedding(1000 * sigma.log() / 4, 8)
    freqs = torch.tensor([10000 ** (-i / 4) for i in range(4)], dtype=torch.float64)
    args = 250 * sigma.double().log()[:, None] * freqs
    # float32 arguments reach |1553|, so the sinusoids carry about 1e-4 of round-off
    torch.testing.assert_close(emb.double(), torch.cat([args.cos(), args.sin()], dim=1), rtol=0, atol=2e-4)


def test_one_hot_labels_equal_integer_labels():
    net = _net(label_dim=5)
    _randomise(net)
    x, c, y = torch.randn(2, 3, 16, 16), torch.randn(2), torch.tensor([1, 3])
    torch.testing.assert_close(net(x, c, labels=y),
                               net(x, c, labels=torch.nn.functional.one_hot(y, 5).float()))


def test_student_from_teacher_equals_teacher_at_init_for_any_s():
    """Zero-initialised emb_layers_s: g(x, t, s) = D_teacher(x, t) for every s at init, and s = t in
    particular."""
    preset = _preset()
    torch.manual_seed(0)
    teacher = build_precond("teacher", preset, (3, 16, 16)).eval()
    _randomise(teacher)
    student = student_from_teacher(teacher.state_dict(), preset, (3, 16, 16)).eval()
    x, t, y = torch.randn(2, 3, 16, 16), torch.tensor([0.5, 20.0]), torch.tensor([0, 4])
    with torch.no_grad():
        d = teacher.denoise(x, t, labels=y)
        assert torch.equal(student.g(x, t, t, labels=y), d)
        assert torch.equal(student.g(x, t, torch.tensor([0.002, 3.0]), labels=y), d)
        _randomise(student.net.middle_block[0].emb_layers_s)  # the s-branch is live once trained
        assert not torch.allclose(student.g(x, t, torch.tensor([0.002, 3.0]), labels=y), d)


def test_s_branch_learns_from_zero_init():
    """A trained teacher's weights elsewhere, s-layers at zero: the s-layers still receive gradient."""
    net = _net(use_s=True)
    _randomise(net)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if "emb_layers_s.1" in name:
                p.zero_()
    net(torch.randn(2, 3, 16, 16), torch.randn(2), torch.randn(2)).square().sum().backward()
    assert net.input_blocks[1][0].emb_layers_s[1].weight.grad.abs().sum() > 0


def test_bad_head_width_refused():
    with pytest.raises(ValueError, match="multiple of the head width"):
        AttentionBlock(48, head_channels=32)


def test_adaptive_weight_layer_is_sonys():
    """output_blocks[15][0].out_layers[3] at paper size (16 output blocks): the last block's ResBlock conv."""
    from ctmtool.train.teacher_objective import last_layer

    student = build_precond("ctm", _preset(), (3, 16, 16))
    assert last_layer(student) is student.net.output_blocks[-1][0].out_layers[3].weight
    assert len(student.net.output_blocks) == 4  # 2 levels x (1 + 1) here; 4 x (3 + 1) = 16 at paper size
