"""Sony's ImageNet-64 CTM checkpoints (`ema_0.999_*.pt`, `model*.pt`, `target_model*.pt`, sony/ctm release).

The files are plain state dicts of `UNetModel(training_mode='ctm')`: OpenAI's ADM plus `time_embed_s`
and one `emb_layers_s` per residual block (sony/ctm code/cm/unet.py). Sony's jump is
g = c_skip(t) x + c_out(t) F(c_in(t) x, 250 ln t, 250 ln s, y) with EDM coefficients of t and
G = (s/t) x + (1 - s/t) g (code/cm/karras_diffusion.py), which is ctmtool's `CTMPrecond` (scheme edm)
around `ADMUNet(use_s=True)`. Names are identical, so the conversion only prefixes `net.`.
Download: the sony/ctm README links the ImageNet-64 CTM checkpoint (ema 0.999).
"""

from __future__ import annotations

from pathlib import Path

from ctmtool.errors import UserError
from ctmtool.importers.base import ImportResult, clean, tensor_state
from ctmtool.importers.openai_adm import REQUIRED, adm_architecture, adm_preset

NAME = "sony-ctm"
URL = "https://github.com/sony/ctm (README: CTM checkpoint on ImageNet64, ema=0.999)"


def sniff(obj) -> bool:
    """An ADM `UNetModel` state dict with the CTM s-branch (`time_embed_s`)."""
    sd = tensor_state(obj)
    return sd is not None and all(k in sd for k in REQUIRED) and "time_embed_s.0.weight" in sd


def convert(obj, source: str | Path = "", resolution: int = 64, head_channels: int = 64) -> ImportResult:
    """Sony CTM state dict -> a ctmtool CTM checkpoint (`net.` + the official names)."""
    sd = tensor_state(obj)
    if sd is None or not sniff(sd):
        raise UserError("not a Sony CTM state dict (expected an ADM UNetModel with time_embed_s.* tensors)")
    adm, label_dim, ch = adm_architecture(sd, resolution, head_channels)
    shape = (ch, resolution, resolution)
    preset = adm_preset("sony-ctm-imagenet64", "Sony's ImageNet-64 CTM (sony/ctm release)", adm, label_dim,
                        shape)
    state = {f"net.{k}": clean(v) for k, v in sd.items()}
    meta = {"source": "sony-ctm", "format": NAME, "time_input": "250 ln(sigma)",
            "head_channels_assumed": head_channels, "resolution_assumed": resolution}
    return ImportResult("ctm", preset, shape, state, meta)
