"""NVIDIA EDM network pickles (Karras et al. 2022), e.g. edm-cifar10-32x32-uncond-vp.pkl or the ImageNet-64
ADM edm-imagenet-64x64-cond-adm.pkl, as teachers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ctmtool.importers.base import ImportResult, clean_state

NAME = "edm-pickle"


def sniff(obj: Any) -> bool:
    from ctmtool.importers.safe_pickle import PersistentObj

    return isinstance(obj, dict) and isinstance(obj.get("ema"), PersistentObj)


def convert(obj: Any, source: str | Path = "edm.pkl", base=None) -> ImportResult:
    """The `ema` network of an EDM pickle read by `load_foreign` (see `ctmtool.importers.edm_pickle`); a
    DhariwalUNet (edm-imagenet-64x64-cond-adm.pkl) goes to `ctmtool.importers.edm_adm`."""
    from ctmtool.importers.edm_pickle import PersistentObj, checkpoint_from_edm

    model = (obj["ema"].state.get("_modules") or {}).get("model")
    if isinstance(model, PersistentObj) and model.class_name == "DhariwalUNet":
        from ctmtool.importers.edm_adm import import_dhariwal

        return import_dhariwal(obj, Path(source))

    ckpt = checkpoint_from_edm(obj, Path(source), base=base)
    return ImportResult(kind="teacher", preset=ckpt.preset, data_shape=ckpt.data_shape,
                        state=clean_state(ckpt.state("ema")), meta=ckpt.meta)
