"""What every importer shares: `ImportResult`, safe loading of torch files, tensor-dict helpers."""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ctmtool.config import Preset
from ctmtool.errors import UserError


@dataclass
class ImportResult:
    kind: str  # teacher | ctm | gctm
    preset: Preset  # the resolved preset that rebuilds the network
    data_shape: tuple[int, ...]  # (C, H, W)
    state: dict[str, torch.Tensor]  # precond state dict (names as build_precond's): float32, CPU, contiguous
    meta: dict = field(default_factory=dict)  # provenance, recorded in the checkpoint header


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
