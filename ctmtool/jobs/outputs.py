"""Writing generated items (samples, translations, edits): an .npz, one .png, a folder of PNGs, or .npz bytes
on stdout.

`check_out` refuses an output before any work is done (an existing file without `force`, a wrong suffix,
a folder for 2-D points, a read-only place); `write_items` writes all or nothing: files go through a
temporary name and a rename, a folder is filled in a hidden temporary folder and moved into place, and a
failure (a full disk, no permission) removes what was written and says so in one `UserError`.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from ctmtool.data.base import to_uint8_images
from ctmtool.errors import UserError
from ctmtool.jobs.streams import write_npz

FILE_SUFFIXES = (".npz", ".png")
STDOUT = "-"


def _writable_dir(path: Path) -> None:
    """Refuse a target whose nearest existing parent is not a writable folder (before any work)."""
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"cannot write {path}: {parent} is a file, not a folder; choose another `out`")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"cannot write {path}: {parent} is not writable; choose another `out`")


def check_out(out: str | Path, is_image: bool, force: bool, one_png_for: int | None = None) -> str | Path:
    """Refuse an output the items cannot be written to; returns `out` ("-" for stdout, else a Path).

    one_png_for: the number of items when a .png holds one image (not a grid): refused unless it is 1."""
    if str(out) == STDOUT:
        return STDOUT
    path = Path(out)
    if path.suffix.lower() not in FILE_SUFFIXES and path.suffix:
        raise UserError(f"`out` {out}: use a .npz file, a .png file, a folder, or - for stdout")
    if path.suffix:
        if path.is_dir():
            raise UserError(f"`out` {path} is a folder; give a file name or drop the suffix to write a "
                            "folder")
        if path.exists() and not force:
            raise UserError(f"output {path} already exists; pass `force` to overwrite it or choose another "
                            "path")
    elif not is_image:
        raise UserError(f"`out` {out}: a folder of PNGs is for images; write 2-D points to .npz, .png "
                        "(a scatter plot) or -")
    elif path.exists() and not path.is_dir():
        raise UserError(f"`out` {path} is a file, not a folder; choose a folder name or pass a .npz/.png "
                        "name")
    elif path.exists() and any(path.iterdir()) and not force:
        raise UserError(f"output folder {path} is not empty; pass `force` to write into it or choose another "
                        "folder")
    if path.exists() and not os.access(path if path.is_dir() else path.parent, os.W_OK):
        raise UserError(f"cannot write {path}: it is read-only; choose another `out`")
    _writable_dir(path)
    if is_image and path.suffix.lower() == ".png" and one_png_for not in (None, 1):
        raise UserError(f"`out` {path} is one image but there are {one_png_for} items; give a folder or an "
                        ".npz (and `grid` FILE.png for a before/after picture)")
    return path


def _os_error(path, err: OSError) -> UserError:
    if err.errno == errno.ENOSPC:
        why = "the disk is full; free some space or choose another `out`"
    elif err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        why = "no permission to write there; choose another `out`"
    else:
        why = f"{err.strerror or err}; choose another `out`"
    return UserError(f"could not write {path}: {why} (nothing was written)")


def _uint8_nhwc(x: torch.Tensor) -> np.ndarray:
    return to_uint8_images(x).permute(0, 2, 3, 1).cpu().numpy()


def stream_arrays(x: torch.Tensor, is_image: bool, labels: torch.Tensor | None = None,
                  inputs: torch.Tensor | None = None) -> dict[str, np.ndarray]:
    """The arrays of an .npz output: `samples` (uint8 NHWC images or float32 points), `labels`, `inputs`."""
    arrays = {"samples": _uint8_nhwc(x) if is_image else x.float().cpu().numpy()}
    if labels is not None:
        arrays["labels"] = labels.cpu().numpy()
    if inputs is not None:
        arrays["inputs"] = _uint8_nhwc(inputs) if is_image else inputs.float().cpu().numpy()
    return arrays


def write_items(x: torch.Tensor, out: str | Path, is_image: bool, *, labels: torch.Tensor | None = None,
                inputs: torch.Tensor | None = None, names: list[str] | None = None, grid: bool = True,
                title: str | None = None, extent: float | None = None) -> dict:
    """Write `x` (images in [-1, 1] or points) to `out` (checked by `check_out`); all or nothing.

    .npz: key `samples` (uint8 NHWC images or float32 points), plus `labels` / `inputs` when given;
    .png: a grid of images (`grid`; else exactly one image) or a scatter plot of points (with `title`, on
    [-extent, extent]); a folder: one PNG
    per image, named `names[i]` or the index."""
    from ctmtool.checkpoint import atomic_write
    from ctmtool.jobs.plots import save_png, save_samples_png, scatter_image

    if str(out) == STDOUT:  # the same arrays as an .npz file, as bytes on stdout (ctmtool.jobs.streams)
        write_npz(stream_arrays(x, is_image, labels, inputs))
        return {"out": STDOUT, "format": "npz"}
    path = Path(out)
    try:
        if path.suffix.lower() == ".npz":
            arrays = stream_arrays(x, is_image, labels, inputs)
            atomic_write(path, lambda tmp: _savez(tmp, arrays))
            return {"out": str(path), "format": "npz"}
        if path.suffix.lower() == ".png":
            if not is_image:
                save_png(scatter_image(x, extent=extent, title=title), path)
                return {"out": str(path), "format": "png"}
            if grid:
                save_samples_png(x, path, is_image)
            else:
                save_png(_uint8_nhwc(x[:1])[0], path)
            return {"out": str(path), "format": "png"}
        return _write_folder(x, path, names)
    except OSError as err:
        raise _os_error(path, err) from None


def _savez(tmp: str, arrays: dict) -> None:
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)


def _write_folder(x: torch.Tensor, folder: Path, names: list[str] | None) -> dict:
    """PNGs written into a hidden sibling folder, then moved into `folder` (removed again on failure)."""
    from PIL import Image

    folder.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    names = names or [f"{i:06d}" for i in range(len(x))]
    try:
        for img, name in zip(_uint8_nhwc(x), names, strict=True):
            Image.fromarray(img.squeeze(-1) if img.shape[-1] == 1
                            else img).save(stage / f"{name}.png", format="PNG")
        if not folder.exists():
            os.replace(stage, folder)
        else:
            for f in sorted(stage.iterdir()):
                os.replace(f, folder / f.name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return {"out": str(folder), "format": "folder", "files": len(names)}
