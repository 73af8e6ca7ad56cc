"""The CTM distance d(x_est, x_tgt) (paper Sec. 4): one value per sample.

Pixel-space choices: pseudo-Huber (iCT, Song & Dhariwal 2023) and squared L2; feature-space choices:
LPIPS with a VGG16 backbone (Zhang et al. 2018, the CTM paper's choice) and a user-given frozen network.
Every distance maps two (B, ...) batches to a (B,) tensor and keeps the graph for gradients to x.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ctmtool.config import CTMConfig
from ctmtool.errors import UserError

Distance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def default_huber_c(dim: int) -> float:
    """iCT's pseudo-Huber constant c = 0.00054 * sqrt(D) for data of D dimensions (iCT, Song & Dhariwal
    2023)."""
    return 0.00054 * math.sqrt(dim)


def pseudo_huber(x: torch.Tensor, y: torch.Tensor, c: float) -> torch.Tensor:
    """Pseudo-Huber distance sqrt(||x - y||^2 + c^2) - c per sample (iCT, Song & Dhariwal 2023)."""
    sq = (x - y).flatten(1).square().sum(dim=1)
    return torch.sqrt(sq + c * c) - c


def squared_l2(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean over dimensions of (x - y)^2 per sample (the consistency models' l2 metric)."""
    return (x - y).flatten(1).square().mean(dim=1)


class PseudoHuber(nn.Module):
    """`pseudo_huber` with a fixed c, as a module (so every distance can be moved with `.to`)."""

    def __init__(self, c: float):  # c > 0, see `default_huber_c`
        super().__init__()
        self.c = float(c)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return pseudo_huber(x, y, self.c)

    def extra_repr(self) -> str:
        return f"c={self.c:g}"


class SquaredL2(nn.Module):
    """`squared_l2` as a module."""

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return squared_l2(x, y)


def _unit(f: torch.Tensor, dim: int = 1, eps: float = 1e-10) -> torch.Tensor:
    """f divided by its L2 norm along `dim` (LPIPS Eq. 1 normalisation; eps as in the lpips package)."""
    return f / (f.square().sum(dim=dim, keepdim=True).sqrt() + eps)


# --------------------------------------------------------------------------------------------------
# LPIPS (VGG16)

# VGG16 `features` indices after which LPIPS taps a ReLU output: relu1_2, relu2_2, relu3_3, relu4_3, relu5_3.
_VGG_TAPS = (3, 8, 15, 22, 29)
_VGG_CHANNELS = (64, 128, 256, 512, 512)
# ImageNet statistics rescaled to inputs in [-1, 1], as in the lpips package's ScalingLayer.
_LPIPS_SHIFT = (-0.030, -0.088, -0.188)
_LPIPS_SCALE = (0.458, 0.448, 0.450)


def _lpips_key_map(features: nn.Sequential) -> dict[str, str]:
    """lpips-package state-dict key -> key of `LPIPS`, for every tensor LPIPS needs (slice k ends at tap
    k)."""
    keys, start = {}, 0
    for k, tap in enumerate(_VGG_TAPS):
        for i in range(start, tap + 1):
            if isinstance(features[i], nn.Conv2d):
                for p in ("weight", "bias"):
                    keys[f"net.slice{k + 1}.{i}.{p}"] = f"features.{i}.{p}"
        keys[f"lin{k}.model.1.weight"] = f"lins.{k}.weight"
        start = tap + 1
    return keys


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a state dict from a .safetensors file or a torch .pt/.pth file, as CPU tensors."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path), device="cpu")
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any read failure is a problem of the user's file
        raise UserError(f"cannot read LPIPS weights {path}: {err}") from None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise UserError(f"LPIPS weights {path} are not a state dict of tensors (name -> tensor)")
    return sd


_LPIPS_HOWTO = (
    "build the file on a machine with internet access: `pip install lpips`, then in Python "
    "`import lpips, torch; torch.save(lpips.LPIPS(net='vgg').state_dict(), 'lpips_vgg.pt')`, "
    "copy lpips_vgg.pt here and set ctm.lpips_weights to its path"
)


class LPIPS(nn.Module):
    """LPIPS distance with the VGG16 backbone (Zhang et al. 2018, Eq. 1), per sample, for images in [-1, 1].

    Weights: ONE file, a torch state dict (.pt/.pth) or a .safetensors file, with the key names of the
    `lpips` package's `lpips.LPIPS(net='vgg')`:
      - backbone convolutions `net.slice{1..5}.{i}.weight` / `.bias` for the torchvision VGG16 `features`
        indices i in {0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28} (slice1: 0-3, slice2: 4-8, slice3: 9-15,
        slice4: 16-22, slice5: 23-29);
      - linear layers `lin{0..4}.model.1.weight` of shape (1, C, 1, 1), C = 64, 128, 256, 512, 512.
    Other keys (`scaling_layer.*`, the duplicate `lins.*`) are ignored. To build it on an online machine:
    `pip install lpips` and `torch.save(lpips.LPIPS(net='vgg').state_dict(), 'lpips_vgg.pt')` (that state
    dict holds the ImageNet VGG16 weights and the LPIPS v0.1 linear weights). For a .safetensors file, drop
    the duplicate `lins.*` entries first (safetensors refuses tensors that share memory) and use
    `safetensors.torch.save_file`.

    As in the CTM reference code, inputs are resized bilinearly to `resize` x `resize` (224) first. The
    module is frozen and always in eval mode; gradients flow to the inputs only.
    """

    def __init__(self,
        weights_path: str | Path,       # the state-dict file described above
        resize: int | None = 224,       # side the images are resized to before VGG16 (None: keep the size)
    ):
        super().__init__()
        path = Path(weights_path)
        if not path.is_file():
            raise UserError(f"LPIPS weights file {path} does not exist; {_LPIPS_HOWTO}")
        from torchvision.models.vgg import cfgs, make_layers  # torchvision's VGG16 architecture, no download

        self.resize = resize
        self.features = make_layers(cfgs["D"])[: _VGG_TAPS[-1] + 1]
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, kernel_size=1, bias=False) for c in _VGG_CHANNELS)
        self.register_buffer("shift", torch.tensor(_LPIPS_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_LPIPS_SCALE).view(1, 3, 1, 1), persistent=False)
        self._load(path)
        self.requires_grad_(False)
        self.eval()

    def _load(self, path: Path) -> None:
        sd = _read_state_dict(path)
        key_map = _lpips_key_map(self.features)
        missing = [k for k in key_map if k not in sd]
        if missing:
            shown = ", ".join(missing[:6]) + (f" and {len(missing) - 6} more" if len(missing) > 6 else "")
            raise UserError(
                f"LPIPS weights {path} lack {len(missing)} of the {len(key_map)} expected keys ({shown}); "
                f"the file must hold the full lpips.LPIPS(net='vgg') state dict; {_LPIPS_HOWTO}"
            )
        own = self.state_dict()
        for src, dst in key_map.items():
            if sd[src].shape != own[dst].shape:
                raise UserError(
                    f"LPIPS weights {path}: {src} has shape {tuple(sd[src].shape)}, "
                    f"expected {tuple(own[dst].shape)} (VGG16 LPIPS); {_LPIPS_HOWTO}"
                )
        self.load_state_dict({dst: sd[src] for src, dst in key_map.items()})

    def train(self, mode: bool = True) -> LPIPS:
        return super().train(False)  # frozen: always eval

    def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in _VGG_TAPS:
                out.append(x)
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:  # grey images: repeat to RGB
            x, y = x.expand(-1, 3, -1, -1), y.expand(-1, 3, -1, -1)
        if self.resize is not None and x.shape[-2:] != (self.resize, self.resize):
            x = F.interpolate(x, size=(self.resize, self.resize), mode="bilinear", align_corners=False)
            y = F.interpolate(y, size=(self.resize, self.resize), mode="bilinear", align_corners=False)
        feats = self._taps((torch.cat([x, y]) - self.shift) / self.scale)  # one VGG pass for both batches
        total = x.new_zeros(x.shape[0])
        for f, lin in zip(feats, self.lins, strict=True):
            a, b = _unit(f).chunk(2)
            total = total + lin((a - b).square()).mean(dim=(1, 2, 3))
        return total


# --------------------------------------------------------------------------------------------------
# A user-given feature network


class FeatureDistance(nn.Module):
    """Squared distance between unit-normalised features of a frozen network (the LPIPS idea, Zhang et al.
    2018).

    The network (any nn.Module or TorchScript module) returns a (B, C) tensor, a (B, C, H, W) tensor, or a
    list/tuple of them. A (B, C) feature is normalised as a vector; a (B, C, H, W) feature along C at each
    position, then summed over C and averaged over positions; a list sums its entries' distances.
    """

    def __init__(self,
        backbone: nn.Module,            # frozen feature network
        input_range: str = "[-1,1]",    # what the network expects: "[-1,1]" or "[0,255]"
        resize: int | None = None,      # side images are resized to (bilinear) first (None: keep)
    ):
        super().__init__()
        if input_range not in ("[-1,1]", "[0,255]"):
            raise ValueError(f"input_range must be '[-1,1]' or '[0,255]', got {input_range!r}")
        self.backbone = backbone.eval()
        for p in backbone.parameters():  # (TorchScript modules lack requires_grad_)
            p.requires_grad_(False)
        self.input_range, self.resize = input_range, resize

    def train(self, mode: bool = True) -> FeatureDistance:
        return super().train(False)  # frozen: always eval

    def _features(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.resize is not None and x.shape[-2:] != (self.resize, self.resize):
            x = F.interpolate(x, size=(self.resize, self.resize), mode="bilinear", align_corners=False)
        if self.input_range == "[0,255]":
            x = (x + 1) * 127.5
        f = self.backbone(x)
        return list(f) if isinstance(f, list | tuple) else [f]

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        total = x.new_zeros(x.shape[0])
        for a, b in zip(self._features(x), self._features(y), strict=True):
            if a.dim() != 4:
                a, b = a.flatten(1), b.flatten(1)
            d = (_unit(a) - _unit(b)).square().sum(dim=1)
            total = total + (d.flatten(1).mean(dim=1) if d.dim() > 1 else d)
        return total


# --------------------------------------------------------------------------------------------------


def make_distance(cfg: CTMConfig,
    dim: int,                           # data dimension D (for the default pseudo-Huber c)
    feature_net: nn.Module | None = None,  # the network for distance = "feature"
    feature_range: str = "[-1,1]",      # input range feature_net expects: "[-1,1]" or "[0,255]"
) -> nn.Module:
    """The distance chosen by `cfg.distance`, as a module mapping (x, y) to a (B,) tensor (move it with
    `.to`)."""
    if cfg.distance == "pseudo_huber":
        return PseudoHuber(cfg.huber_c if cfg.huber_c is not None else default_huber_c(dim))
    if cfg.distance == "l2":
        return SquaredL2()
    if cfg.distance == "lpips":
        if cfg.lpips_weights is None:
            raise UserError("ctm.distance = 'lpips' needs ctm.lpips_weights = <path to a .pt or "
                            f".safetensors>; {_LPIPS_HOWTO}")
        return LPIPS(cfg.lpips_weights)
    if cfg.distance == "lpips_piq":
        from ctmtool.losses.lpips import PaperLPIPS

        return PaperLPIPS.from_files(cfg.lpips_weights)
    if cfg.distance == "feature":
        if feature_net is None:
            raise UserError("ctm.distance = 'feature' needs a feature network (a TorchScript file); "
                            "use 'pseudo_huber', 'l2' or 'lpips' otherwise")
        return FeatureDistance(feature_net, input_range=feature_range)
    raise ValueError(f"unknown distance {cfg.distance!r}")
