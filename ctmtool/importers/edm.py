"""NVIDIA EDM network pickles (Karras et al. 2022), e.g. edm-cifar10-32x32-uncond-vp.pkl, as teachers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ctmtool.importers.base import ImportResult, clean_state

NAME = "edm-pickle"


def sniff(obj: Any) -> bool:
    from ctmtool.importers.edm_pickle import PersistentObj

    return isinstance(obj, dict) and isinstance(obj.get("ema"), PersistentObj)


def convert(obj: Any, source: str | Path = "edm.pkl", base=None, **options) -> ImportResult:
    """The `ema` network of an EDM pickle read by `load_foreign` (see `ctmtool.importers.edm_pickle`)."""
    from ctmtool.importers.edm_pickle import checkpoint_from_edm

    ckpt = checkpoint_from_edm(obj, Path(source), base=base)
    return ImportResult(kind="teacher", preset=ckpt.preset, data_shape=ckpt.data_shape,
                        state=clean_state(ckpt.state("ema")), meta=ckpt.meta)
