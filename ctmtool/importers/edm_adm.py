"""NVIDIA's ImageNet-64 ADM pickle (`edm-imagenet-64x64-cond-adm.pkl`): EDM's `DhariwalUNet` as ctmtool's ADM.

EDM's `DhariwalUNet` (NVlabs/edm training/networks.py 372-470) is ADM (Dhariwal & Nichol 2021) rewritten
with EDM's blocks: each `UNetBlock` is ADM's scale-shift `ResBlock` (norm0/conv0 -> in_layers.0/2,
affine -> emb_layers.1, norm1/conv1 -> out_layers.0/3, skip -> skip_connection; up/down resampling
with the [1, 1] filter is nearest-neighbour / 2x2 average pooling, as ADM's resblock_updown) with its
attention folded in (norm2/qkv/proj -> a separate `AttentionBlock` norm/qkv/proj_out). The encoder,
middle (`in0` with attention, `in1`) and decoder blocks come in ADM's order, EDM's `_down`/`_up` blocks
being ADM's resampling ResBlocks. So the weights load into ctmtool's `ADMUNet` after renaming, with
three conversions:

- qkv rows: EDM splits them per head as (head_dim, 3) (`reshape(N * heads, C / heads, 3, -1)`, line 182),
  ADM's legacy order is (3, head_dim) per head (`qkv_order = "heads"`): the rows are permuted.
- the class embedding: EDM's `map_label` is a bias-free Linear on one-hot labels ([emb, classes]);
  ADM's `label_emb` is the transposed table ([classes, emb]); ctmtool mixes one-hot labels through it.
- the time input: `EDMPrecond` feeds c_noise = ln(sigma)/4 straight to the positional embedding (whose
  frequencies equal ADM's `timestep_embedding`), so the network's `time_scale` is 1, not 1000.

EDM's GroupNorm uses min(32, C/4) groups, ADM's 32: networks with fewer than 128 channels at some
norm are refused. `map_augment` (augmentation conditioning, unused at sampling: EDM's samplers pass no
augment labels) is dropped and recorded in the checkpoint's meta. Nothing stored in the pickle is run.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ctmtool.errors import UserError
from ctmtool.importers.base import ImportResult, clean

NETWORK = "DhariwalUNet"
DEFAULTS = dict(label_dim=0, augment_dim=0, model_channels=192, channel_mult=[1, 2, 3, 4], channel_mult_emb=4,
                num_blocks=3, attn_resolutions=[32, 16, 8], dropout=0.10)  # networks.py 373-386
HEAD_CHANNELS = 64  # UNetBlock's channels_per_head in DhariwalUNet (networks.py 393)


def _resblock(src: str, dst: str) -> list[tuple[str, str]]:
    pairs = [("norm0", "in_layers.0"), ("conv0", "in_layers.2"), ("affine", "emb_layers.1"),
             ("norm1", "out_layers.0"), ("conv1", "out_layers.3"), ("skip", "skip_connection")]
    return [(f"{src}.{a}.{w}", f"{dst}.{b}.{w}") for a, b in pairs for w in ("weight", "bias")]


def _attention(src: str, dst: str) -> list[tuple[str, str]]:
    pairs = [("norm2", "norm"), ("qkv", "qkv"), ("proj", "proj_out")]
    return [(f"{src}.{a}.{w}", f"{dst}.{b}.{w}") for a, b in pairs for w in ("weight", "bias")]


def name_map(res: int, mult: list[int], blocks: int, attn: list[int]) -> list[tuple[str, str]]:
    """(EDM name, ADM name) of every possible tensor, in ADM's block order."""
    out = [("map_layer0.weight", "time_embed.0.weight"), ("map_layer0.bias", "time_embed.0.bias"),
           ("map_layer1.weight", "time_embed.2.weight"), ("map_layer1.bias", "time_embed.2.bias"),
           ("out_norm.weight", "out.0.weight"), ("out_norm.bias", "out.0.bias"),
           ("out_conv.weight", "out.2.weight"), ("out_conv.bias", "out.2.bias"),
           (f"enc.{res}x{res}_conv.weight", "input_blocks.0.0.weight"),
           (f"enc.{res}x{res}_conv.bias", "input_blocks.0.0.bias")]
    k, levels = 1, len(mult)
    for level in range(levels):
        r = res >> level
        for idx in range(blocks):
            out += _resblock(f"enc.{r}x{r}_block{idx}", f"input_blocks.{k}.0")
            if r in attn:
                out += _attention(f"enc.{r}x{r}_block{idx}", f"input_blocks.{k}.1")
            k += 1
        if level != levels - 1:  # EDM names the down block after the resolution it produces
            out += _resblock(f"enc.{r >> 1}x{r >> 1}_down", f"input_blocks.{k}.0")
            k += 1
    low = res >> (levels - 1)
    out += _resblock(f"dec.{low}x{low}_in0", "middle_block.0") + _attention(f"dec.{low}x{low}_in0",
                                                                            "middle_block.1")
    out += _resblock(f"dec.{low}x{low}_in1", "middle_block.2")
    j = 0
    for level in reversed(range(levels)):
        r = res >> level
        for idx in range(blocks + 1):
            n = 1
            out += _resblock(f"dec.{r}x{r}_block{idx}", f"output_blocks.{j}.0")
            if r in attn:
                out += _attention(f"dec.{r}x{r}_block{idx}", f"output_blocks.{j}.1")
                n = 2
            if level and idx == blocks:  # ... and the up block after the resolution it produces
                out += _resblock(f"dec.{r << 1}x{r << 1}_up", f"output_blocks.{j}.{n}")
            j += 1
    return out


def _qkv_heads_major(t: torch.Tensor, heads: int) -> torch.Tensor:
    """Rows (head, head_dim, 3) -> (head, 3, head_dim): EDM's qkv split to ADM's legacy one."""
    rows = t.shape[0]
    d = rows // (3 * heads)
    return t.reshape(heads, d, 3, *t.shape[1:]).transpose(1, 2).reshape(rows, *t.shape[1:])


def convert_dhariwal(state: dict[str, torch.Tensor], mkw: dict, res: int, chans: int, label_dim: int
                     ) -> tuple[dict, dict[str, torch.Tensor], list[str]]:
    """ctmtool's `[net.adm]` settings and `net.`-named state dict from a DhariwalUNet's tensors and kwargs."""
    kw = {**DEFAULTS, **{k: v for k, v in mkw.items() if k in DEFAULTS}}
    mc, mult, blocks = int(kw["model_channels"]), [int(m) for m in kw["channel_mult"]], int(kw["num_blocks"])
    attn = [int(a) for a in kw["attn_resolutions"]]
    if int(kw["channel_mult_emb"]) != 4:
        raise UserError(f"channel_mult_emb {kw['channel_mult_emb']} is not ADM's 4; not supported")
    if mc * min(mult) < 128:
        raise UserError(f"model_channels {mc} x channel_mult {mult} gives norms of fewer than 128 channels, "
                        "where EDM's GroupNorm uses fewer than ADM's 32 groups; not supported")
    dropped = sorted(k for k in state if k.endswith("resample_filter") or k.startswith("map_augment."))
    state = {k: v for k, v in state.items() if k not in dropped}
    out, used = {}, set()
    for src, dst in name_map(res, mult, blocks, attn):
        if src not in state:
            continue
        t = state[src]
        if ".qkv." in src:
            t = _qkv_heads_major(t, t.shape[0] // 3 // HEAD_CHANNELS)
        out[f"net.{dst}"] = clean(t)
        used.add(src)
    if "map_label.weight" in state:
        out["net.label_emb.weight"] = clean(state["map_label.weight"].t())
        used.add("map_label.weight")
    left = sorted(set(state) - used)
    if left:
        raise UserError(f"the DhariwalUNet holds tensors ctmtool cannot place ({', '.join(left[:3])}, ...); "
                        "not an EDM ADM layout ctmtool understands")
    adm = dict(model_channels=mc, channel_mult=mult, num_res_blocks=blocks, attn_resolutions=attn,
               head_channels=HEAD_CHANNELS, dropout=float(kw["dropout"]), scale_shift=True,
               resblock_updown=True, qkv_order="heads", time_scale=1.0)
    return adm, out, [k for k in dropped if not k.endswith("resample_filter")]


def import_dhariwal(data: dict, path: str | Path) -> ImportResult:
    """The EDM-preconditioned ADM teacher of an already safely unpickled EDM pickle whose model is a
    DhariwalUNet."""
    from ctmtool.importers.edm_pickle import PersistentObj, _attr, _init_kwargs, collect_state
    from ctmtool.importers.openai_adm import adm_preset

    path = Path(path)
    ema = data["ema"]
    model = (ema.state.get("_modules") or {}).get("model")
    if ema.class_name != "EDMPrecond" or not isinstance(model, PersistentObj):
        raise UserError(f"{path}: a DhariwalUNet under {ema.class_name}; ctmtool imports it under EDMPrecond "
                        "only")
    pkw, mkw = _init_kwargs(ema), _init_kwargs(model)
    try:
        res = int(_attr(ema, pkw, "img_resolution", mkw.get("img_resolution", 0)))
        chans = int(_attr(ema, pkw, "img_channels", mkw.get("in_channels", 0)))
        label_dim = int(_attr(ema, pkw, "label_dim", mkw.get("label_dim", 0)) or 0)
        sigma_data = float(_attr(ema, pkw, "sigma_data", 0.5))
    except (TypeError, ValueError) as err:
        raise UserError(f"{path}: the recorded constructor arguments are malformed ({err})") from None
    if res <= 0 or chans <= 0:
        raise UserError(f"{path}: the pickle does not record the image resolution and channel count")
    adm, state, dropped = convert_dhariwal(collect_state(model), mkw, res, chans, label_dim)
    preset = adm_preset(path.stem,
                        f"imported from NVIDIA's EDM pickle {path.name} (EDMPrecond, DhariwalUNet)", adm,
                        label_dim, (chans, res, res))
    raw = preset.model_dump(mode="json")
    raw["diffusion"]["sigma_data"] = sigma_data
    from ctmtool.config import preset_from_dict

    preset = preset_from_dict(raw, f"built from {path.name}")
    meta = {"source": "edm-pickle", "file": path.name, "class": ema.class_name, "network": NETWORK,
            "time_input": "ln(sigma)/4", "dropped": dropped,
            "use_fp16": bool(_attr(ema, pkw, "use_fp16", False))}
    return ImportResult(kind="teacher", preset=preset, data_shape=(chans, res, res), state=state, meta=meta)
