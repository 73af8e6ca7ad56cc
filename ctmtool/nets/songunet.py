"""EDM's SongUNet (DDPM++ / NCSN++, Karras et al. 2022, App. F.2) with the CTM second noise input s.

Parameter and buffer names and shapes follow NVlabs/edm `training/networks.py`, so the `model.*` state
of a published EDM pickle loads one-to-one (see `ctmtool.importers.edm_pickle`). The CTM student (Kim et al.
2024, Sec. 4) adds `map_s_layer0/1` (an MLP on the embedding of noise_s) and one `affine_s` per block, whose
output joins the t-affine's before `norm1`; `affine_s` starts at zero, so a student initialised from a
teacher computes exactly the teacher's function.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.functional import silu

from ctmtool.nets.embedding import FourierEmbedding, PositionalEmbedding


def _init_weight(t: torch.Tensor, fan_in: int, fan_out: int, gain: float) -> None:
    """Xavier-uniform times `gain` (EDM `weight_init(mode='xavier_uniform') * init_weight`)."""
    bound = gain * math.sqrt(6 / (fan_in + fan_out))
    with torch.no_grad():
        t.uniform_(-bound, bound)


class Linear(nn.Module):
    """Fully connected layer, weight (out, in) (EDM `Linear`, Karras et al. 2022)."""

    def __init__(self,
        in_features: int,               # input width
        out_features: int,              # output width
        bias: bool = True,              # add a bias (initialised to zero)
        init_weight: float = 1.0,       # gain on the xavier-uniform weights
    ):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        _init_weight(self.weight, in_features, out_features, init_weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.bias.to(x.dtype) if self.bias is not None else None
        return nn.functional.linear(x, self.weight.to(x.dtype), b)


class Conv2d(nn.Module):
    """Convolution with optional FIR up/downsampling by 2 (EDM `Conv2d`, Karras et al. 2022)."""

    def __init__(self,
        in_channels: int,               # input channels
        out_channels: int,              # output channels
        kernel: int,                    # kernel size; 0: resampling only, no weights
        bias: bool = True,              # add a bias (initialised to zero)
        up: bool = False,               # upsample by 2 before the convolution
        down: bool = False,             # downsample by 2 before the convolution
        resample_filter=(1, 1),         # 1-D FIR taps of the resampling filter
        fused_resample: bool = False,   # resample and convolve in one padded pass
        init_weight: float = 1.0,       # gain on the xavier-uniform weights
    ):
        if up and down:
            raise ValueError("a convolution cannot both upsample and downsample")
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.up, self.down, self.fused_resample = up, down, fused_resample
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel, kernel)) if kernel else None
        self.bias = nn.Parameter(torch.zeros(out_channels)) if kernel and bias else None
        if self.weight is not None:
            _init_weight(self.weight, in_channels * kernel**2, out_channels * kernel**2, init_weight)
        taps = list(resample_filter)
        # the box filter [1, 1] (DDPM++): its FIR resampling is exactly 2x2 average pooling / nearest
        # upsampling
        self.box = len(taps) == 2 and taps[0] == taps[1] != 0
        f = torch.as_tensor(taps, dtype=torch.float32)
        f = f.ger(f)[None, None] / f.sum().square()
        self.register_buffer("resample_filter", f if up or down else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        F = nn.functional
        w = self.weight.to(x.dtype) if self.weight is not None else None
        f = self.resample_filter.to(x.dtype) if self.resample_filter is not None else None
        w_pad = w.shape[-1] // 2 if w is not None else 0
        f_pad = (f.shape[-1] - 1) // 2 if f is not None else 0
        if self.fused_resample and self.up and w is not None:
            f_up = f.mul(4).tile([self.in_channels, 1, 1, 1])
            x = F.conv_transpose2d(x, f_up, groups=self.in_channels, stride=2, padding=max(f_pad - w_pad, 0))
            x = F.conv2d(x, w, padding=max(w_pad - f_pad, 0))
        elif self.fused_resample and self.down and w is not None:
            x = F.conv2d(x, w, padding=w_pad + f_pad)
            x = self._down(x, f, self.out_channels, 0)
        elif self.up and self.box and w is not None and w.shape[-1] == 3 and x.device.type == "cpu":
            b = self.bias.to(x.dtype) if self.bias is not None else None
            return F.conv_transpose2d(x, _nearest_up_kernel(w), b, stride=2, padding=1)
        else:
            if self.up:
                x = self._up(x, f, f_pad)
            if self.down:
                x = self._down(x, f, self.in_channels, f_pad)
            if w is not None:  # the bias inside the convolution: one pass over the output less
                b = self.bias.to(x.dtype) if self.bias is not None else None
                return F.conv2d(x, w, b, padding=w_pad)
        if self.bias is not None:
            x = x + self.bias.to(x.dtype).reshape(1, -1, 1, 1)
        return x


    def _down(self, x: torch.Tensor, f: torch.Tensor, channels: int, pad: int) -> torch.Tensor:
        """FIR downsampling by 2; the box filter as average pooling, the same sums (a depthwise convolution
        ran the slow im2col path: 7% of a CTM step on the CPU)."""
        if self.box:
            return nn.functional.avg_pool2d(x, 2)
        return nn.functional.conv2d(x, f.tile([channels, 1, 1, 1]), groups=channels, stride=2, padding=pad)

    def _up(self, x: torch.Tensor, f: torch.Tensor, pad: int) -> torch.Tensor:
        """FIR upsampling by 2; the box filter (taps 4 * 1/4 = 1 on each 2x2 cell) is nearest upsampling, bit
        for bit."""
        if self.box:
            return upsample_nearest2x(x)
        f_up = f.mul(4).tile([self.in_channels, 1, 1, 1])
        return nn.functional.conv_transpose2d(x, f_up, groups=self.in_channels, stride=2, padding=pad)


class _NearestUp2x(torch.autograd.Function):
    """Nearest upsampling by 2 as two `repeat_interleave` copies; the gradient is aten's own
    `upsample_nearest2d_backward`, so both directions are bit for bit those of `interpolate(mode="nearest")`,
    whose CPU forward converted through channels-last (14-20x the time of the copies, 8x64x16x16)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.in_size = tuple(x.shape)
        return x.repeat_interleave(2, -1).repeat_interleave(2, -2)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        b, c, h, w = ctx.in_size
        return torch.ops.aten.upsample_nearest2d_backward(grad, [2 * h, 2 * w], [b, c, h, w], 2.0, 2.0)


def upsample_nearest2x(x: torch.Tensor) -> torch.Tensor:
    """interpolate(x, scale_factor=2, mode="nearest"), bit for bit, faster on the CPU (`_NearestUp2x`)."""
    if x.device.type != "cpu" or torch.onnx.is_in_onnx_export():
        return nn.functional.interpolate(x, scale_factor=2, mode="nearest")
    if torch.is_grad_enabled() and x.requires_grad:
        return _NearestUp2x.apply(x)
    return x.repeat_interleave(2, -1).repeat_interleave(2, -2)


def _nearest_up_kernel(w: torch.Tensor) -> torch.Tensor:
    """The 4x4 stride-2 transposed-convolution kernel (in, out, 4, 4) equal to nearest upsampling by 2
    followed by the 3x3 convolution `w` (out, in, 3, 3) with padding 1: each output pixel of phase 0 sees the
    input rows (i - 1, i) with taps (w0, w1 + w2), of phase 1 the rows (i, i + 1) with (w0 + w1, w2), and the
    same along the columns. 16 instead of 36 multiply-adds per input pixel and output channel; the same
    function within float32 rounding (the taps are summed before they multiply). Differentiable in `w`."""
    def taps(t: torch.Tensor, d: int) -> torch.Tensor:
        a, b, c = t.unbind(d)
        return torch.stack([c, b + c, a + b, a], d)
    return taps(taps(w, 2), 3).transpose(0, 1)


class GroupNorm(nn.GroupNorm):
    """Group normalisation with min(32, C/4) groups (EDM `GroupNorm`, Karras et al. 2022)."""

    def __init__(self,
        num_channels: int,              # channels normalised
        num_groups: int = 32,           # most groups
        min_channels_per_group: int = 4,  # fewest channels in one group
        eps: float = 1e-6,              # variance floor
    ):
        super().__init__(min(num_groups, num_channels // min_channels_per_group), num_channels, eps=eps)


class UNetBlock(nn.Module):
    """Residual block with additive noise embedding and optional self-attention (EDM `UNetBlock`, DDPM++)."""

    def __init__(self,
        in_channels: int,               # input channels
        out_channels: int,              # output channels
        emb_channels: int,              # width of the noise embedding
        up: bool = False,               # upsample by 2
        down: bool = False,             # downsample by 2
        attention: bool = False,        # self-attention after the residual branch
        num_heads: int = 1,             # attention heads
        dropout: float = 0.0,           # dropout before conv1
        skip_scale: float = 1.0,        # scale of each residual sum
        eps: float = 1e-6,              # GroupNorm epsilon
        resample_filter=(1, 1),         # FIR taps for up/downsampling
        use_s: bool = False,            # add `affine_s` for the CTM s-embedding
    ):
        super().__init__()
        self.in_channels, self.out_channels, self.emb_channels = in_channels, out_channels, emb_channels
        self.num_heads = num_heads if attention else 0
        self.dropout, self.skip_scale = dropout, skip_scale
        zero, attn = 1e-5, math.sqrt(0.2)  # EDM's init_zero and init_attn gains
        self.norm0 = GroupNorm(in_channels, eps=eps)
        self.conv0 = Conv2d(in_channels, out_channels, 3, up=up, down=down, resample_filter=resample_filter)
        self.affine = Linear(emb_channels, out_channels)
        self.affine_s = Linear(emb_channels, out_channels, init_weight=0.0) if use_s else None
        self.norm1 = GroupNorm(out_channels, eps=eps)
        self.conv1 = Conv2d(out_channels, out_channels, 3, init_weight=zero)
        self.skip = None
        if out_channels != in_channels or up or down:
            self.skip = Conv2d(in_channels, out_channels, 1, up=up, down=down,
                               resample_filter=resample_filter)
        if self.num_heads:
            self.norm2 = GroupNorm(out_channels, eps=eps)
            self.qkv = Conv2d(out_channels, out_channels * 3, 1, init_weight=attn)
            self.proj = Conv2d(out_channels, out_channels, 1, init_weight=zero)

    def forward(self, x: torch.Tensor, emb: torch.Tensor, emb_s: torch.Tensor | None = None) -> torch.Tensor:
        orig = x
        x = self.conv0(silu(self.norm0(x)))
        params = self.affine(emb)
        if self.affine_s is not None and emb_s is not None:
            params = params + self.affine_s(emb_s)
        x = silu(self.norm1(x + params[:, :, None, None].to(x.dtype)))
        x = self.conv1(nn.functional.dropout(x, p=self.dropout, training=self.training))
        x = (x + (self.skip(orig) if self.skip is not None else orig)) * self.skip_scale
        if self.num_heads:
            x = (self.proj(self._attention(self.norm2(x))) + x) * self.skip_scale
        return x

    def _attention(self, h: torch.Tensor) -> torch.Tensor:
        """softmax(q^T k / sqrt(c)) over positions, with EDM's (heads, c, 3, HW) split of the qkv channels."""
        b, c, hh, ww = h.shape
        q, k, v = (m.transpose(-1, -2).contiguous() for m in
                   self.qkv(h).reshape(b, self.num_heads, c // self.num_heads, 3, hh * ww).unbind(3))
        # contiguous (batch, heads, HW, c) operands: SDPA's fused (flash) kernel on the CPU too; on the
        # strided views it fell back to the unfused path (0.55x the time without gradients, 0.83x with,
        # 8 x 256 x 64)
        a = nn.functional.scaled_dot_product_attention(q, k, v)
        # 4-D (batch, heads, HW, c) as ONNX export needs; SDPA's output viewed as NCHW is channels-last, and
        # every later GroupNorm is several times slower on that layout: back to contiguous NCHW
        # (bench/songunet_layout.py)
        return a.transpose(-1, -2).reshape(b, c, hh, ww).contiguous()


class SongUNet(nn.Module):
    """DDPM++ / NCSN++ U-Net of Song et al. 2021 as re-implemented by EDM (Karras et al. 2022), plus CTM's
    s."""

    def __init__(self,
        img_resolution: int,            # image resolution at input and output
        in_channels: int,               # colour channels at input
        out_channels: int,              # colour channels at output
        label_dim: int = 0,             # number of classes, 0 = unconditional
        augment_dim: int = 0,           # augmentation-label width, 0 = none
        model_channels: int = 128,      # base channel count
        channel_mult=(2, 2, 2),         # per-resolution channel multipliers
        channel_mult_emb: int = 4,      # embedding width = model_channels * this
        num_blocks: int = 4,            # residual blocks per resolution
        attn_resolutions=(16,),         # resolutions with self-attention
        dropout: float = 0.1,           # dropout inside the blocks
        label_dropout: float = 0.0,     # class-label dropout for classifier-free guidance
        embedding_type: str = "positional",  # 'positional' (DDPM++) or 'fourier' (NCSN++)
        channel_mult_noise: int = 1,    # noise-embedding width multiplier: 1 DDPM++, 2 NCSN++
        encoder_type: str = "standard",  # 'standard' (DDPM++), 'skip' or 'residual' (NCSN++)
        decoder_type: str = "standard",  # 'standard' (DDPM++) or 'skip' (NCSN++)
        resample_filter=(1, 1),         # FIR taps: [1,1] DDPM++, [1,3,3,1] NCSN++
        use_s: bool = False,            # second noise input s (CTM student)
        s_label: bool = True,           # conditional: the class embedding joins the s-embedding too
                                        # (ctm-cifar10)
    ):
        if embedding_type not in ("positional", "fourier"):
            raise ValueError(f"embedding_type must be 'positional' or 'fourier', got {embedding_type!r}")
        if encoder_type not in ("standard", "skip", "residual"):
            raise ValueError(f"encoder_type must be 'standard', 'skip' or 'residual', got {encoder_type!r}")
        if decoder_type not in ("standard", "skip"):
            raise ValueError(f"decoder_type must be 'standard' or 'skip', got {decoder_type!r}")
        super().__init__()
        self.img_resolution, self.in_channels, self.out_channels = img_resolution, in_channels, out_channels
        self.label_dim, self.label_dropout, self.use_s, self.s_label = (label_dim, label_dropout, use_s,
                                                                        s_label)
        emb_channels = model_channels * channel_mult_emb
        noise_channels = model_channels * channel_mult_noise
        blk = dict(emb_channels=emb_channels, num_heads=1, dropout=dropout, skip_scale=math.sqrt(0.5),
                   eps=1e-6, resample_filter=resample_filter, use_s=use_s)

        # Mapping: noise (and s) embeddings, class and augmentation labels.
        if embedding_type == "positional":
            self.map_noise = PositionalEmbedding(noise_channels, endpoint=True)
        else:
            self.map_noise = FourierEmbedding(noise_channels)
        self.map_label = Linear(label_dim, noise_channels) if label_dim else None
        self.map_augment = Linear(augment_dim, noise_channels, bias=False) if augment_dim else None
        self.map_layer0 = Linear(noise_channels, emb_channels)
        self.map_layer1 = Linear(emb_channels, emb_channels)
        self.map_s_layer0 = Linear(noise_channels, emb_channels) if use_s else None
        self.map_s_layer1 = Linear(emb_channels, emb_channels) if use_s else None

        # Encoder.
        self.enc = nn.ModuleDict()
        cout = caux = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                cin, cout = cout, model_channels
                self.enc[f"{res}x{res}_conv"] = Conv2d(cin, cout, 3)
            else:
                self.enc[f"{res}x{res}_down"] = UNetBlock(cout, cout, down=True, **blk)
                if encoder_type == "skip":
                    self.enc[f"{res}x{res}_aux_down"] = Conv2d(caux, caux, 0, down=True,
                                                               resample_filter=resample_filter)
                    self.enc[f"{res}x{res}_aux_skip"] = Conv2d(caux, cout, 1)
                if encoder_type == "residual":
                    self.enc[f"{res}x{res}_aux_residual"] = Conv2d(
                        caux, cout, 3, down=True, resample_filter=resample_filter, fused_resample=True)
                    caux = cout
            for idx in range(num_blocks):
                cin, cout = cout, model_channels * mult
                self.enc[f"{res}x{res}_block{idx}"] = UNetBlock(cin, cout, attention=res in attn_resolutions,
                                                                **blk)
        skips = [block.out_channels for name, block in self.enc.items() if "aux" not in name]

        # Decoder.
        self.dec = nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            if level == len(channel_mult) - 1:
                self.dec[f"{res}x{res}_in0"] = UNetBlock(cout, cout, attention=True, **blk)
                self.dec[f"{res}x{res}_in1"] = UNetBlock(cout, cout, **blk)
            else:
                self.dec[f"{res}x{res}_up"] = UNetBlock(cout, cout, up=True, **blk)
            for idx in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), model_channels * mult
                attn = idx == num_blocks and res in attn_resolutions
                self.dec[f"{res}x{res}_block{idx}"] = UNetBlock(cin, cout, attention=attn, **blk)
            if decoder_type == "skip" or level == 0:
                if decoder_type == "skip" and level < len(channel_mult) - 1:
                    self.dec[f"{res}x{res}_aux_up"] = Conv2d(
                        out_channels, out_channels, 0, up=True, resample_filter=resample_filter)
                self.dec[f"{res}x{res}_aux_norm"] = GroupNorm(cout, eps=1e-6)
                self.dec[f"{res}x{res}_aux_conv"] = Conv2d(cout, out_channels, 3, init_weight=1e-5)

    def _embed(self, noise: torch.Tensor) -> torch.Tensor:
        """Sinusoidal/Fourier features of a noise label with EDM's sin/cos swap, in float32."""
        emb = self.map_noise(noise.float().reshape(-1))
        return emb.reshape(emb.shape[0], 2, -1).flip(1).reshape(*emb.shape)

    def _one_hot(self, labels: torch.Tensor | None, batch: int, like: torch.Tensor) -> torch.Tensor:
        if labels is None:  # as EDM's preconditioners: an all-zero label vector
            return torch.zeros(batch, self.label_dim, device=like.device, dtype=like.dtype)
        if not labels.is_floating_point():
            return nn.functional.one_hot(labels.reshape(-1).long(), self.label_dim).to(like.dtype)
        return labels.reshape(-1, self.label_dim).to(like.dtype)

    def _label_embedding(self, labels: torch.Tensor | None, x: torch.Tensor,
                         like: torch.Tensor) -> torch.Tensor:
        tmp = self._one_hot(labels, x.shape[0], like)
        if self.training and self.label_dropout:
            tmp = tmp * (torch.rand([x.shape[0], 1], device=x.device) >= self.label_dropout).to(tmp.dtype)
        return self.map_label(tmp * math.sqrt(self.label_dim))

    def forward(self, x: torch.Tensor, noise_t: torch.Tensor, noise_s: torch.Tensor | None = None,
                labels: torch.Tensor | None = None,
                augment_labels: torch.Tensor | None = None) -> torch.Tensor:
        # Mapping.
        emb = self._embed(noise_t)
        if self.map_label is not None:
            emb = emb + self._label_embedding(labels, x, emb)
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels.to(emb.dtype))
        emb = silu(self.map_layer1(silu(self.map_layer0(emb))))
        emb_s = None
        if self.use_s:
            emb_s = self._embed(noise_t if noise_s is None else noise_s)
            if self.map_label is not None and self.s_label:  # its own label-dropout draw, as ctm-cifar10
                emb_s = emb_s + self._label_embedding(labels, x, emb_s)
            emb_s = silu(self.map_s_layer1(silu(self.map_s_layer0(emb_s))))

        # Encoder.
        skips, aux = [], x
        for name, block in self.enc.items():
            if "aux_down" in name:
                aux = block(aux)
            elif "aux_skip" in name:
                x = skips[-1] = x + block(aux)
            elif "aux_residual" in name:
                x = skips[-1] = aux = (x + block(aux)) / math.sqrt(2)
            else:
                x = block(x, emb, emb_s) if isinstance(block, UNetBlock) else block(x)
                skips.append(x)

        # Decoder.
        aux = tmp = None
        for name, block in self.dec.items():
            if "aux_up" in name:
                aux = block(aux)
            elif "aux_norm" in name:
                tmp = block(x)
            elif "aux_conv" in name:
                tmp = block(silu(tmp))
                aux = tmp if aux is None else tmp + aux
            else:
                if x.shape[1] != block.in_channels:
                    x = torch.cat([x, skips.pop()], dim=1)
                x = block(x, emb, emb_s)
        return aux
