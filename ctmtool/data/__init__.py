"""Data sources: `load_dataset(cfg)` turns a [data] preset section into an in-memory `Dataset`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ctmtool.config import DataConfig
from ctmtool.data.base import Dataset, to_uint8_images
from ctmtool.data.cifar10 import default_data_dir, is_cifar10, load_cifar10
from ctmtool.data.digits import load_digits
from ctmtool.data.imagenet64 import load_imagenet64
from ctmtool.data.images import load_image_folder, load_image_zip, load_images, load_npz
from ctmtool.data.toy import toy_points
from ctmtool.errors import UserError

__all__ = [
    "Dataset", "check_shape", "default_data_dir", "load_cifar10", "load_dataset", "load_digits",
    "load_image_folder", "load_image_zip", "load_images", "load_npz", "to_uint8_images",
    "toy_points",
]


def check_shape(ds: Dataset, resolution: int | None, channels: int | None) -> Dataset:
    """Refuse a data set whose images differ from the expected resolution or channel count."""
    if resolution is None and channels is None:
        return ds
    if not ds.is_image:
        raise UserError(f"{ds.name} holds points of shape {ds.shape}, not images; remove data.resolution "
                        "and data.channels from the preset")
    c, h, w = ds.shape
    if resolution is not None and (h, w) != (resolution, resolution):
        fix = f"or set data.resolution = {h}" if h == w else "(they must be square)"
        raise UserError(f"{ds.name} has {w}x{h} images but data.resolution = {resolution}; resize the images "
                        f"{fix}")
    if channels is not None and c != channels:
        raise UserError(f"{ds.name} has {c}-channel images but data.channels = {channels}; convert the "
                        f"images or set data.channels = {c}")
    return ds


def _image_source(path: str) -> bool:
    """A folder, .zip or .npz of images that is not the CIFAR-10 archive or its batch folder."""
    p = Path(path).expanduser()
    return (p.is_dir() or p.suffix.lower() in (".zip", ".npz")) and p.exists() and not is_cifar10(p)


def load_dataset(cfg: DataConfig, path: str | None = None, download: bool = False,
                 progress: Callable[[int], None] | None = None) -> Dataset:
    """The data set a [data] section describes; `path` overrides cfg.path, `download` allows fetching
    CIFAR-10."""
    path = path if path is not None else cfg.path
    if cfg.source == "toy":
        ds = toy_points(cfg.toy, cfg.n, cfg.seed, cfg.gmm)
    elif cfg.source == "digits":
        ds = load_digits(cfg.split)
    elif cfg.source == "cifar10" and path is not None and _image_source(path):
        # `--data FOLDER` with a CIFAR-10 preset: the images must have the network's size (32x32 RGB)
        return check_shape(load_images(path, progress), cfg.resolution or 32, cfg.channels or 3)
    elif cfg.source == "cifar10":
        ds = load_cifar10(path, cfg.split, download, progress)
    elif cfg.source == "imagenet64":  # streamed from disk (ctmtool.data.imagenet64)

        ds = load_imagenet64(path)
    else:
        if path is None or (cfg.hint and not Path(path).expanduser().exists()):
            what = "a folder or .zip of images" if cfg.source == "folder" else "an .npz file"
            where = "needs data.path" if path is None else f"data.path {path} does not exist; it needs"
            raise UserError(f"data.source = {cfg.source!r} {where}: {what}"
                            + (f" ({cfg.hint})" if cfg.hint else ""))
        ds = load_images(path, progress) if cfg.source == "folder" else load_npz(path)
    return check_shape(ds, cfg.resolution, cfg.channels)
