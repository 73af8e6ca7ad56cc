"""What every importer shares: `ImportResult`, safe loading of torch files, tensor-dict helpers."""

from __future__ import annotations

from dataclasses import dataclass, field

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


def clean_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each tensor on the CPU in its own contiguous storage (published files hold views into shared cuda
    storage)."""
    out = {}
    for k, v in state.items():
        if not isinstance(v, torch.Tensor):
            raise UserError(f"entry {k!r} of the checkpoint is {type(v).__name__}, not a tensor")
        out[k] = v.detach().to("cpu").clone().contiguous()
    return out
