"""Image files as a `Dataset`: a folder (recursive), a .zip, an .npz array file or one image file.

Class sub-folders of the root (sorted by name) become labels; images directly in the root mean no
labels. Every image must have the size of the first; grey files stay grey unless some file is colour,
in which case all become RGB. Large sets are decoded by forked worker processes.
"""

from __future__ import annotations

import io
import multiprocessing as mp
import os
import struct
import sys
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ctmtool.data.base import Dataset
from ctmtool.errors import UserError

IMAGE_EXTS = (".bmp", ".jpeg", ".jpg", ".png", ".webp")
GREY_MODES = ("1", "L", "LA", "I", "F", "I;16", "I;16L", "I;16B")
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error, zipfile.BadZipFile,
                 Image.DecompressionBombError)
CHUNK = 256  # images per pool task

Progress = Callable[[int], None] | None  # called with the number of items finished since the last call
Source = tuple[str, str, "str | None"]  # (name for messages, file path, member inside a .zip or None)


def _is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTS)


def _to_array(im: Image.Image) -> np.ndarray:
    """A decoded image as uint8 (H, W, 1) grey or (H, W, 3) RGB; alpha and palettes are dropped."""
    if im.mode.startswith("I;16"):
        a = (np.asarray(im).astype(np.uint32) >> 8).astype(np.uint8)  # 16-bit grey: keep the top byte
    else:
        mode = "L" if im.mode in GREY_MODES else "RGB"
        a = np.asarray(im if im.mode == mode else im.convert(mode))
    return a[:, :, None] if a.ndim == 2 else a


def _decode_chunk(chunk: Sequence[Source]) -> list[np.ndarray]:
    """Decode a run of files (a pool task); a .zip is opened once per task."""
    out, zf = [], None
    try:
        for name, path, member in chunk:
            try:
                if member is not None and zf is None:
                    zf = zipfile.ZipFile(path)
                with Image.open(path if member is None else io.BytesIO(zf.read(member))) as im:
                    out.append(_to_array(im))
            except DECODE_ERRORS as err:
                raise UserError(f"cannot read image {name} ({err}); remove or replace the file") from None
    finally:
        if zf is not None:
            zf.close()
    return out


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _map_in_order(chunks: list, workers: int) -> Iterator[list[np.ndarray]]:
    """`_decode_chunk` over `chunks`, results in order: forked processes for big jobs, else threads."""
    # Decoding small images is mostly Python work, so threads barely help (measured: none on 32x32 JPEGs);
    # forked workers, as in PyTorch's DataLoader, scale with the cores and need not import torch again.
    if workers > 1 and len(chunks) >= 4 and "fork" in mp.get_all_start_methods() and sys.platform == "linux":
        with mp.get_context("fork").Pool(min(workers, len(chunks))) as pool:  # terminated on exit
            yield from pool.imap(_decode_chunk, chunks)
        return
    pool = ThreadPoolExecutor(max(1, workers))
    try:
        yield from pool.map(_decode_chunk, chunks)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def decode_images(sources: Sequence[Source], progress: Progress = None,
                  workers: int | None = None) -> np.ndarray:
    """Decode every (name, path, zip member) into one uint8 (N, C, H, W) array, in parallel."""
    n = len(sources)
    chunks = [sources[i:i + CHUNK] for i in range(0, n, CHUNK)]
    out, i = None, 0
    with closing(_map_in_order(chunks, workers or _cpus())) as results:  # stops the pool on an error
        for arrays in results:
            for a in arrays:
                h, w, c = a.shape
                if out is None:
                    out = np.empty((n, c, h, w), np.uint8)
                elif (h, w) != out.shape[2:]:
                    first = sources[0][0]
                    raise UserError(f"image {sources[i][0]} is {w}x{h} but {first} is "
                                    f"{out.shape[3]}x{out.shape[2]}; all images must share one size: resize "
                                    "them or remove the odd ones")
                elif c > out.shape[1]:  # first colour image after grey ones: make everything RGB
                    rgb = np.empty((n, c, h, w), np.uint8)
                    rgb[:i] = out[:i]
                    out = rgb
                out[i] = a.transpose(2, 0, 1)  # a grey image broadcasts over RGB channels
                i += 1
            if progress is not None:
                progress(len(arrays))
    return out


def _labels(rel_paths: Sequence[str]) -> tuple[torch.Tensor | None, list[str] | None]:
    """Labels from the first folder of each relative path; none if any image sits in the root."""
    parts = [p.split("/") for p in rel_paths]
    if any(len(p) < 2 for p in parts):
        return None, None
    names = sorted({p[0] for p in parts})
    index = {name: k for k, name in enumerate(names)}
    return torch.tensor([index[p[0]] for p in parts], dtype=torch.int64), names


def _dataset(values: np.ndarray, rel_paths: Sequence[str], items: list[str], name: str) -> Dataset:
    labels, class_names = _labels(rel_paths)
    return Dataset(torch.from_numpy(values), labels, len(class_names or []), name, items, class_names)


def _no_images(where: Path) -> UserError:
    return UserError(f"no images found in {where} (read recursively: {', '.join(IMAGE_EXTS)}); "
                     "point data.path at a folder or .zip of image files")


def _hidden(rel: str) -> bool:
    return any(part.startswith(".") or part == "__MACOSX" for part in rel.split("/"))


def load_image_folder(path: str | os.PathLike, progress: Progress = None) -> Dataset:
    """Every image under the folder `path`, sorted by relative path; class sub-folders become labels."""
    root = Path(path)
    if not root.is_dir():
        raise UserError(f"image folder {root} does not exist or is not a folder; give an existing folder")
    rels = []
    for d, dirs, files in os.walk(root, followlinks=True):
        dirs.sort()
        rel_dir = Path(d).relative_to(root).as_posix()
        rels += [f if rel_dir == "." else f"{rel_dir}/{f}" for f in files if _is_image_name(f)]
    rels = sorted(r for r in rels if not _hidden(r))
    if not rels:
        raise _no_images(root)
    files = [str(root / r) for r in rels]
    values = decode_images([(f, f, None) for f in files], progress)
    return _dataset(values, rels, files, str(root))


def load_image_zip(path: str | os.PathLike, progress: Progress = None) -> Dataset:
    """Every image inside the .zip `path`; a single top folder shared by all is skipped, then as a folder."""
    path = Path(path)
    try:
        zf = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as err:
        raise UserError(f"cannot open {path} as a zip archive ({err}); check the file or re-create "
                        "it") from None
    with zf:
        members = sorted(i.filename for i in zf.infolist()
                         if not i.is_dir() and _is_image_name(i.filename) and not _hidden(i.filename))
        if not members:
            raise _no_images(path)
    rels = list(members)
    while all("/" in r for r in rels) and len({r.split("/", 1)[0] for r in rels}) == 1:
        rels = [r.split("/", 1)[1] for r in rels]
    items = [f"{path}:{m}" for m in members]
    values = decode_images([(item, str(path), m) for item, m in zip(items, members, strict=True)], progress)
    return _dataset(values, rels, items, str(path))


def _npz_values(samples: np.ndarray, path: Path) -> torch.Tensor:
    """`samples` as uint8 NCHW images (from NHWC, NCHW or NHW) or float32 (N, D) points."""
    if np.issubdtype(samples.dtype, np.complexfloating):
        raise UserError(f"{path}: 'samples' is complex ({samples.dtype}); ctmtool takes real numbers: save "
                        "the real and imaginary parts as separate dimensions (np.stack([z.real, z.imag], "
                        "-1))")
    if samples.ndim == 2 and (np.issubdtype(samples.dtype, np.floating)
                              or np.issubdtype(samples.dtype, np.integer)):
        return torch.from_numpy(samples.astype(np.float32))
    if samples.dtype == np.uint8 and samples.ndim == 3:
        return torch.from_numpy(np.ascontiguousarray(samples[:, None]))
    if samples.dtype == np.uint8 and samples.ndim == 4:
        if samples.shape[3] in (1, 3):
            return torch.from_numpy(np.ascontiguousarray(samples.transpose(0, 3, 1, 2)))
        if samples.shape[1] in (1, 3):
            return torch.from_numpy(np.ascontiguousarray(samples))
    raise UserError(f"{path}: 'samples' is {samples.dtype} of shape {samples.shape}; save images as uint8 "
                    "(N, H, W, C) with C = 1 or 3, or points as float (N, D)")


def load_npz(path: str | os.PathLike) -> Dataset:
    """An .npz with `samples` (uint8 images NHWC/NCHW or float (N, D) points) and optional `labels`."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            if "samples" not in z.files:
                raise UserError(f"{path} has no 'samples' array (it has: {', '.join(z.files) or 'nothing'}); "
                                "save it with np.savez(path, samples=..., labels=...)")
            samples = z["samples"]
            labels = z["labels"] if "labels" in z.files else None
            class_names = [str(c) for c in z["class_names"]] if "class_names" in z.files else None
    except UserError:  # a UserError (a ValueError) inside says what is wrong itself
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        raise UserError(f"cannot read {path} as an .npz file ({err}); check the file or re-create "
                        "it") from None
    values = _npz_values(samples, path)
    if labels is None:
        return Dataset(values, name=str(path))
    if labels.shape != (len(values),) or not np.issubdtype(labels.dtype, np.integer) or (labels < 0).any():
        raise UserError(f"{path}: 'labels' must be {len(values)} non-negative integers, got {labels.dtype} "
                        f"of shape {labels.shape}")
    labels = torch.from_numpy(labels.astype(np.int64))
    num_classes = max(int(labels.max()) + 1 if len(labels) else 0, len(class_names or []))
    return Dataset(values, labels, num_classes, str(path), class_names=class_names)


def load_images(path: str | os.PathLike, progress: Progress = None) -> Dataset:
    """Images from a folder, a .zip, an .npz or a single image file, chosen by what `path` is."""
    p = Path(path)
    if p.is_dir():
        return load_image_folder(p, progress)
    if not p.is_file():
        raise UserError(f"{p} does not exist; give a folder, .zip or .npz of images, or an image file")
    suffix = p.suffix.lower()
    if suffix == ".zip":
        return load_image_zip(p, progress)
    if suffix == ".npz":
        return load_npz(p)
    if _is_image_name(p.name):
        return Dataset(torch.from_numpy(decode_images([(str(p), str(p), None)], progress)), name=str(p),
                       items=[str(p)])
    raise UserError(f"{p} is not a folder, .zip, .npz or image file ({', '.join(IMAGE_EXTS)}); "
                    "give one of those")
