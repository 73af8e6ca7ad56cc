"""OpenAI's EDM-trained ImageNet-64 ADM teacher (`edm_imagenet64_ema.pt`, openai/consistency_models release).

The file is a plain `UNetModel` state dict saved from fp16 training as float32 master weights. The
teacher is D(x, sigma) = c_skip x + c_out F(c_in x, 250 ln sigma, y) with EDM coefficients, sigma_data
0.5 (cm/karras_diffusion.py `denoise`), which is ctmtool's `EDMPrecond` around `ADMUNet` (whose time
input is 1000 * ln(sigma)/4). Parameter names are identical, so the conversion only prefixes `net.`.

Weights do not record the image resolution or the attention head width: `resolution` (64) and
`head_channels` (64, as both releases) are options. Download: the consistency-models README links
`edm_imagenet64_ema.pt` (https://github.com/openai/consistency_models).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ctmtool.config import Preset, list_presets, load_preset, preset_from_dict
from ctmtool.errors import UserError
from ctmtool.importers.base import ImportResult, clean, tensor_state

NAME = "openai-adm"
URL = "https://github.com/openai/consistency_models (README: edm_imagenet64_ema.pt)"
REQUIRED = ("time_embed.0.weight", "input_blocks.0.0.weight", "out.2.weight")


def sniff(obj) -> bool:
    """A plain ADM `UNetModel` state dict without the CTM s-branch."""
    sd = tensor_state(obj)
    return sd is not None and all(k in sd for k in REQUIRED) and "time_embed_s.0.weight" not in sd


def _count(sd: dict, prefix: str) -> int:
    idx = {int(k[len(prefix):].split(".", 1)[0]) for k in sd if k.startswith(prefix)}
    return max(idx) + 1 if idx else 0


def adm_architecture(sd: dict[str, torch.Tensor], resolution: int,
                     head_channels: int) -> tuple[dict, int, int]:
    """The `[net.adm]` settings, label_dim and channel count an ADM state dict implies (refused if
    unsupported)."""
    mc = sd["time_embed.0.weight"].shape[1]
    in_ch, out_ch = sd["input_blocks.0.0.weight"].shape[1], sd["out.2.weight"].shape[0]
    if out_ch != in_ch:
        raise UserError(f"the network outputs {out_ch} channels for {in_ch} input channels (learned "
                        "variance?); ctmtool imports ADM denoisers whose output has the input's channels")
    n_out = _count(sd, "output_blocks.")
    ups = [i for i in range(n_out) if any(f"output_blocks.{i}.{j}.in_layers.0.weight" in sd or
                                          f"output_blocks.{i}.{j}.conv.weight" in sd for j in (1, 2))]
    levels = len(ups) + 1
    if n_out % levels:
        raise UserError(f"cannot read the ADM layout: {n_out} output blocks for {levels} resolutions")
    nrb = n_out // levels - 1
    mult = []
    for level in range(levels):  # output blocks run from the lowest resolution up
        first = (levels - 1 - level) * (nrb + 1)
        mult.append(sd[f"output_blocks.{first}.0.out_layers.3.weight"].shape[0] / mc)
    if any(m != int(m) for m in mult):
        raise UserError(f"channel multipliers {mult} are not integers; not supported")
    attn, k, res = set(), 1, resolution
    for level in range(levels):
        for _ in range(nrb):
            if f"input_blocks.{k}.1.qkv.weight" in sd:
                attn.add(res)
            k += 1
        if level != levels - 1:
            k, res = k + 1, res // 2
    emb_rows = sd["input_blocks.1.0.emb_layers.1.weight"].shape[0]
    adm = dict(model_channels=mc, channel_mult=[int(m) for m in mult], num_res_blocks=nrb,
               attn_resolutions=sorted(attn, reverse=True), head_channels=head_channels, dropout=0.0,
               scale_shift=emb_rows == 2 * sd["input_blocks.1.0.out_layers.3.weight"].shape[0],
               resblock_updown=f"input_blocks.{nrb + 1}.0.in_layers.2.weight" in sd, qkv_order="three")
    label_dim = sd["label_emb.weight"].shape[0] if "label_emb.weight" in sd else 0
    return adm, label_dim, in_ch


def adm_preset(name: str, description: str, adm: dict, label_dim: int, shape: tuple[int, int, int]) -> Preset:
    """The `imagenet64` preset (when it exists) with the network the weights imply."""
    base = load_preset("imagenet64") if "imagenet64" in list_presets() else Preset()
    raw = base.model_dump(mode="json")
    raw.update(name=name, description=description)
    raw["data"].update(resolution=shape[1], channels=shape[0])
    raw["net"] = {"kind": "adm", "label_dim": label_dim, "adm": {**raw["net"].get("adm", {}), **adm}}
    raw["diffusion"].update(precond="edm", sigma_data=0.5, sigma_min=0.002, sigma_max=80.0)
    return preset_from_dict(raw, f"built from {name}")


def convert(obj, source: str | Path = "", resolution: int = 64, head_channels: int = 64,
            dropout: float | None = None) -> ImportResult:
    """OpenAI ADM teacher state dict -> a ctmtool EDM teacher (`net.` + the official names)."""
    sd = tensor_state(obj)
    if sd is None or not sniff(sd):
        raise UserError("not an OpenAI ADM state dict (expected time_embed.*, input_blocks.*, out.* tensors)")
    adm, label_dim, ch = adm_architecture(sd, resolution, head_channels)
    if dropout is not None:
        adm["dropout"] = dropout
    shape = (ch, resolution, resolution)
    preset = adm_preset("openai-adm-teacher", "OpenAI's EDM-trained ADM teacher (consistency-models release)",
                        adm, label_dim, shape)
    state = {f"net.{k}": clean(v) for k, v in sd.items()}
    meta = {"source": "openai-consistency-models", "format": NAME, "time_input": "250 ln(sigma)",
            "head_channels_assumed": head_channels, "resolution_assumed": resolution}
    return ImportResult("teacher", preset, shape, state, meta)
