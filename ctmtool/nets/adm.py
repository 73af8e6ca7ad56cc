"""OpenAI's ADM U-Net (Dhariwal & Nichol 2021, as in openai/consistency_models) with Sony's CTM s-branch.

This is the network of the CTM paper's ImageNet 64x64 results (Kim et al. 2024, App. C): timestep
embedding, residual blocks with scale-shift norm (FiLM), resblock up/down-sampling, multi-head
self-attention at chosen resolutions with a fixed head width, and a learned class embedding added to
the time embedding. The CTM student adds the s-branch of Sony's code: a second embedding MLP
`time_embed_s` and one `emb_layers_s` per residual block, whose output joins `emb_layers(emb)` before
the scale-shift norm; the class embedding goes into the t-embedding only.

Parameter names and shapes are those of the official `UNetModel` (`time_embed.0.weight`,
`input_blocks.1.0.in_layers.2.weight`, `middle_block.1.qkv.weight`, `out.2.bias`, ...), so an official
state dict loads by name (see `ctmtool.importers.openai_adm`, `ctmtool.importers.sony_ctm`).

Time input. ctmtool's preconditioners pass c_noise = ln(sigma)/4 (EDM); the official ImageNet code feeds
250 ln(sigma) = 1000 * ln(sigma)/4 to the sinusoidal embedding, so this network multiplies its noise
labels by `time_scale` = 1000 before embedding them. The same holds for the s label.

Attention. The released checkpoints were trained with flash attention, which reads the qkv channels
three-major, `(three, heads, head_dim)`; `qkv_order="heads"` gives guided-diffusion's legacy
heads-major split `(heads, three, head_dim)` instead. Both run through `scaled_dot_product_attention`.

s-branch initialisation: the last layer of every `emb_layers_s` starts at zero, so a student whose
other weights come from a teacher computes exactly the teacher's function at init (Sony's code uses
PyTorch's default initialisation there instead; see docs/imagenet64.md).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from ctmtool.nets.songunet import upsample_nearest2x


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """[cos(t f_i), sin(t f_i)] with f_i = max_period^(-i/half) (guided-diffusion `timestep_embedding`)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([args.cos(), args.sin()], dim=-1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


class GroupNorm32(nn.GroupNorm):
    """Group normalisation computed in float32 whatever the input dtype (ADM `GroupNorm32`, 32 groups)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).to(x.dtype)


def _norm(channels: int) -> GroupNorm32:
    return GroupNorm32(32, channels)


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class Resample(nn.Module):
    """Nearest-neighbour x2 upsampling or 2x2 average pooling, with an optional 3x3 convolution (ADM)."""

    def __init__(self, channels: int, up: bool, use_conv: bool, out_channels: int | None = None):
        super().__init__()
        self.up, out_channels = up, out_channels or channels
        if up and use_conv:
            self.conv = nn.Conv2d(channels, out_channels, 3, padding=1)
        elif use_conv:
            self.op = nn.Conv2d(channels, out_channels, 3, stride=2, padding=1)
        elif out_channels != channels:
            raise ValueError("resampling without a convolution cannot change the channel count")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.up:
            x = upsample_nearest2x(x)  # interpolate(mode="nearest"), bit for bit, faster on the CPU
            return self.conv(x) if hasattr(self, "conv") else x
        return self.op(x) if hasattr(self, "op") else F.avg_pool2d(x, 2)


class ResBlock(nn.Module):
    """Residual block: GN-SiLU-conv, add/FiLM the (t + s) embedding, GN-SiLU-dropout-conv, skip (ADM
    `ResBlock`)."""

    def __init__(self,
        channels: int,                  # input channels
        emb_channels: int,              # width of the time embedding
        dropout: float,                 # dropout before the last convolution
        out_channels: int | None = None,  # output channels (default: channels)
        scale_shift: bool = True,       # FiLM (scale, shift) instead of adding the embedding
        up: bool = False,               # upsample by 2 inside the block
        down: bool = False,             # downsample by 2 inside the block
        use_s: bool = False,            # add `emb_layers_s` for the CTM s-embedding
    ):
        super().__init__()
        out_channels = out_channels or channels
        self.scale_shift, self.updown = scale_shift, up or down
        self.in_layers = nn.Sequential(_norm(channels), nn.SiLU(),
                                       nn.Conv2d(channels, out_channels, 3, padding=1))
        if self.updown:
            self.h_upd = Resample(channels, up, use_conv=False)
            self.x_upd = Resample(channels, up, use_conv=False)
        emb_out = 2 * out_channels if scale_shift else out_channels
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, emb_out))
        self.emb_layers_s = (nn.Sequential(nn.SiLU(), _zero(nn.Linear(emb_channels, emb_out))) if use_s
                             else None)
        self.out_layers = nn.Sequential(_norm(out_channels), nn.SiLU(), nn.Dropout(dropout),
                                        _zero(nn.Conv2d(out_channels, out_channels, 3, padding=1)))
        self.skip_connection = (nn.Identity() if out_channels == channels
                                else nn.Conv2d(channels, out_channels, 1))

    def forward(self, x: torch.Tensor, emb: torch.Tensor, emb_s: torch.Tensor | None = None) -> torch.Tensor:
        if self.updown:
            h = self.in_layers[2](self.h_upd(self.in_layers[1](self.in_layers[0](x))))
            x = self.x_upd(x)
        else:
            h = self.in_layers(x)
        e = self.emb_layers(emb)
        if self.emb_layers_s is not None and emb_s is not None:
            e = e + self.emb_layers_s(emb_s)
        e = e.to(h.dtype)[:, :, None, None]
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)
            h = self.out_layers[1:](self.out_layers[0](h) * (1 + scale) + shift)
        else:
            h = self.out_layers(h + e)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over positions with a residual connection (ADM `AttentionBlock`)."""

    def __init__(self,
        channels: int,                  # channels in and out
        num_heads: int = 1,             # heads when head_channels is -1
        head_channels: int = -1,        # fixed width per head (-1: use num_heads)
        qkv_order: str = "three",       # "three": (3, heads, d) as flash attention; "heads": (heads, 3, d)
    ):
        super().__init__()
        if head_channels != -1:
            if channels % head_channels:
                raise ValueError(f"{channels} channels are not a multiple of the head width {head_channels}")
            num_heads = channels // head_channels
        if qkv_order not in ("three", "heads"):
            raise ValueError(f"qkv_order must be 'three' or 'heads', got {qkv_order!r}")
        self.num_heads, self.qkv_order = num_heads, qkv_order
        self.norm = _norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj_out = _zero(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, hh, ww = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, -1, hh * ww)
        shape = ((b, 3, self.num_heads, -1, hh * ww) if self.qkv_order == "three"
                 else (b, self.num_heads, 3, -1, hh * ww))
        qkv = qkv.reshape(shape).transpose(-1, -2).contiguous()  # fused kernels need the head dim contiguous
        q, k, v = qkv.unbind(1) if self.qkv_order == "three" else qkv.unbind(2)  # each (b, heads, T, d)
        a = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj_out(a.transpose(-1, -2).reshape(b, c, hh, ww))


class Step(nn.ModuleList):
    """One entry of `input_blocks` / `middle_block` / `output_blocks`: layers applied in order
    (`TimestepEmbedSequential`)."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor, emb_s: torch.Tensor | None) -> torch.Tensor:
        for layer in self:
            x = layer(x, emb, emb_s) if isinstance(layer, ResBlock) else layer(x)
        return x


class ADMUNet(nn.Module):
    """ADM U-Net (Dhariwal & Nichol 2021) with the CTM s input of Kim et al. 2024 (Sony's `UNetModel`, ctm
    mode)."""

    def __init__(self,
        img_resolution: int,            # image resolution at input and output
        in_channels: int,               # colour channels at input
        out_channels: int,              # colour channels at output
        label_dim: int = 0,             # number of classes, 0 = unconditional
        model_channels: int = 192,      # base channel count
        channel_mult=(1, 2, 3, 4),      # per-resolution channel multipliers
        num_res_blocks: int = 3,        # residual blocks per resolution
        attn_resolutions=(32, 16, 8),   # resolutions with self-attention
        dropout: float = 0.0,           # dropout inside the residual blocks
        num_heads: int = 4,             # attention heads when head_channels is -1
        head_channels: int = 64,        # width per attention head (-1: use num_heads)
        scale_shift: bool = True,       # FiLM conditioning (use_scale_shift_norm)
        resblock_updown: bool = True,   # residual blocks for up/downsampling (else conv resampling)
        qkv_order: str = "three",       # "three" (flash-attention checkpoints) or "heads" (legacy)
        time_scale: float = 1000.0,     # noise labels (ln(sigma)/4) times this enter the embedding
        use_s: bool = False,            # second noise input s (CTM student)
    ):
        super().__init__()
        self.img_resolution, self.in_channels, self.out_channels = img_resolution, in_channels, out_channels
        self.label_dim, self.model_channels, self.time_scale, self.use_s = (label_dim, model_channels,
                                                                            time_scale, use_s)
        emb = model_channels * 4

        def mlp() -> nn.Sequential:
            return nn.Sequential(nn.Linear(model_channels, emb), nn.SiLU(), nn.Linear(emb, emb))

        self.time_embed = mlp()
        self.time_embed_s = mlp() if use_s else None
        self.label_emb = nn.Embedding(label_dim, emb) if label_dim else None

        res_kw = dict(emb_channels=emb, dropout=dropout, scale_shift=scale_shift, use_s=use_s)
        att_kw = dict(num_heads=num_heads, head_channels=head_channels, qkv_order=qkv_order)
        ch = input_ch = int(channel_mult[0] * model_channels)
        self.input_blocks = nn.ModuleList([Step([nn.Conv2d(in_channels, ch, 3, padding=1)])])
        skips, res = [ch], img_resolution
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, out_channels=int(mult * model_channels), **res_kw)]
                ch = int(mult * model_channels)
                if res in attn_resolutions:
                    layers.append(AttentionBlock(ch, **att_kw))
                self.input_blocks.append(Step(layers))
                skips.append(ch)
            if level != len(channel_mult) - 1:
                down = ResBlock(ch, down=True, **res_kw) if resblock_updown else Resample(ch, False, True)
                self.input_blocks.append(Step([down]))
                skips.append(ch)
                res //= 2
        self.middle_block = Step([ResBlock(ch, **res_kw), AttentionBlock(ch, **att_kw),
                                  ResBlock(ch, **res_kw)])
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                layers = [ResBlock(ch + skips.pop(), out_channels=int(mult * model_channels), **res_kw)]
                ch = int(mult * model_channels)
                if res in attn_resolutions:
                    layers.append(AttentionBlock(ch, **att_kw))
                if level and i == num_res_blocks:
                    layers.append(ResBlock(ch, up=True, **res_kw) if resblock_updown
                                  else Resample(ch, True, True))
                    res *= 2
                self.output_blocks.append(Step(layers))
        self.out = nn.Sequential(_norm(ch), nn.SiLU(), _zero(nn.Conv2d(input_ch, out_channels, 3, padding=1)))

    def adaptive_weight_layer(self) -> torch.Tensor:
        """The weight the adaptive DSM/GAN weights differentiate: the last ResBlock's output conv, as Sony's
        ImageNet code (`output_blocks[15][0].out_layers[3]`, karras_diffusion.py), not the final `out`
        conv."""
        return self.output_blocks[-1][0].out_layers[3].weight

    def _class_embedding(self, labels: torch.Tensor | None, batch: int, like: torch.Tensor) -> torch.Tensor:
        """label_emb(y) for integer labels; one-hot (or soft) label vectors are mixed through the same
        table."""
        if labels is None:  # as the SongUNet: an all-zero label vector, i.e. no class term
            return torch.zeros_like(like)
        if not labels.is_floating_point():
            return self.label_emb(labels.reshape(-1).long())
        return labels.reshape(batch, self.label_dim).to(self.label_emb.weight.dtype) @ self.label_emb.weight

    def forward(self, x: torch.Tensor, noise_labels: torch.Tensor, noise_labels_s: torch.Tensor | None = None,
                labels: torch.Tensor | None = None) -> torch.Tensor:
        """F(x, c_noise(t), c_noise(s), y); noise labels are ln(sigma)/4 and are multiplied by
        `time_scale`."""
        b = x.shape[0]
        t = noise_labels.float().reshape(-1).expand(b) * self.time_scale
        emb = self.time_embed(timestep_embedding(t, self.model_channels))
        if self.label_emb is not None:
            emb = emb + self._class_embedding(labels, b, emb)
        emb_s = None
        if self.use_s:
            s = (t if noise_labels_s is None
                 else noise_labels_s.float().reshape(-1).expand(b) * self.time_scale)
            emb_s = self.time_embed_s(timestep_embedding(s, self.model_channels))
        hs, h = [], x
        for step in self.input_blocks:
            h = step(h, emb, emb_s)
            hs.append(h)
        h = self.middle_block(h, emb, emb_s)
        for step in self.output_blocks:
            h = step(torch.cat([h, hs.pop()], dim=1), emb, emb_s)
        return self.out(h)
