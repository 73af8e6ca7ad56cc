"""One CTM distillation step of a DDPM++ SongUNet through the CPU's fast pieces (upsampling + convolution as
one transposed convolution, the bias inside the convolution, SDPA's fused attention kernel, nearest upsampling
by copies) against the same step through the reference pieces (interpolate, then convolve, then add the bias;
EDM's einsum attention): losses and updated weights within float32 rounding."""

from __future__ import annotations

import math

import torch
from torch import nn

from ctmtool.config import load_preset
from ctmtool.core.models import build_precond
from ctmtool.losses.distances import SquaredL2
from ctmtool.nets import songunet
from ctmtool.train.trajectory import ctm_objective

# Stated tolerance: the fast pieces sum the same products in another order (taps summed before they multiply,
# the bias inside the accumulation, an online softmax); after the CTM and DSM losses, backward, RAdam and the
# EMAs every weight is within 1e-5 of its tensor's scale and the losses within 1e-5 relative.
RTOL = 1e-5
UNET = ["net.kind=unet", "net.unet.model_channels=16", "net.unet.channel_mult=[1,2]", "net.unet.num_blocks=1",
        "net.unet.attn_resolutions=[8]", "net.unet.dropout=0.1", "data.resolution=16"]


def _reference_conv(self, x: torch.Tensor) -> torch.Tensor:
    F = nn.functional
    w = self.weight.to(x.dtype) if self.weight is not None else None
    if self.up:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
    if self.down:
        x = F.avg_pool2d(x, 2)
    if w is not None:
        x = F.conv2d(x, w, padding=w.shape[-1] // 2)
    return x + self.bias.reshape(1, -1, 1, 1) if self.bias is not None else x


def _reference_attention(self, h: torch.Tensor) -> torch.Tensor:
    b, c, hh, ww = h.shape
    q, k, v = self.qkv(h).reshape(b * self.num_heads, c // self.num_heads, 3, hh * ww).unbind(2)
    w = torch.einsum("ncq,nck->nqk", q, k / math.sqrt(k.shape[1])).softmax(dim=2)
    return torch.einsum("nqk,nck->ncq", w, v).reshape(b, c, hh, ww)


def _step(shape):
    p = load_preset("cifar10", [*UNET, "distill.batch=4", "distill.micro_batch=4", "ctm.distance=l2",
                                "ctm.dsm_weight=1", "ctm.eval_emas=[0.999]", "gan.enabled=false",
                                "ctm.grid=10", "ctm.max_steps=3",
                                "distill.precision=fp32", "distill.compile=false", "distill.lr=1e-2"])
    torch.manual_seed(5)
    teacher = build_precond("teacher", p, shape).eval().requires_grad_(False)
    with torch.no_grad():
        g = torch.Generator().manual_seed(6)
        for q in teacher.parameters():  # EDM's near-zero output initialisations would hide most paths
            q.copy_(torch.randn(q.shape, generator=g) * 0.2)
    obj = ctm_objective(p, shape, torch.device("cpu"), teacher, init_state=teacher.state_dict(),
                        distance=SquaredL2())
    x = torch.rand(4, *shape, generator=torch.Generator().manual_seed(7)) * 2 - 1
    logs = obj.step([(x, None)], 0.0)
    return logs, {n: q.detach().clone() for n, q in obj.net.named_parameters()}, \
        {n: q.detach().clone() for n, q in obj.emas[0.999].named_parameters()}


def test_ctm_step_fast_pieces_match_the_reference_pieces(monkeypatch):
    shape = (3, 16, 16)
    fast = _step(shape)
    monkeypatch.setattr(songunet.Conv2d, "forward", _reference_conv)
    monkeypatch.setattr(songunet.UNetBlock, "_attention", _reference_attention)
    ref = _step(shape)
    for k in ("loss", "ctm", "dsm"):
        assert abs(float(fast[0][k]) - float(ref[0][k])) <= RTOL * abs(float(ref[0][k])), k
    for got, want in ((fast[1], ref[1]), (fast[2], ref[2])):
        for name, w in want.items():
            assert float((got[name] - w).abs().max()) <= RTOL * float(w.abs().max()) + 1e-12, name
    moved = sum(not torch.equal(a, b) for a, b in zip(fast[1].values(), ref[1].values(), strict=True))
    assert moved > 0  # the two paths are really different code (not a vacuous comparison)
