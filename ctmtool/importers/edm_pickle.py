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
`_init_kwargs`, ...). This importer never runs any of that code: its unpickler maps every global to an
inert stand-in that only records what it is given, except a short list of tensor-rebuilding functions
(storages are read with `torch.load(..., weights_only=True)`), and it refuses globals such as `os.system`
outright. The stand-in tree is then walked for the `ema` network's weights and constructor arguments.
"""

from __future__ import annotations

import builtins
import collections
import io
import math
import pickle
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ctmtool.checkpoint import Checkpoint, load_state, save_checkpoint
from ctmtool.config import Preset, list_presets, load_preset, preset_from_dict
from ctmtool.errors import UserError

EDM_URL = "https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/"

# EDM's SongUNet defaults (training/networks.py), used for any argument the pickle does not record.
SONGUNET_DEFAULTS: dict[str, Any] = dict(
    label_dim=0, augment_dim=0, model_channels=128, channel_mult=[1, 2, 2, 2], channel_mult_emb=4, num_blocks=4,
    attn_resolutions=[16], dropout=0.10, label_dropout=0.0, embedding_type="positional", channel_mult_noise=1,
    encoder_type="standard", decoder_type="standard", resample_filter=[1, 1],
)
PRECONDS = {"VPPrecond": "vp", "VEPrecond": "ve", "EDMPrecond": "edm"}
VP_DEFAULTS = dict(beta_d=19.9, beta_min=0.1, M=1000, epsilon_t=1e-5)  # what ctmtool's VPPrecond implements
EDM_SAMPLER_RANGE = (0.002, 80.0)  # EDM's generate.py clamps the precond's range to this

# Globals whose mere mention marks a pickle as hostile: refused before anything is built.
_HOSTILE_MODULES = {
    "os", "posix", "nt", "subprocess", "sys", "shutil", "socket", "importlib", "runpy", "pty", "code", "codeop",
    "pickle", "_pickle", "marshal", "ctypes", "operator", "functools", "types", "webbrowser", "io", "_io",
    "platform", "signal", "multiprocessing", "threading", "_thread", "inspect", "pdb", "timeit", "tempfile",
    "pathlib", "glob", "asyncio", "urllib", "http", "ftplib", "smtplib", "requests", "posixpath", "ntpath",
    "_posixsubprocess", "gc", "weakref", "cProfile", "profile", "trace", "dill", "cloudpickle", "joblib",
}
_SAFE_BUILTINS = {"set", "frozenset", "list", "dict", "tuple", "int", "float", "complex", "str", "bool", "object"}


# --------------------------------------------------------------------------------------------------
# Inert stand-ins


class Stub:
    """An object of a class the importer does not trust: it records its arguments and state, nothing else."""

    stub_module = "?"
    stub_name = "?"

    def __new__(cls, *args, **kwargs):
        self = object.__new__(cls)
        self.__dict__["_stub_args"] = args
        self.__dict__["_stub_kwargs"] = kwargs
        self.__dict__["_stub_state"] = None
        self.__dict__["_stub_items"] = {}
        self.__dict__["_stub_list"] = []
        return self

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.__dict__["_stub_state"] = state

    def __setitem__(self, key, value):
        self._stub_items[key] = value

    def append(self, value):
        self._stub_list.append(value)

    def extend(self, values):
        self._stub_list.extend(values)

    def __repr__(self) -> str:
        return f"<stand-in for {self.stub_module}.{self.stub_name}>"


class EasyDictStub(dict):
    """Stand-in for `dnnlib.util.EasyDict`: a plain dict that ignores any pickled attribute state."""

    def __setstate__(self, state):
        pass


class PersistentObj:
    """Stand-in for an EDM persistent object: `meta` with `class_name`, `module_src` (never run) and `state`."""

    def __init__(self, meta):
        if not isinstance(meta, dict):
            raise UserError("damaged EDM pickle: a persistent object has no metadata dict")
        self.meta = meta
        self.class_name = str(meta.get("class_name", "?"))
        state = meta.get("state")
        self.state = state if isinstance(state, dict) else {}

    def __repr__(self) -> str:
        return f"<persistent {self.class_name}>"


def _reconstruct_persistent_obj(meta):
    return PersistentObj(meta)


# --------------------------------------------------------------------------------------------------
# The few real callables a tensor pickle needs, each checking its arguments


def _ints(v, what: str) -> tuple[int, ...]:
    if not isinstance(v, tuple | list | torch.Size) or not all(isinstance(i, int) for i in v):
        raise UserError(f"damaged or hostile pickle: tensor {what} is not a tuple of integers")
    return tuple(v)


def _load_from_bytes(b):
    if not isinstance(b, bytes | bytearray):
        raise UserError("damaged or hostile pickle: a tensor storage is not stored as bytes")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return torch.load(io.BytesIO(bytes(b)), map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - torch raises many kinds here
            raise UserError(f"a tensor storage in the pickle could not be read safely ({err})") from None


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    if not isinstance(storage, torch.storage.TypedStorage | torch.UntypedStorage):
        raise UserError("damaged or hostile pickle: a tensor is built from something that is not a storage")
    if not isinstance(storage_offset, int):
        raise UserError("damaged or hostile pickle: tensor offset is not an integer")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return torch._utils._rebuild_tensor_v2(storage, storage_offset, _ints(size, "size"),
                                                   _ints(stride, "stride"), False, collections.OrderedDict())
        except RuntimeError as err:
            raise UserError(f"damaged pickle: a tensor does not fit its storage ({err})") from None


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    if not isinstance(data, torch.Tensor):
        raise UserError("damaged or hostile pickle: a parameter holds no tensor")
    return data


def _rebuild_from_type_v2(func, new_type, args, state=None):
    if func not in (_rebuild_tensor_v2, _rebuild_parameter) or not isinstance(args, tuple):
        raise UserError("damaged or hostile pickle: unexpected tensor reconstruction")
    return func(*args)


def _np_dtype(spec, align=False, copy=True):
    if not isinstance(spec, str):
        raise UserError("damaged or hostile pickle: a NumPy dtype is not given by name")
    try:
        return np.dtype(spec)
    except TypeError:
        raise UserError(f"damaged pickle: unknown NumPy dtype {spec!r}") from None


def _np_scalar(dtype, data=None):
    if isinstance(dtype, np.dtype) and dtype.kind in "biufc" and isinstance(data, bytes) and len(data) == dtype.itemsize:
        return np.frombuffer(data, dtype=dtype)[0].item()
    return Stub.__new__(_stub_class("numpy", "scalar"), dtype, data)


def _torch_device(*args):
    if not all(isinstance(a, str | int) for a in args):
        raise UserError("damaged or hostile pickle: a torch.device has odd arguments")
    return torch.device(*args)


def _codecs_encode(text, encoding="latin1"):
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UserError("damaged or hostile pickle: unexpected _codecs.encode")
    return text.encode("latin1")


def _copyreg_reconstructor(cls, base, state):
    if isinstance(cls, type) and issubclass(cls, EasyDictStub):
        return cls(state or {})
    if isinstance(cls, type) and issubclass(cls, Stub):
        obj = cls.__new__(cls)
        obj.__dict__["_stub_args"] = (state,)
        return obj
    raise UserError("damaged or hostile pickle: copyreg._reconstructor with an unexpected class")


def _copyreg_newobj(cls, *args, **kwargs):
    if isinstance(cls, type) and issubclass(cls, Stub | EasyDictStub):
        return cls.__new__(cls, *args)
    raise UserError("damaged or hostile pickle: copyreg.__newobj__ with an unexpected class")


_ALLOWED: dict[tuple[str, str], Any] = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("dnnlib.util", "EasyDict"): EasyDictStub,
    ("dnnlib", "EasyDict"): EasyDictStub,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch.storage", "_load_from_bytes"): _load_from_bytes,
    ("torch", "device"): _torch_device,
    ("numpy", "dtype"): _np_dtype,
    ("numpy.core.multiarray", "scalar"): _np_scalar,
    ("numpy._core.multiarray", "scalar"): _np_scalar,
    ("_codecs", "encode"): _codecs_encode,
    ("copyreg", "_reconstructor"): _copyreg_reconstructor,
    ("copyreg", "__newobj__"): _copyreg_newobj,
    ("copyreg", "__newobj_ex__"): _copyreg_newobj,
}
_STUBS: dict[tuple[str, str], type] = {}


def _stub_class(module: str, name: str) -> type:
    key = (module, name)
    if key not in _STUBS:
        _STUBS[key] = type(f"Stub_{name}", (Stub,), {"stub_module": module, "stub_name": name})
    return _STUBS[key]


class SafeUnpickler(pickle.Unpickler):
    """Unpickler that resolves no global to real code except the tensor-rebuilding allowlist above."""

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "builtins" and name in _SAFE_BUILTINS:
            return getattr(builtins, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if module in ("builtins", "__builtin__") or module.split(".")[0] in _HOSTILE_MODULES:
            raise UserError(f"refusing to load this pickle: it calls {module}.{name}, which an EDM network pickle "
                            "never does (the file may be malicious); nothing was run")
        return _stub_class(module, name)

    def persistent_load(self, pid):
        raise UserError("this is not an EDM pickle: it uses persistent ids (a torch.save file?); "
                        "load it with torch.load, or convert EDM .pkl files only")


def safe_load(f) -> Any:
    """Unpickle a file object with `SafeUnpickler`; errors become UserErrors."""
    try:
        return SafeUnpickler(f).load()
    except UserError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            RecursionError, MemoryError, UnicodeDecodeError, OverflowError, RuntimeError) as err:
        raise UserError(f"damaged or unsupported pickle ({type(err).__name__}: {err})") from None


# --------------------------------------------------------------------------------------------------
# Walking the stand-in tree


def _state_of(node: Any) -> dict:
    """The `__dict__` a module was pickled with (persistent objects and plain torch modules alike)."""
    if isinstance(node, PersistentObj):
        return node.state
    if isinstance(node, Stub):
        st = node._stub_state
        if isinstance(st, tuple) and st and isinstance(st[0], dict):
            st = st[0]
        if isinstance(st, dict):
            return st
    raise UserError(f"damaged EDM pickle: expected a network module, found {node!r}")


def collect_state(node: Any, prefix: str = "", out: dict | None = None, _parents: tuple = ()
                  ) -> dict[str, torch.Tensor]:
    """Parameters and persistent buffers of a pickled module tree, named as `state_dict()` would name them."""
    out = {} if out is None else out
    if id(node) in _parents or len(_parents) > 64:
        raise UserError(f"damaged or hostile pickle: the module tree loops back on itself at {prefix or 'the top'}")
    st = _state_of(node)
    skip = st.get("_non_persistent_buffers_set") or set()
    for group in ("_parameters", "_buffers"):
        items = st.get(group) or {}
        if not isinstance(items, dict):
            raise UserError(f"damaged EDM pickle: {prefix or 'the network'} has no {group} table")
        for name, t in items.items():
            if t is None or (group == "_buffers" and name in skip):
                continue
            if not isinstance(t, torch.Tensor):
                raise UserError(f"damaged EDM pickle: {prefix}{name} is not a tensor")
            out[f"{prefix}{name}"] = t.detach()
    children = st.get("_modules") or {}
    if not isinstance(children, dict):
        raise UserError(f"damaged EDM pickle: {prefix or 'the network'} has no _modules table")
    for name, child in children.items():
        if child is not None:
            collect_state(child, f"{prefix}{name}.", out, (*_parents, id(node)))
    return out


def _plain(v: Any, depth: int = 0) -> Any:
    """Constructor arguments as plain JSON-able Python values."""
    if depth > 16:
        raise UserError("damaged or hostile pickle: constructor arguments nest too deeply")
    if isinstance(v, dict):
        return {str(k): _plain(x, depth + 1) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_plain(x, depth + 1) for x in v]
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, bool | int | float | str) or v is None:
        return v
    return repr(v)


def _init_kwargs(obj: PersistentObj) -> dict:
    kw = obj.state.get("_init_kwargs")
    return _plain(kw) if isinstance(kw, dict) else {}


def _attr(obj: PersistentObj, kwargs: dict, name: str, default: Any) -> Any:
    v = obj.state.get(name, kwargs.get(name, default))
    return _plain(v)


# --------------------------------------------------------------------------------------------------
# The importer


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
        raise UserError(f"{path} is a pickle but not an EDM network pickle: it holds {data!r}, not a dict with 'ema'")
    if "ema" not in data:
        keys = ", ".join(map(str, data)) or "none"
        raise UserError(f"{path} has no 'ema' network (its entries: {keys}); is it an EDM network pickle?")
    return data


def import_edm_pickle(path: str | Path, out_path: str | Path | None = None,
                      progress: Callable[[str], None] | None = None, base: Preset | None = None) -> Checkpoint:
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
        raise UserError(f"{path}: 'ema' is {ema!r}, not an EDM network object")
    if ema.class_name not in PRECONDS:
        raise UserError(f"{path}: the network is preconditioned with {ema.class_name}; ctmtool imports "
                        f"{', '.join(PRECONDS)} only")
    model = (ema.state.get("_modules") or {}).get("model")
    if not isinstance(model, PersistentObj):
        raise UserError(f"{path}: the {ema.class_name} object has no 'model' network")
    if model.class_name == "DhariwalUNet":
        raise UserError(f"{path}: its network is EDM's ADM (DhariwalUNet, as in edm-imagenet-64x64-cond-adm.pkl), "
                        "which this SongUNet reader does not convert; `ctmtool import` does (importers/edm_adm.py)")
    if model.class_name != "SongUNet":
        extra = ""
        raise UserError(f"{path}: network class {model.class_name}{extra} is not supported; ctmtool imports "
                        "EDM's SongUNet (DDPM++/NCSN++) networks only")

    pkw, mkw = _init_kwargs(ema), _init_kwargs(model)
    try:
        res, chans, label_dim, unet, kind, sigma_data, vp, pre_min, pre_max = _settings(path, ema, pkw, mkw)
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
    for k, v in (("in_channels", chans), ("out_channels", chans), ("img_resolution", res), ("label_dim", label_dim)):
        if k in mkw and mkw[k] != v:
            raise UserError(f"{path}: the SongUNet has {k} = {mkw[k]} but the precond says {v}; not supported")
    if unet["encoder_type"] == "skip":
        raise UserError(f"{path}: encoder_type 'skip' is not supported by ctmtool presets (standard/residual only)")

    kind, vp = PRECONDS[ema.class_name], None
    sigma_data = float(_attr(ema, pkw, "sigma_data", 0.5))
    if kind == "vp":
        vp = {k: float(_attr(ema, pkw, k, d)) for k, d in VP_DEFAULTS.items()}
        if any(not math.isclose(vp[k], VP_DEFAULTS[k], rel_tol=1e-6) for k in vp):
            raise UserError(f"{path}: VP parameters {vp} differ from EDM's defaults {VP_DEFAULTS}, which are the "
                            "only ones ctmtool's VPPrecond implements")
        pre_min = math.sqrt(math.expm1(0.5 * vp["beta_d"] * vp["epsilon_t"] ** 2 + vp["beta_min"] * vp["epsilon_t"]))
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


__all__ = ["EDM_URL", "SafeUnpickler", "checkpoint_from_edm", "collect_state", "import_edm_pickle", "read_edm_pickle", "safe_load"]
