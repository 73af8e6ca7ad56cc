"""Importing published checkpoints (EDM, ctm-cifar10 CTM, GCTM, ...) as ctmtool checkpoints, safely.

Contract of a format module (listed in `FORMAT_MODULES`):

    NAME: str                                   # short format name, e.g. "edm-pickle"
    def sniff(obj) -> bool                      # obj: what `load_foreign` returned
    def convert(obj, **options) -> ImportResult

`load_foreign(path)` reads a file without running code from it: torch files with
`torch.load(weights_only=True, map_location="cpu")`, pickles (NVIDIA EDM's) with the restricted unpickler of
`ctmtool.importers.safe_pickle`. `import_file(path, out)` finds the format whose `sniff` accepts the object,
converts it and writes a ctmtool checkpoint atomically (the weights go to the `ema` group, which
`sample`, `fid` and `load_model` use by default).
"""

from __future__ import annotations

import importlib
import io
import pickle
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from ctmtool.errors import UserError
from ctmtool.importers.base import ImportResult, clean_state

# Format modules of this package, tried in this order.
# a Sony CTM state dict is also ADM-shaped
FORMAT_MODULES = ("edm", "ctm_cifar10", "gctm", "sony_ctm", "openai_adm")
TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # first object of a pre-1.6 (non-zip) torch.save file


def formats() -> list[ModuleType]:
    """The format modules, in the order `import_file` tries them."""
    return [importlib.import_module(f"{__name__}.{name}") for name in FORMAT_MODULES]


def load_foreign(path: str | Path) -> Any:
    """Read a published checkpoint without executing anything stored in it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist; give a published checkpoint (.pkl, .pt, .pth)")
    with open(path, "rb") as f:
        head = f.read(8)
    if head[:2] == b"PK":
        return _torch_load(path)
    if not head.startswith(b"\x80"):
        raise UserError(f"{path} is neither a torch file nor a pickle; ctmtool imports EDM .pkl, ctm-cifar10 "
                        "and GCTM .pt checkpoints (ctmtool's own .safetensors need no import)")
    from ctmtool.importers.safe_pickle import safe_load

    try:
        with open(path, "rb") as f:
            obj = safe_load(f)
    except UserError as err:
        if "persistent ids" not in str(err):
            raise
        obj = TORCH_LEGACY_MAGIC  # a legacy torch file: the restricted unpickler stops at its storages
    if isinstance(obj, int) and obj == TORCH_LEGACY_MAGIC:
        return _torch_load(path)
    return obj


def _numpy_data_globals() -> list:
    """NumPy scalar and dtype reconstructors: plain data (GCTM's loss meter stores NumPy floats)."""
    import numpy as np

    core = getattr(np, "_core", None) or np.core
    return [core.multiarray.scalar, np.dtype, *(type(np.dtype(c)) for c in "?bhilqBHILQefdgFDG")]


def _torch_load(path: Path) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with torch.serialization.safe_globals(_numpy_data_globals()):
                return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise UserError(f"refusing to load {path}: it needs code beyond plain tensors and containers "
                            f"({first}); nothing was run") from None
        except (RuntimeError, EOFError, ValueError, io.UnsupportedOperation) as err:
            raise UserError(f"{path} is a damaged or unsupported torch file ({err})") from None


def detect(obj: Any, path: str | Path = "(object)") -> ModuleType:
    """The format module whose `sniff` accepts obj."""
    for module in formats():
        if module.sniff(obj):
            return module
    what = (f"a dict with keys {', '.join(map(str, list(obj)[:8]))}" if isinstance(obj, dict)
            else type(obj).__name__)
    names = ", ".join(m.NAME for m in formats())
    raise UserError(f"{path}: unrecognised checkpoint format ({what}); ctmtool imports: {names}")


def convert_file(path: str | Path, fmt: str | None = None, **options) -> tuple[ImportResult, ModuleType]:
    """Read `path` safely and convert it with format `fmt` (default: the first whose `sniff` accepts it)."""
    path = Path(path)
    obj = load_foreign(path)
    if fmt is None:
        module = detect(obj, path)
    else:
        module = next((m for m in formats() if m.NAME == fmt), None)
        if module is None:
            raise UserError(f"unknown import format {fmt!r}; known: {', '.join(m.NAME for m in formats())}")
    check_options(module, options)
    return module.convert(obj, source=path, **options), module


def check_options(module: ModuleType, options: dict) -> None:
    """Refuse options the format's `convert` does not take (a GCTM-only option given for an ADM file, ...)."""
    import inspect

    params = inspect.signature(module.convert).parameters
    takes = {n for n, p in params.items() if p.kind is p.KEYWORD_ONLY or p.kind is p.POSITIONAL_OR_KEYWORD}
    takes -= {"obj", "source"}
    unknown = sorted(k for k in options if k not in takes)
    if unknown:
        what = ", ".join(f"`{k}`" for k in unknown)
        fits = ", ".join(f"`{k}`" for k in sorted(takes - {"base"})) or "none"
        raise UserError(f"{what} does not apply to a {module.NAME} file (its options: {fits}); leave it out")


def import_file(path: str | Path, out: str | Path, fmt: str | None = None,
                **options) -> tuple[ImportResult, Path]:
    """Detect the format of `path`, convert it, and write the ctmtool checkpoint `out` atomically."""
    from ctmtool.checkpoint import Checkpoint, load_state, save_checkpoint
    from ctmtool.core.models import build_precond

    path = Path(path)
    res, module = convert_file(path, fmt, **options)
    net = build_precond(res.kind, res.preset, res.data_shape, res.meta)
    load_state(net, res.state, source=f"{path.name} ({module.NAME})")  # refuse before writing anything
    meta = {"format": module.NAME, "file": path.name, **res.meta}
    ckpt = Checkpoint(kind=res.kind, preset=res.preset, data_shape=res.data_shape, groups={"ema": res.state},
                      meta=meta)
    return res, save_checkpoint(out, ckpt)


__all__ = ["FORMAT_MODULES", "ImportResult", "clean_state", "convert_file", "detect", "formats",
           "import_file", "load_foreign"]
