"""The CTM paper's discriminator: Projected GAN (Sauer et al. 2021) as in the official CIFAR-10 code.

Kim et al. 2024 (ctm-cifar10 cm/enc_dec_lib.py 30-63, pg_modules/projector.py, pg_modules/discriminator.py):
two frozen pretrained feature networks from `timm`, `deit_base_distilled_patch16_224` (ImageNet
normalisation) and `tf_efficientnet_lite0` (mean = std = 0.5), each giving four feature maps that pass a
frozen random cross-channel mixing (CCM: 1x1 convs to 64, 128, 256, 512 channels) and cross-scale mixing
(CSM: top-down fusion, each stage adding the coarser map, upsampling x2 and a 1x1 conv), then four
trainable heads per network (`MultiScaleD` of `SingleDisc`s: spectral-norm strided convs, batch norm,
LeakyReLU 0.2, down to 8x8 nominal, then a 4x4 conv to one channel). Images in [-1, 1] are mapped to
[0, 1], normalised for the network and, below 256 pixels, resized bilinearly to 224. Labels are ignored.
`forward(x)` returns one (B, n) logit tensor per feature network, for the hinge losses of `losses/gan.py`.

The pretrained weights are not part of the discriminator's state dict (only the random projections and
the heads are, so a checkpoint holds the small part and resumes exactly); they are read once from
`weights_dir/<name>.safetensors` (or `.pth`), else from timm's Hugging Face cache.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ctmtool.errors import UserError

BACKBONES = ("deit_base_distilled_patch16_224", "tf_efficientnet_lite0")
HF_REPOS = {"deit_base_distilled_patch16_224": "timm/deit_base_distilled_patch16_224.fb_in1k",
            "tf_efficientnet_lite0": "timm/tf_efficientnet_lite0.in1k"}
NORMS = {"deit_base_distilled_patch16_224": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
         "tf_efficientnet_lite0": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))}
VIT_HOOKS, VIT_FEATURES = (2, 5, 8, 11), (96, 192, 384, 768)  # ViT-base blocks tapped and their projections
NOMINAL_RES = (128, 64, 32, 16)  # the head sizes the official code plans for (256 // 4, ..., x2 by the CSM)
MIDAS_CHANNELS = {4: 512, 8: 512, 16: 256, 32: 128, 64: 64, 128: 64, 256: 32, 512: 16, 1024: 8}


def weight_file(name: str, weights_dir: str | Path | None = None) -> Path:
    """The pretrained weights of backbone `name`; a UserError names the file, where it was looked for and its
    source."""
    url = f"https://huggingface.co/{HF_REPOS[name]}/resolve/main/model.safetensors"
    if weights_dir is not None:
        for suffix in (".safetensors", ".pth", ".pt"):
            p = Path(weights_dir) / f"{name}{suffix}"
            if p.is_file():
                return p
        raise UserError("the Projected-GAN discriminator needs "
                        f"{Path(weights_dir) / (name + '.safetensors')} (timm's pretrained {name}, from "
                        f"{url}); download it on a machine with internet access, or set gan.discriminator = "
                        "'scratch'")
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(HF_REPOS[name], "model.safetensors")
    except Exception:  # noqa: BLE001 - no cache or no hub library: the error below says what to do
        cached = None
    if isinstance(cached, str) and Path(cached).is_file():
        return Path(cached)
    raise UserError(f"the Projected-GAN discriminator needs timm's pretrained {name} (model.safetensors of "
                    f"{HF_REPOS[name]}, from {url}), which is not in the Hugging Face cache; put it in a "
                    f"folder as {name}.safetensors and set gan.feature_weights to that folder, or set "
                    "gan.discriminator = 'scratch'")


def _read(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure is a problem of the user's file
        raise UserError(f"cannot read feature-network weights {path}: {err}") from None


def create_backbone(name: str, state: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """timm's network `name` without downloading anything, loaded from `state` if given."""
    import timm

    model = timm.create_model(name, pretrained=False)
    if state is not None:
        try:
            model.load_state_dict(state)
        except RuntimeError as err:
            raise UserError(f"the weights given for {name} do not fit timm's network "
                            f"({str(err).splitlines()[0]})") from None
    return model.eval().requires_grad_(False)


class EfficientNetMaps(nn.Module):
    """Four maps of an EfficientNet (pretrained_builder._make_efficientnet): stem+blocks 0-1, 2, 3-4, 5-6."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.layers = [nn.Sequential(model.conv_stem, model.bn1, *model.blocks[0:2]),
                       nn.Sequential(*model.blocks[2:3]), nn.Sequential(*model.blocks[3:5]),
                       nn.Sequential(*model.blocks[5:9])]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for layer in self.layers:
            x = layer(x)
            out.append(x)
        return out


class ViTMaps(nn.Module):
    """Four maps of a DeiT/ViT (feature_networks/vit.py): tokens of blocks 2, 5, 8, 11, prefix tokens dropped,
    as 14x14 maps through frozen random 1x1 convs to 96/192/384/768 channels, resampled to 56/28/14/7."""

    def __init__(self, model: nn.Module, vit_features: int = 768):
        super().__init__()
        self.model = model
        f = VIT_FEATURES
        self.post = nn.ModuleList([
            nn.Sequential(nn.Conv2d(vit_features, f[0], 1), nn.ConvTranspose2d(f[0], f[0], 4, stride=4)),
            nn.Sequential(nn.Conv2d(vit_features, f[1], 1), nn.ConvTranspose2d(f[1], f[1], 2, stride=2)),
            nn.Sequential(nn.Conv2d(vit_features, f[2], 1)),
            nn.Sequential(nn.Conv2d(vit_features, f[3], 1), nn.Conv2d(f[3], f[3], 3, stride=2, padding=1)),
        ])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        m, (h, w) = self.model, (x.shape[-2] // 16, x.shape[-1] // 16)
        tokens = m.patch_embed.proj(x).flatten(2).transpose(1, 2)
        prefix = [m.cls_token.expand(x.shape[0], -1, -1)]
        if getattr(m, "dist_token", None) is not None:
            prefix.append(m.dist_token.expand(x.shape[0], -1, -1))
        n_prefix = len(prefix)
        pos = m.pos_embed
        grid = int((pos.shape[1] - n_prefix) ** 0.5)
        if (grid, grid) != (h, w):  # forward_flex: resize the position grid bilinearly
            g = pos[0, n_prefix:].reshape(1, grid, grid, -1).permute(0, 3, 1, 2)
            g = F.interpolate(g, size=(h, w), mode="bilinear",
                              align_corners=False).permute(0, 2, 3, 1).reshape(1, h * w, -1)
            pos = torch.cat([pos[:, :n_prefix], g], dim=1)
        t = m.pos_drop(torch.cat([*prefix, tokens], dim=1) + pos)
        maps = []
        for i, blk in enumerate(m.blocks[: VIT_HOOKS[-1] + 1]):
            t = blk(t)
            if i in VIT_HOOKS:
                maps.append(t[:, n_prefix:].transpose(1, 2).contiguous().reshape(t.shape[0], -1, h, w))
        return [post(f) for post, f in zip(self.post, maps, strict=True)]


class FeatureFusion(nn.Module):
    """CSM stage (pg_modules/blocks.py FeatureFusionBlock): add the lateral map, upsample x2, 1x1 conv."""

    def __init__(self, channels: int, expand: bool):
        super().__init__()
        self.out_conv = nn.Conv2d(channels, channels // 2 if expand else channels, 1)

    def forward(self, x: torch.Tensor, lateral: torch.Tensor | None = None) -> torch.Tensor:
        if lateral is not None:
            x = x + lateral
        return self.out_conv(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True))


class RandomProjection(nn.Module):
    """A frozen feature network followed by frozen random CCM and CSM (projector.py F_RandomProj, proj_type
    2)."""

    def __init__(self, maps: nn.Module, in_channels: list[int], cout: int = 64):
        super().__init__()
        self.maps = maps  # EfficientNetMaps / ViTMaps; its pretrained part is kept out of the state dict
        ccm = [cout, cout * 2, cout * 4, cout * 8]
        self.ccm = nn.ModuleList(nn.Conv2d(c, o, 1) for c, o in zip(in_channels, ccm, strict=True))
        self.csm = nn.ModuleList([FeatureFusion(ccm[0], expand=False), FeatureFusion(ccm[1], True),
                                  FeatureFusion(ccm[2], True), FeatureFusion(ccm[3], True)])
        self.channels = [cout, cout, cout * 2, cout * 4]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        mixed = [conv(f) for conv, f in zip(self.ccm, self.maps(x), strict=True)]
        out3 = self.csm[3](mixed[3])
        out2 = self.csm[2](out3, mixed[2])
        out1 = self.csm[1](out2, mixed[1])
        out0 = self.csm[0](out1, mixed[0])
        return [out0, out1, out2, out3]


def _sn_conv(*args, **kwargs) -> nn.Module:
    # torch.nn.utils.spectral_norm (one power iteration per training forward, v then u), as
    # pg_modules/blocks.py
    return torch.nn.utils.spectral_norm(nn.Conv2d(*args, **kwargs))


class SingleDisc(nn.Module):
    """One head (discriminator.py SingleDisc): DownBlocks (SN conv 4/2/1, BatchNorm, LeakyReLU 0.2) to 8x8
    nominal, SN conv 4."""

    def __init__(self, nc: int, start_sz: int, end_sz: int = 8):
        super().__init__()
        nfc = dict(MIDAS_CHANNELS)
        nfc[start_sz] = nc
        layers, sz = [], start_sz
        while sz > end_sz:
            layers.append(nn.Sequential(_sn_conv(nfc[sz], nfc[sz // 2], 4, 2, 1, bias=True),
                                        nn.BatchNorm2d(nfc[sz // 2]), nn.LeakyReLU(0.2, inplace=True)))
            sz //= 2
        layers.append(_sn_conv(nfc[end_sz], 1, 4, 1, 0, bias=False))
        self.main = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)


class ProjectedDiscriminator(nn.Module):
    """D(x) for images in [-1, 1]: one (B, n) logit tensor per feature network; labels are ignored."""

    def __init__(self,
        backbones: dict[str, nn.Module] | None = None,  # name -> timm network (None: load BACKBONES' weights)
        weights_dir: str | Path | None = None,  # folder of <name>.safetensors (None: the Hugging Face cache)
        cout: int = 64,                 # CCM width
        resize: int = 224,              # side images below 256 pixels are resized to
    ):
        super().__init__()
        if backbones is None:
            backbones = {n: create_backbone(n, _read(weight_file(n, weights_dir))) for n in BACKBONES}
        self.names, self.resize = list(backbones), resize
        self.features = nn.ModuleDict()
        self._pretrained = []  # (unregistered: not in the state dict, moved by _apply)
        for name, model in backbones.items():
            model = model.eval().requires_grad_(False)
            self._pretrained.append(model)
            maps = (ViTMaps(model, model.embed_dim) if hasattr(model, "patch_embed")
                    else EfficientNetMaps(model))
            if isinstance(maps, ViTMaps):  # its model is pretrained: keep it out of the registered tree
                maps.__dict__["model"] = maps._modules.pop("model")
            with torch.no_grad():  # channels of the four maps (projector.py calc_dims probes too)
                chans = [f.shape[1] for f in maps(torch.zeros(1, 3, 224, 224))]
            self.features[name] = RandomProjection(maps, chans, cout).requires_grad_(False)
        self.heads = nn.ModuleDict({
            name: nn.ModuleDict({str(i): SingleDisc(c, r) for i, (c, r) in
                                 enumerate(zip(self.features[name].channels, NOMINAL_RES, strict=True))})
            for name in self.names})

    def _apply(self, fn, *args, **kwargs):
        super()._apply(fn, *args, **kwargs)
        for model in self._pretrained:
            model._apply(fn)
        return self

    def train(self, mode: bool = True) -> ProjectedDiscriminator:
        super().train(mode)
        self.features.train(False)  # frozen feature networks and projections stay in eval mode
        for model in self._pretrained:
            model.train(False)
        return self

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> list[torch.Tensor]:
        if x.shape[1] == 1:  # grey images: repeat to RGB for the ImageNet networks
            x = x.expand(-1, 3, -1, -1)
        x01 = (x + 1) / 2
        logits = []
        for name in self.names:
            mean, std = (torch.tensor(v, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
                         for v in NORMS[name])
            xn = (x01 - mean) / std
            if xn.shape[-2] < 256:
                xn = F.interpolate(xn, self.resize, mode="bilinear", align_corners=False)
            feats = self.features[name](xn)
            logits.append(torch.cat([head(feats[int(k)]).flatten(1) for k, head in self.heads[name].items()],
                                    dim=1))
        return logits

