"""CTM checkpoints of the official CIFAR-10 code (Kim-Dongjun/ctm-cifar10): `EDMPrecond_CTM` state dicts.

Files `model{step:06d}.pt`, `ema_{rate}_{step:06d}.pt`, `target_model{step:06d}.pt`: `torch.save` of the
state dict of `EDMPrecond_CTM` (cm/networks.py), a SongUNet with CTM's s-layers under `model.`. The
network's settings are not stored; they are read from the tensor shapes (channels, levels, blocks,
attention, embedding, encoder/decoder, resampling filter, labels). Names map to ctmtool's as
`model.` -> `net.` and `map_layer{0,1}_s` -> `map_s_layer{0,1}`; everything else is identical. The
student is EDM-preconditioned (sigma_data 0.5, sigma in [0.002, 80], noise labels ln(sigma)/4).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from ctmtool.errors import UserError
from ctmtool.importers.base import ImportResult, clean_state

NAME = "ctm-cifar10"
RENAMES = (("map_layer0_s.", "map_s_layer0."), ("map_layer1_s.", "map_s_layer1."))
CIFAR_DROPOUT = 0.13  # the official CIFAR-10 commands' dropout (not stored in the file)


def sniff(obj: Any) -> bool:
    return isinstance(obj, dict) and "model.map_layer0_s.weight" in obj


def to_ctmtool_name(name: str) -> str:
    """`model.map_layer0_s.weight` -> `net.map_s_layer0.weight`, `model.enc...` -> `net.enc...`."""
    if not name.startswith("model."):
        raise UserError(f"unexpected tensor {name!r} in a ctm-cifar10 checkpoint (every name starts with "
                        "'model.')")
    rest = name[len("model."):]
    for old, new in RENAMES:
        if rest.startswith(old):
            rest = new + rest[len(old):]
    return "net." + rest


def infer_songunet(state: dict[str, torch.Tensor]) -> tuple[dict, tuple[int, ...], int]:
    """SongUNet settings, data shape and label_dim read from a ctmtool-named state dict (`net.` prefix)."""
    def shape(k):
        if k not in state:
            raise UserError(f"not a SongUNet checkpoint: no tensor {k!r}")
        return tuple(state[k].shape)

    first = [k for k in state if re.fullmatch(r"net\.enc\.(\d+)x\1_conv\.weight", k)]
    if len(first) != 1:
        raise UserError("not a SongUNet checkpoint: no single input convolution enc.<R>x<R>_conv")
    res = int(re.match(r"net\.enc\.(\d+)x", first[0]).group(1))
    mc, chans = shape(first[0])[:2]
    emb, noise = shape("net.map_layer0.weight")
    levels, mult, blocks, attn = [], [], 0, []
    r = res
    while any(k.startswith(f"net.enc.{r}x{r}_block") for k in state):
        levels.append(r)
        mult.append(shape(f"net.enc.{r}x{r}_block0.conv0.weight")[0] // mc)
        n = len({m.group(1) for k in state if (m := re.match(rf"net\.enc\.{r}x{r}_block(\d+)\.", k))})
        if blocks and n != blocks:
            raise UserError(f"not a SongUNet checkpoint: {n} blocks at {r}x{r} but {blocks} above")
        blocks = n
        if f"net.enc.{r}x{r}_block0.qkv.weight" in state:
            attn.append(r)
        r //= 2
    if not levels:
        raise UserError("not a SongUNet checkpoint: no encoder blocks")
    filt = next((v for k, v in state.items() if k.endswith(".resample_filter")), None)
    taps = 2 if filt is None else int(filt.shape[-1])
    unet = dict(
        model_channels=mc, channel_mult=mult, channel_mult_emb=emb // mc, channel_mult_noise=noise // mc,
        num_blocks=blocks, attn_resolutions=attn,
        embedding_type="fourier" if "net.map_noise.freqs" in state else "positional",
        encoder_type="residual" if any("_aux_residual." in k for k in state) else
        ("skip" if any("_aux_skip." in k for k in state) else "standard"),
        decoder_type="skip" if any("_aux_up." in k for k in state) else "standard",
        resample_filter=[1, 1] if taps == 2 else [1, 3, 3, 1],
        augment_dim=shape("net.map_augment.weight")[1] if "net.map_augment.weight" in state else 0,
    )
    label_dim = shape("net.map_label.weight")[1] if "net.map_label.weight" in state else 0
    return unet, (chans, res, res), label_dim


def convert(obj: Any, source: str | Path = "ctm.pt", dropout: float = CIFAR_DROPOUT, base=None,
            **options) -> ImportResult:
    """A ctmtool `ctm` checkpoint (weights in `ema`) from an `EDMPrecond_CTM` state dict."""
    from ctmtool.config import load_preset, preset_from_dict

    path = Path(source)
    state = clean_state({to_ctmtool_name(k): v for k, v in obj.items()})
    unet, data_shape, label_dim = infer_songunet(state)
    if unet["encoder_type"] == "skip":
        raise UserError(f"{path}: encoder_type 'skip' is not supported by ctmtool (standard/residual only)")
    base = base or load_preset("cifar10")
    raw = base.model_dump(mode="json")
    raw["name"] = path.stem
    raw["description"] = f"imported from the ctm-cifar10 checkpoint {path.name} (EDMPrecond_CTM, SongUNet)"
    raw["data"]["resolution"], raw["data"]["channels"] = data_shape[1], data_shape[0]
    if data_shape != (3, 32, 32):
        raw["data"] = {"source": "folder", "resolution": data_shape[1], "channels": data_shape[0]}
    raw["net"] = {"kind": "unet", "label_dim": label_dim, "unet": {**unet, "dropout": dropout}}
    raw["diffusion"].update(precond="edm", sigma_min=0.002, sigma_max=80.0, sigma_data=0.5)
    raw["ctm"]["student_precond"] = "edm"
    preset = preset_from_dict(raw, f"built from {path.name}")
    m = re.match(r"(ema_([0-9.]+)_|model|target_model)(\d+)\.pt$", path.name)
    meta = {"source": "ctm-cifar10", "step": int(m.group(3)) if m else None,
            "weights": ("ema " + m.group(2)) if m and m.group(2) else (m.group(1) if m else "unknown")}
    return ImportResult(kind="ctm", preset=preset, data_shape=data_shape, state=state, meta=meta)
