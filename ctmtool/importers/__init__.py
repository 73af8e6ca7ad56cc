"""Importers of published checkpoints: each format module turns a safely loaded file into an `ImportResult`.

A format module defines `NAME`, `sniff(obj) -> bool` (is `obj`, the safely loaded file, of this format?)
and `convert(obj, **options) -> ImportResult`. `import_file` loads a `torch.save` file with
`torch.load(weights_only=True)` (no code from the file runs; a file that needs any is refused), picks
the format, converts, checks that the weights fit the network the preset describes, and writes a
ctmtool checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from ctmtool.checkpoint import Checkpoint, load_state, save_checkpoint
from ctmtool.errors import UserError
from ctmtool.importers import openai_adm, sony_ctm
from ctmtool.importers.base import ImportResult, clean, load_torch_file, tensor_state


def formats() -> list[ModuleType]:
    """The known format modules, most specific first (a Sony CTM state dict is also ADM-shaped)."""
    return [sony_ctm, openai_adm]


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
