"""LPIPS as the CTM paper computes it: `piq.LPIPS(replace_pooling=True)` on inputs upsampled to 224 x 224.

Kim et al. 2024 (ctm-cifar10 cm/enc_dec_lib.py 14-16, cm/karras_diffusion.py 356-365): VGG16 LPIPS whose
max-pooling layers are replaced by average pooling, images in [-1, 1] mapped to [0, 1] and, below 256
pixels, resized bilinearly to 224 before the network. The network is piq's own class; only the two
weight files are read here (with `weights_only=True`, so nothing in them is run) instead of by
`torch.hub`, which would download them and unpickle them without that restriction:

- `vgg16-397923af.pth`, torchvision's ImageNet VGG16 (https://download.pytorch.org/models/vgg16-397923af.pth)
- `lpips_weights.pt`, piq's LPIPS v0.1 linear weights (`piq.LPIPS._weights_url`)

Both are looked up in a folder given by `ctm.lpips_weights`, else in torch hub's cache
(`torch.hub.get_dir()/checkpoints`, where torchvision and piq put them when online).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ctmtool.errors import UserError

VGG16_FILE, VGG16_URL = "vgg16-397923af.pth", "https://download.pytorch.org/models/vgg16-397923af.pth"
LPIPS_FILE = "lpips_weights.pt"
LPIPS_LAYERS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")


def lpips_url() -> str:
    from piq.perceptual import LPIPS as PiqLPIPS

    return PiqLPIPS._weights_url


def weight_files(folder: str | Path | None = None) -> tuple[Path, Path]:
    """The VGG16 and LPIPS weight files; a UserError names each missing one, where it was looked for and its
    source."""
    base = Path(folder) if folder is not None else Path(torch.hub.get_dir()) / "checkpoints"
    vgg, lin = base / VGG16_FILE, base / LPIPS_FILE
    missing = [f"{p} (from {url})" for p, url in ((vgg, VGG16_URL), (lin, lpips_url())) if not p.is_file()]
    if missing:
        where = ("ctm.lpips_weights" if folder is not None
                 else "torch hub's cache (set ctm.lpips_weights to another folder)")
        raise UserError("the paper's LPIPS (piq, VGG16) needs weight files that are missing: "
                        f"{'; '.join(missing)}; download them on a machine with internet access and put them "
                        f"in {where}")
    return vgg, lin


def _load(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure is a problem of the user's file
        raise UserError(f"cannot read LPIPS weights {path}: {err}") from None


def vgg16_features(state: dict[str, torch.Tensor] | None = None) -> nn.Sequential:
    """torchvision's VGG16 `features` (no download), loaded from the `features.*` part of a VGG16 state
    dict."""
    from torchvision.models.vgg import cfgs, make_layers

    features = make_layers(cfgs["D"])
    if state is not None:
        own = {f"features.{k}" for k in features.state_dict()}
        missing = sorted(own - set(state))
        if missing:
            raise UserError(f"{VGG16_FILE} does not hold torchvision's VGG16 weights (no {missing[0]}, ...)")
        try:
            features.load_state_dict({k[len("features."):]: state[k] for k in own})
        except RuntimeError as err:
            raise UserError(f"{VGG16_FILE} does not hold torchvision's VGG16 weights "
                            f"({str(err).splitlines()[0]})") from None
    return features


class PaperLPIPS(nn.Module):
    """d(x, y) = piq.LPIPS(replace_pooling=True, reduction='none')(up(x+1)/2, up(y+1)/2), up = bilinear to
    224."""

    def __init__(self,
        features: nn.Sequential,        # VGG16 `features` (max pooling; piq swaps it for average pooling)
        lin_weights: list[torch.Tensor],  # the five LPIPS linear weights, shapes (1, C, 1, 1)
        resize: int = 224,              # side inputs below 256 pixels are resized to
    ):
        super().__init__()
        from piq.perceptual import LPIPS as PiqLPIPS
        from piq.perceptual import VGG16_LAYERS, ContentLoss

        if len(lin_weights) != 5:
            raise UserError(f"{LPIPS_FILE} must hold 5 linear weights (one per VGG16 layer), found "
                            f"{len(lin_weights)}")
        lp = PiqLPIPS.__new__(PiqLPIPS)  # piq's class and code; its __init__ would fetch weights from the net
        ContentLoss.__init__(lp, features, layers=[VGG16_LAYERS[n] for n in LPIPS_LAYERS],
                             weights=list(lin_weights), replace_pooling=True, distance="mse",
                             reduction="none", normalize_features=True)
        self.lpips, self.resize = lp, resize
        self.requires_grad_(False)

    @classmethod
    def from_files(cls, folder: str | Path | None = None, resize: int = 224) -> PaperLPIPS:
        vgg, lin = weight_files(folder)
        weights = _load(lin)
        if isinstance(weights, dict):
            weights = list(weights.values())
        if not isinstance(weights, list | tuple) or not all(isinstance(w, torch.Tensor) for w in weights):
            raise UserError(f"{lin} is not piq's LPIPS weights (a list of 5 tensors)")
        return cls(vgg16_features(_load(vgg)), list(weights), resize)

    def train(self, mode: bool = True) -> PaperLPIPS:
        return super().train(False)  # frozen: always eval

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x, y = x.expand(-1, 3, -1, -1), y.expand(-1, 3, -1, -1)
        if x.shape[-2] < 256:  # as the official code: only images below 256 pixels are resized
            x = F.interpolate(x, size=self.resize, mode="bilinear")
            y = F.interpolate(y, size=self.resize, mode="bilinear")
        return self.lpips((x + 1) / 2, (y + 1) / 2)
