"""Multi-scale discriminator for CTM's GAN term (CTM paper, Kim et al. 2024).

With a frozen pretrained feature network, small trainable heads judge its features at several scales, in
the style of Projected GANs (Sauer et al. 2021); without one, a small strided conv pyramid is trained from
scratch with a head at each level. `forward(x)` returns one logit map per head, for the hinge loss.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ctmtool.errors import UserError


def load_backbone(path: str | Path) -> nn.Module:
    """Load a TorchScript feature network (`torch.jit.save` output) onto the CPU, or raise UserError naming
    the file."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"discriminator backbone {p} does not exist; give a TorchScript file "
                        "(torch.jit.save) or leave gan.backbone unset to train the discriminator from "
                        "scratch")
    try:
        # TorchScript is deprecated in recent torch; it is still the portable format
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return torch.jit.load(str(p), map_location="cpu")
    except Exception as err:  # any load failure is a problem of the user's file
        raise UserError(f"cannot load discriminator backbone {p} as TorchScript: {err}; "
                        "export it with torch.jit.save(torch.jit.script(net) or torch.jit.trace(net, x), "
                        "path)") from None


def freeze(net: nn.Module) -> nn.Module:
    """Stop gradients to `net`'s weights and put it in eval mode (works for TorchScript modules too)."""
    for p in net.parameters():
        p.requires_grad_(False)
    return net.eval()


def _as_maps(out: torch.Tensor | list | tuple) -> list[torch.Tensor]:
    """Backbone output as a list of (B, C, H, W) maps; a (B, C) vector becomes a (B, C, 1, 1) map."""
    feats = list(out) if isinstance(out, list | tuple) else [out]
    maps = []
    for f in feats:
        if f.dim() == 2:
            f = f[:, :, None, None]
        if f.dim() != 4:
            raise ValueError(f"backbone features must be (B, C) or (B, C, H, W), got shape {tuple(f.shape)}")
        maps.append(f)
    return maps


class Head(nn.Module):
    """A patch-logit head: 1x1 conv, 3x3 conv, 1x1 conv to one channel, LeakyReLU(0.2) between."""

    def __init__(self,
        in_channels: int,               # feature channels it reads
        channels: int,                  # hidden width
        norm: Callable[[nn.Module], nn.Module],  # wraps each conv (spectral norm or identity)
    ):
        super().__init__()
        self.net = nn.Sequential(
            norm(nn.Conv2d(in_channels, channels, 1)), nn.LeakyReLU(0.2),
            norm(nn.Conv2d(channels, channels, 3, padding=1)), nn.LeakyReLU(0.2),
            norm(nn.Conv2d(channels, 1, 1)),
        )

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.net(f)


class Discriminator(nn.Module):
    """Projected-GAN-style discriminator (Sauer et al. 2021): trainable heads over frozen features at several
    scales.

    backbone: any nn.Module or TorchScript module taking (B, in_channels, H, W) images in [-1, 1] (it must do
    its own normalisation) and returning a (B, C) or (B, C, H', W') tensor or a list of such maps. It is
    frozen (no gradient to its weights, always eval) while gradients flow through it to the input. It is
    not a registered submodule: `parameters()` and `state_dict()` hold only the trainable part (checkpoints
    stay small; load the backbone from its file again), but `.to()` / `.cuda()` / `.double()` move it too.
    A list of several maps gets one head per map (the deepest `num_scales`); a single map gets heads on it and
    on its 2x, 4x, ... average-pooled versions. Without a backbone, a strided conv pyramid (stride 2 per
    level, widths channels * 1, 2, 4, 8, 8...) is trained with a head at each of its `num_scales` levels.
    """

    def __init__(self,
        in_channels: int,               # image channels
        resolution: int,                # image side (square images)
        backbone: nn.Module | None = None,  # frozen feature network (None: train the features too)
        channels: int = 64,             # head width (and base width of the trained pyramid)
        num_scales: int | None = None,  # heads (None: every backbone map / up to 4 pyramid levels down to
                                        # 4x4)
        backbone_resize: int | None = None,  # side images are resized to (bilinear) before the backbone
        spectral_norm: bool = True,     # spectral normalisation of every trainable conv (Miyato et al. 2018)
    ):
        super().__init__()
        self.in_channels, self.resolution, self.backbone_resize = in_channels, resolution, backbone_resize
        norm = nn.utils.parametrizations.spectral_norm if spectral_norm else (lambda m: m)
        self._backbone = [freeze(backbone)] if backbone is not None else []
        if backbone is None:
            levels = int(math.log2(resolution)) if resolution >= 2 else 0
            if levels < 1:
                raise ValueError(f"resolution must be at least 2, got {resolution}")
            n = num_scales if num_scales is not None else max(1, min(4, levels - 2))
            if not 1 <= n <= levels:
                raise ValueError(f"num_scales must be in 1..{levels} for resolution {resolution}, got {n}")
            widths = [in_channels] + [channels * min(2**i, 8) for i in range(n)]
            self.stages = nn.ModuleList(
                nn.Sequential(norm(nn.Conv2d(widths[i], widths[i + 1], 4, stride=2, padding=1)),
                              nn.LeakyReLU(0.2))
                for i in range(n)
            )
            self.heads = nn.ModuleList(Head(w, channels, norm) for w in widths[1:])
            self.pool_levels = 0
        else:
            maps = self._probe()
            self.stages = nn.ModuleList()
            if len(maps) > 1:
                n = num_scales if num_scales is not None else len(maps)
                if not 1 <= n <= len(maps):
                    raise ValueError(f"num_scales must be in 1..{len(maps)} (the backbone returns "
                                     f"{len(maps)} maps), got {n}")
                self.map_index = list(range(len(maps) - n, len(maps)))
                self.pool_levels = 0
                self.heads = nn.ModuleList(Head(maps[i].shape[1], channels, norm) for i in self.map_index)
            else:
                side = min(maps[0].shape[-2:])
                most = int(math.log2(side)) + 1
                n = num_scales if num_scales is not None else min(3, most)
                if not 1 <= n <= most:
                    raise ValueError(f"num_scales must be in 1..{most} for {side}x{side} backbone features, "
                                     f"got {n}")
                self.map_index = [0]
                self.pool_levels = n
                self.heads = nn.ModuleList(Head(maps[0].shape[1], channels, norm) for _ in range(n))

    @property
    def backbone(self) -> nn.Module | None:
        return self._backbone[0] if self._backbone else None

    def _backbone_device(self) -> torch.device:
        t = next(iter(list(self.backbone.parameters()) + list(self.backbone.buffers())), None)
        return t.device if t is not None else torch.device("cpu")

    def _probe(self) -> list[torch.Tensor]:
        """Backbone output shapes for a dummy batch (to size the heads)."""
        x = torch.zeros(2, self.in_channels, self.resolution, self.resolution, device=self._backbone_device())
        with torch.no_grad():
            return _as_maps(self.backbone(self._resize(x)))

    def _resize(self, x: torch.Tensor) -> torch.Tensor:
        s = self.backbone_resize
        if s is None or x.shape[-2:] == (s, s):
            return x
        return F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False)

    def _apply(self, fn, *args, **kwargs):
        super()._apply(fn, *args, **kwargs)
        if self._backbone:
            self._backbone[0]._apply(fn)  # .to() / .cuda() / .double() move the unregistered backbone too
        return self

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.backbone is None:
            logits = []
            for stage, head in zip(self.stages, self.heads, strict=True):
                x = stage(x)
                logits.append(head(x))
            return logits
        maps = _as_maps(self.backbone(self._resize(x)))
        if self.pool_levels == 0:
            return [head(maps[i]) for i, head in zip(self.map_index, self.heads, strict=True)]
        f, logits = maps[0], []
        for k, head in enumerate(self.heads):
            if k > 0:
                f = F.avg_pool2d(f, 2)
            logits.append(head(f))
        return logits


class VectorDiscriminator(nn.Module):
    """Discriminator for vector data (the 2-D toys, flattened small items): a spectrally normalised LeakyReLU
    MLP trained from scratch, one logit per item. The GAN term then works on any data, not only images."""

    def __init__(self,
        dim: int,                       # flattened item size D
        hidden: int = 256,              # hidden width
        depth: int = 3,                 # hidden layers
        spectral_norm: bool = True,     # spectral normalisation of every layer (Miyato et al. 2018)
    ):
        super().__init__()
        norm = nn.utils.parametrizations.spectral_norm if spectral_norm else (lambda m: m)
        widths = [dim] + [hidden] * depth
        layers: list[nn.Module] = []
        for a, b in zip(widths, widths[1:], strict=False):
            layers += [norm(nn.Linear(a, b)), nn.LeakyReLU(0.2)]
        self.net = nn.Sequential(*layers, norm(nn.Linear(widths[-1], 1)))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.net(x.reshape(x.shape[0], -1))]
