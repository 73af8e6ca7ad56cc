"""The source side of a GCTM between two data sets: [gctm.source], read as [data] is (folder, .zip, .npz,
cifar10, digits, ...), and fitted to the target's item shape so that x0 and x1 live in the same space."""

from __future__ import annotations

from ctmtool.config import Preset
from ctmtool.data import load_dataset
from ctmtool.data.base import Dataset
from ctmtool.errors import UserError


def load_source(preset: Preset, target: Dataset | None) -> Dataset:
    """The [gctm.source] data set; its items must have the target items' shape (grey sources are made RGB
    for an RGB target; square images of another size are resized like `translate` inputs)."""
    cfg = preset.gctm.source
    if cfg is None:
        raise UserError(f"preset {preset.name!r}: coupling {preset.gctm.coupling!r} draws the source from "
                        "another data set; add a [gctm.source] table as [data] (e.g. source = \"folder\", "
                        "path = \"A/\"), or set gctm.source.source=folder and gctm.source.path=A/")
    ds = load_dataset(cfg)
    if target is None or ds.shape == target.shape:
        return ds
    if not (ds.is_image and target.is_image):
        raise UserError(f"[gctm.source] {ds.name} holds items of shape {ds.shape} but the target data "
                        f"{target.name} {target.shape}; both sides must have the same shape")
    from ctmtool.gctm.couplings import resize_uint8

    c, h, w = target.shape
    v = ds.values
    if v.shape[1] != c:
        if v.shape[1] != 1:
            raise UserError(f"[gctm.source] {ds.name} has {v.shape[1]} channels, the target {c}; give images "
                            f"with {c} channel(s) (or grey ones)")
        v = v.expand(-1, c, -1, -1)
    if v.shape[-2:] != (h, w):
        if h != w or v.shape[-1] != v.shape[-2]:
            raise UserError(f"[gctm.source] {ds.name} holds {v.shape[-2]}x{v.shape[-1]} images, the target "
                            f"{h}x{w}; give images of the target's size")
        v = resize_uint8(v, h)
    return Dataset(v.contiguous(), labels=ds.labels, name=ds.name, items=ds.items)


__all__ = ["load_source"]
