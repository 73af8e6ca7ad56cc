"""Import NVIDIA's published EDM teacher pickles (Karras et al. 2022) as ctmtool checkpoints, safely.

Download the pickles from https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/ :

    edm-cifar10-32x32-uncond-vp.pkl   edm-cifar10-32x32-uncond-ve.pkl
    edm-cifar10-32x32-cond-vp.pkl     edm-cifar10-32x32-cond-ve.pkl
    edm-afhqv2-64x64-uncond-vp.pkl    edm-afhqv2-64x64-uncond-ve.pkl
    edm-ffhq-64x64-uncond-vp.pkl      edm-ffhq-64x64-uncond-ve.pkl
    edm-imagenet-64x64-cond-adm.pkl   (ADM / DhariwalUNet: converted by ctmtool.importers.edm_adm)

An EDM pickle is `dict(ema=<precond>, loss_fn=..., augment_pipe=..., dataset_kwargs=...)`. Every network
object is a "persistent" object reduced to `torch_utils.persistence._reconstruct_persistent_obj(meta)`,
where `meta` holds the Python source of EDM's networks module (which a plain `pickle.load` would
`exec`), the class name and the object's `__dict__` (`_parameters`, `_buffers`, `_modules`,
`_init_kwargs`, ...). This importer never runs any of that code: it reads the file with
`ctmtool.importers.safe_pickle` (every global an inert stand-in except a short list of tensor-rebuilding
functions; globals such as `os.system` refused outright) and walks the stand-in tree with
`ctmtool.importers.pickle_tree` for the `ema` network's weights and constructor arguments.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ctmtool.checkpoint import Checkpoint, load_state, save_checkpoint
from ctmtool.config import Preset, list_presets, load_preset, preset_from_dict
from ctmtool.errors import UserError
from ctmtool.importers.pickle_tree import _attr, _init_kwargs, _kind, _short, collect_state
from ctmtool.importers.safe_pickle import PersistentObj, SafeUnpickler, safe_load

EDM_URL = "https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/"

# EDM's SongUNet defaults (training/networks.py), used for any argument the pickle does not record.
SONGUNET_DEFAULTS: dict[str, Any] = dict(
    label_dim=0, augment_dim=0, model_channels=128, channel_mult=[1, 2, 2, 2], channel_mult_emb=4,
    num_blocks=4, attn_resolutions=[16], dropout=0.10, label_dropout=0.0, embedding_type="positional",
    channel_mult_noise=1, encoder_type="standard", decoder_type="standard", resample_filter=[1, 1],
)
PRECONDS = {"VPPrecond": "vp", "VEPrecond": "ve", "EDMPrecond": "edm"}
VP_DEFAULTS = dict(beta_d=19.9, beta_min=0.1, M=1000, epsilon_t=1e-5)  # what ctmtool's VPPrecond implements
EDM_SAMPLER_RANGE = (0.002, 80.0)  # EDM's generate.py clamps the precond's range to this


def read_edm_pickle(path: str | Path) -> dict:
    """Safely unpickle an EDM network pickle and return its top-level dict (with stand-ins for objects)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist; download the EDM pickles from {EDM_URL}")
    with open(path, "rb") as f:
        head = f.read(4)
        if head[:2] == b"PK":
            raise UserError(f"{path} is a zip archive (a torch.save file?), not an EDM network pickle")
        if not head.startswith(b"\x80"):
            hint = " (it is a safetensors/ctmtool checkpoint?)" if path.suffix == ".safetensors" else ""
            raise UserError(f"{path} is not a pickle{hint}; expected an EDM .pkl from {EDM_URL}")
        f.seek(0)
        data = safe_load(f)
    if not isinstance(data, dict):
        raise UserError(f"{path} is a pickle but not an EDM network pickle: it holds {_kind(data)}, not a "
                        "dict with 'ema'")
    if "ema" not in data:
        keys = (", ".join(_short(k) for k in list(data)[:8]) + (", ..." if len(data) > 8 else "") if data
                else "none")
        raise UserError(f"{path} has no 'ema' network (its entries: {keys}); is it an EDM network pickle?")
    return data


def import_edm_pickle(path: str | Path, out_path: str | Path | None = None,
                      progress: Callable[[str], None] | None = None,
                      base: Preset | None = None) -> Checkpoint:
    """Convert an EDM network pickle into a ctmtool teacher checkpoint (saved to `out_path` if given).

    `base` supplies the training/sampling settings of the new preset (default: the `cifar10` preset for
    32x32 RGB networks, built-in defaults otherwise); its network, diffusion and data shape are replaced
    by what the pickle says.
    """
    say = progress or (lambda msg: None)
    path = Path(path)
    say(f"reading {path.name} (no code in it is run)")
    ckpt = checkpoint_from_edm(read_edm_pickle(path), path, say, base)
    if out_path is not None:
        say(f"writing {out_path}")
        ckpt.path = save_checkpoint(out_path, ckpt)
    return ckpt


def checkpoint_from_edm(data: dict, path: str | Path, say: Callable[[str], None] | None = None,
                        base: Preset | None = None) -> Checkpoint:
    """The teacher checkpoint (unsaved) of an already safely unpickled EDM pickle `data` read from `path`."""
    say = say or (lambda msg: None)
    path = Path(path)
    ema = data["ema"]
    if not isinstance(ema, PersistentObj):
        raise UserError(f"{path}: 'ema' is {_kind(ema)}, not an EDM network object")
    if ema.class_name not in PRECONDS:
        raise UserError(f"{path}: the network is preconditioned with {ema.class_name}; ctmtool imports "
                        f"{', '.join(PRECONDS)} only")
    model = (ema.state.get("_modules") or {}).get("model")
    if not isinstance(model, PersistentObj):
        raise UserError(f"{path}: the {ema.class_name} object has no 'model' network")
    if model.class_name == "DhariwalUNet":
        raise UserError(f"{path}: its network is EDM's ADM (DhariwalUNet, as in "
                        "edm-imagenet-64x64-cond-adm.pkl), which this SongUNet reader does not convert; "
                        "`ctmtool import` does (importers/edm_adm.py)")
    if model.class_name != "SongUNet":
        extra = ""
        raise UserError(f"{path}: network class {model.class_name}{extra} is not supported; ctmtool imports "
                        "EDM's SongUNet (DDPM++/NCSN++) networks only")

    pkw, mkw = _init_kwargs(ema), _init_kwargs(model)
    try:
        res, chans, label_dim, unet, kind, sigma_data, vp, pre_min, pre_max = _settings(path, ema, pkw, mkw)
    except UserError:  # a UserError (a ValueError) inside says what is wrong itself
        raise
    except (TypeError, ValueError) as err:
        raise UserError(f"{path}: the recorded constructor arguments are malformed ({err})") from None
    sigma_min, sigma_max = max(pre_min, EDM_SAMPLER_RANGE[0]), min(pre_max, EDM_SAMPLER_RANGE[1])

    say("collecting weights")
    state = {}
    for name, t in collect_state(model).items():
        state[f"net.{name}"] = t.contiguous()
    extra = sorted(k for k in collect_state(ema) if not k.startswith("model."))
    if extra:
        raise UserError(f"{path}: the {ema.class_name} holds tensors outside its network ({extra[0]}, ...); "
                        "not an EDM SongUNet pickle ctmtool understands")

    data_shape = (chans, res, res)
    if base is None:
        base = _default_base(data_shape)
    raw = base.model_dump(mode="json")
    raw["name"] = path.stem
    raw["description"] = f"imported from NVIDIA's EDM pickle {path.name} ({ema.class_name}, SongUNet)"
    if raw["data"].get("source") == "toy" or raw["data"].get("resolution") not in (None, res) \
            or raw["data"].get("channels") not in (None, chans):
        raw["data"] = {"source": "cifar10" if data_shape == (3, 32, 32) else "folder"}
    raw["data"].update(resolution=res, channels=chans)
    raw["net"] = {"kind": "unet", "label_dim": label_dim, "unet": {
        k: (list(v) if isinstance(v, list | tuple) else v) for k, v in unet.items() if k != "label_dim"}}
    raw["diffusion"].update(precond=kind, sigma_min=sigma_min, sigma_max=sigma_max, sigma_data=sigma_data)
    preset = preset_from_dict(raw, f"built from {path.name}")

    say("checking the weights fit ctmtool's network")
    from ctmtool.core.models import build_precond  # models imports the nets; keep this module light to import

    net = build_precond("teacher", preset, data_shape)
    load_state(net, state, source=f"EDM pickle {path.name}")
    meta = {"source": "edm-pickle", "file": path.name, "class": ema.class_name, "network": model.class_name,
            "precond_kwargs": {k: v for k, v in pkw.items() if k not in SONGUNET_DEFAULTS},
            "precond_sigma_range": [pre_min, pre_max if math.isfinite(pre_max) else "inf"],
            "use_fp16": bool(_attr(ema, pkw, "use_fp16", False))}
    if vp is not None:
        meta["vp"] = vp
    return Checkpoint(kind="teacher", preset=preset, data_shape=data_shape, groups={"ema": state}, meta=meta)


def _settings(path: Path, ema: PersistentObj, pkw: dict, mkw: dict):
    """Image shape, SongUNet arguments and preconditioning read from the precond's and network's records."""
    res = int(_attr(ema, pkw, "img_resolution", mkw.get("img_resolution", 0)))
    chans = int(_attr(ema, pkw, "img_channels", mkw.get("in_channels", 0)))
    label_dim = int(_attr(ema, pkw, "label_dim", mkw.get("label_dim", 0)) or 0)
    if res <= 0 or chans <= 0:
        raise UserError(f"{path}: the pickle does not record the image resolution and channel count")
    unet = dict(SONGUNET_DEFAULTS)
    for source in (pkw, mkw):  # the SongUNet's own record wins over what the precond passed on
        unet.update({k: v for k, v in source.items() if k in SONGUNET_DEFAULTS})
    for k, v in (("in_channels", chans), ("out_channels", chans), ("img_resolution", res),
                 ("label_dim", label_dim)):
        if k in mkw and mkw[k] != v:
            raise UserError(f"{path}: the SongUNet has {k} = {mkw[k]} but the precond says {v}; not "
                            "supported")
    if unet["encoder_type"] == "skip":
        raise UserError(f"{path}: encoder_type 'skip' is not supported by ctmtool presets (standard/residual "
                        "only)")

    kind, vp = PRECONDS[ema.class_name], None
    sigma_data = float(_attr(ema, pkw, "sigma_data", 0.5))
    if kind == "vp":
        vp = {k: float(_attr(ema, pkw, k, d)) for k, d in VP_DEFAULTS.items()}
        if any(not math.isclose(vp[k], VP_DEFAULTS[k], rel_tol=1e-6) for k in vp):
            raise UserError(f"{path}: VP parameters {vp} differ from EDM's defaults {VP_DEFAULTS}, which are "
                            "the only ones ctmtool's VPPrecond implements")
        pre_min = math.sqrt(math.expm1(0.5 * vp["beta_d"] * vp["epsilon_t"] ** 2
                                       + vp["beta_min"] * vp["epsilon_t"]))
        pre_max = math.sqrt(math.expm1(0.5 * vp["beta_d"] + vp["beta_min"]))
    else:
        pre_min = float(_attr(ema, pkw, "sigma_min", 0.02 if kind == "ve" else 0.0))
        pre_max = float(_attr(ema, pkw, "sigma_max", 100.0 if kind == "ve" else math.inf))
    return res, chans, label_dim, unet, kind, sigma_data, vp, pre_min, pre_max


def _default_base(data_shape: tuple[int, ...]) -> Preset:
    if data_shape == (3, 32, 32) and "cifar10" in list_presets():
        try:
            return load_preset("cifar10")
        except UserError:
            pass
    return Preset(data={"source": "folder", "resolution": data_shape[1], "channels": data_shape[0]})


__all__ = ["EDM_URL", "SafeUnpickler", "checkpoint_from_edm", "collect_state", "import_edm_pickle",
           "read_edm_pickle", "safe_load"]
