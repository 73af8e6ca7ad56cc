"""Importers of published checkpoints: each format module turns a safely loaded file into an `ImportResult`.

A format module defines `NAME`, `sniff(obj) -> bool` (is `obj`, the safely loaded file, of this format?)
and `convert(obj, **options) -> ImportResult`. `import_file` loads a `torch.save` file with
`torch.load(weights_only=True)` (no code from the file runs; a file that needs any is refused), picks
the format, converts, checks that the weights fit the network the preset describes, and writes a
ctmtool checkpoint.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import torch

from ctmtool.checkpoint import Checkpoint, load_state, save_checkpoint
from ctmtool.config import Preset
from ctmtool.errors import UserError


@dataclass
class ImportResult:
    kind: str  # teacher | ctm | gctm
    preset: Preset  # the resolved preset that rebuilds the network
    data_shape: tuple[int, ...]  # (C, H, W)
    state: dict[str, torch.Tensor]  # precond state dict (names as build_precond's): float32, CPU, contiguous
    meta: dict = field(default_factory=dict)  # provenance, recorded in the checkpoint header


def formats() -> list[ModuleType]:
    """The known format modules, most specific first (a Sony CTM state dict is also ADM-shaped)."""
    from ctmtool.importers import openai_adm, sony_ctm

    return [sony_ctm, openai_adm]


def load_torch_file(path: str | Path) -> object:
    """`torch.load(path, weights_only=True, map_location='cpu')`: tensors and containers only, no code run."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist; give the path of the downloaded checkpoint file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else "unsupported content"
        raise UserError(f"refusing to load {path}: it is not a plain tensor file and loading it would need code "
                        f"from the file ({first[:200]})") from None
    except (RuntimeError, OSError, EOFError, ValueError) as err:
        raise UserError(f"cannot read {path} as a torch checkpoint ({str(err).splitlines()[0][:200]}); "
                        "check the download") from None


def tensor_state(obj: object) -> dict[str, torch.Tensor] | None:
    """`obj` as a flat {name: tensor} dict (a leading 'module.' stripped), or None if it is not one."""
    if not isinstance(obj, dict) or not obj or not all(isinstance(k, str) for k in obj):
        return None
    if not all(isinstance(v, torch.Tensor) for v in obj.values()):
        return None
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def clean(t: torch.Tensor) -> torch.Tensor:
    """A float32, CPU, contiguous copy that shares no storage with the loaded file."""
    return t.detach().to(device="cpu", dtype=torch.float32).clone().contiguous()


def convert_file(path: str | Path, fmt: str | None = None, **options) -> ImportResult:
    """Load `path` safely and convert it with format `fmt` (default: the first whose `sniff` accepts it)."""
    obj = load_torch_file(path)
    mods = formats()
    if fmt is not None:
        mod = next((m for m in mods if m.NAME == fmt), None)
        if mod is None:
            raise UserError(f"unknown import format {fmt!r}; known: {', '.join(m.NAME for m in mods)}")
    else:
        mod = next((m for m in mods if m.sniff(obj)), None)
        if mod is None:
            raise UserError(f"{path} is not a checkpoint format ctmtool can import "
                            f"(known: {', '.join(m.NAME for m in mods)})")
    result = mod.convert(obj, **options)
    result.meta.setdefault("file", Path(path).name)
    return result


def import_file(path: str | Path, out_path: str | Path | None = None, fmt: str | None = None,
                **options) -> Checkpoint:
    """Convert `path` into a ctmtool checkpoint (saved to `out_path` if given); the weights are checked first."""
    from ctmtool.models import build_precond  # models imports the nets; keep this module light

    res = convert_file(path, fmt, **options)
    net = build_precond(res.kind, res.preset, res.data_shape, res.meta)
    load_state(net, res.state, source=f"{Path(path).name} ({res.meta.get('format', fmt)})")
    ckpt = Checkpoint(kind=res.kind, preset=res.preset, data_shape=res.data_shape, groups={"ema": res.state},
                      meta=res.meta)
    if out_path is not None:
        ckpt.path = save_checkpoint(out_path, ckpt)
    return ckpt


__all__ = ["ImportResult", "clean", "convert_file", "formats", "import_file", "load_torch_file", "tensor_state"]
