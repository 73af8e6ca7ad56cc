"""ImageNet 64x64 streamed from disk: the official downsampled npz batches, or a class-folder tree of images.

Two layouts under one folder (default: `$CTMTOOL_DATA/imagenet64`, i.e. ~/.cache/ctmtool/data/imagenet64):

- `Imagenet64_train_npz`: `train_data_batch_1.npz` ... `train_data_batch_10.npz` (Chrabaszcz et al. 2017,
  image-net.org), each with `data` uint8 (N, 12288) in CHW-flattened order (all R, then G, then B) and
  `labels` 1..1000 in the order of the ILSVRC devkit's `map_clsloc.txt`. Those labels differ from the
  sorted-synset order that OpenAI's teacher (and every class-folder loader) uses, so `map_clsloc.txt`
  must sit beside the batches: labels are then remapped to the index of their synset in sorted order.
  A batch stored uncompressed in its zip is memory-mapped in place; a compressed one is inflated once
  into `.ctmtool-cache/` beside it and memory-mapped from there.
- a tree `<class>/<image>` (e.g. ILSVRC2012 `train/n01440764/*.JPEG`, which the paper used): sorted class
  folders become labels 0..K-1; images are decoded when a batch asks for them, and any other size is
  brought to 64x64 as ADM's loader does (halve with a box filter while the short side is at least
  twice 64, bicubic to a short side of 64, centre crop).

Nothing holds more than the labels and the rows a batch asks for in memory. `shard(rank, world)` gives a
rank its own strided share, as the official loader does (`paths[rank::world]`).
"""

from __future__ import annotations

import os
import re
import shutil
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ctmtool.data.cifar10 import default_data_dir
from ctmtool.data.images import DECODE_ERRORS, IMAGE_EXTS
from ctmtool.errors import UserError

RES = 64
BATCH_GLOB = "train_data_batch_*.npz"
CLASS_MAP = "map_clsloc.txt"
NPZ_URL = "https://image-net.org/download-images.php (Downsampled ImageNet 64x64: Imagenet64_train_npz.zip)"
MAP_URL = "https://github.com/PatrykChrabaszcz/Imagenet32_Scripts (map_clsloc.txt)"


def default_imagenet64_dir() -> Path:
    return default_data_dir() / "imagenet64"


class StreamingImages:
    """A read-on-demand image set with the `Dataset` interface used for training (len, get, shape, labels)."""

    def __init__(self, reader, n: int, labels: torch.Tensor, num_classes: int, name: str,
                 class_names: list[str] | None = None, subset: np.ndarray | None = None):
        self._reader, self._n = reader, n  # reader(rows: np.ndarray sorted ascending) -> uint8 (k, 3, 64, 64)
        self._subset = subset
        self.labels, self.num_classes, self.name, self.class_names = labels, num_classes, name, class_names
        self.items = None

    def __len__(self) -> int:
        return self._n if self._subset is None else len(self._subset)

    is_image = True

    @property
    def shape(self) -> tuple[int, ...]:
        return (3, RES, RES)

    def to(self, device) -> StreamingImages:
        """Stays on disk (the training loop moves each batch)."""
        return self

    def shard(self, rank: int, world: int) -> StreamingImages:
        """Items rank, rank + world, ... : a disjoint share per torchrun rank."""
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} outside 0..{world - 1}")
        rows = (np.arange(self._n) if self._subset is None else self._subset)[rank::world]
        return StreamingImages(self._reader, self._n,
                               self.labels[torch.from_numpy(np.arange(len(self))[rank::world])],
                               self.num_classes, f"{self.name} [rank {rank}/{world}]", self.class_names, rows)

    def uint8(self, idx) -> torch.Tensor:
        """Items `idx` as uint8 (k, 3, 64, 64), read from disk in ascending order."""
        idx = np.asarray(torch.as_tensor(idx).cpu().reshape(-1), dtype=np.int64)
        if len(idx) and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"index out of range for {len(self)} items")
        rows = idx if self._subset is None else self._subset[idx]
        order = np.argsort(rows, kind="stable")
        out = np.empty((len(rows), 3, RES, RES), np.uint8)
        out[order] = self._reader(rows[order])
        return torch.from_numpy(out)

    def get(self, idx: torch.Tensor, device=None, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """Items `idx` as (x in [-1, 1], labels), like `Dataset.get`."""
        x = self.uint8(idx).to(device=device, dtype=dtype) / 127.5 - 1
        return x, self.labels[torch.as_tensor(idx).cpu().reshape(-1)].to(device)


# --------------------------------------------------------------------------------------------------
# Downsampled npz batches


def _batch_number(p: Path) -> int:
    m = re.search(r"(\d+)\.npz$", p.name)
    return int(m.group(1)) if m else 0


def read_class_map(path: Path) -> list[str]:
    """Synset ids of `map_clsloc.txt` lines `<wnid> <label 1..K> <name>`, indexed by label - 1."""
    wnids: dict[int, str] = {}
    try:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip():
                parts = line.split()
                if len(parts) < 2 or not parts[1].isdigit():
                    raise UserError(f"{path} line {n} is not '<wnid> <label> <name>'; use the devkit's "
                                    f"{CLASS_MAP}")
                wnids[int(parts[1])] = parts[0]
    except OSError as err:
        raise UserError(f"cannot read {path} ({err})") from None
    if sorted(wnids) != list(range(1, len(wnids) + 1)) or len(set(wnids.values())) != len(wnids):
        raise UserError(f"{path} must list labels 1..K once each with distinct synsets; use the devkit's "
                        f"{CLASS_MAP}")
    return [wnids[k] for k in range(1, len(wnids) + 1)]


def _npy_member(zf: zipfile.ZipFile, name: str, where: Path) -> zipfile.ZipInfo:
    try:
        return zf.getinfo(name)
    except KeyError:
        raise UserError(f"{where} has no '{name[:-4]}' array (it has: "
                        f"{', '.join(zf.namelist()) or 'nothing'}); use the official {BATCH_GLOB} "
                        "files") from None


def _npy_header(f) -> tuple[tuple[int, ...], np.dtype, bool]:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)
    return np.lib.format.read_array_header_2_0(f)


def _stored_data(path: Path, info: zipfile.ZipInfo) -> np.ndarray:
    """`data.npy` of an uncompressed zip member, memory-mapped where it lies in the .npz."""
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        head = f.read(30)
        if head[:4] != b"PK\x03\x04":
            raise UserError(f"{path} is damaged (bad zip entry for data.npy); download it again")
        name_len, extra_len = int.from_bytes(head[26:28], "little"), int.from_bytes(head[28:30], "little")
        f.seek(info.header_offset + 30 + name_len + extra_len)
        shape, fortran, dtype = _npy_header(f)
        offset = f.tell()
    if fortran or dtype != np.uint8:
        raise UserError(f"{path}: 'data' is {dtype}{' (Fortran order)' if fortran else ''}; expected C-order "
                        "uint8")
    return np.memmap(path, np.uint8, "r", offset, shape)


def _inflated_data(path: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray:
    """A compressed `data.npy`: inflated once into `.ctmtool-cache/<name>.data.npy`, then memory-mapped."""
    cache = path.parent / ".ctmtool-cache" / f"{path.stem}.data.npy"
    if not cache.is_file() or cache.stat().st_mtime < path.stat().st_mtime:
        try:
            cache.parent.mkdir(exist_ok=True)
            tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
            with zf.open(info) as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 24)
            os.replace(tmp, cache)
        except OSError as err:
            raise UserError(f"cannot write the inflated copy of {path} to {cache} ({err}); make the folder "
                            "writable or re-pack the .npz uncompressed (np.savez)") from None
    try:
        return np.load(cache, mmap_mode="r")
    except ValueError as err:
        raise UserError(f"{cache} is damaged ({err}); delete it and run again") from None


def _open_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(data uint8 (N, 12288) memory-mapped, labels int64 (N,)) of one batch file, both checked."""
    try:
        with zipfile.ZipFile(path) as zf:
            info = _npy_member(zf, "data.npy", path)
            with zf.open(_npy_member(zf, "labels.npy", path)) as f:
                labels = np.load(f, allow_pickle=False)
            data = (_stored_data(path, info) if info.compress_type == zipfile.ZIP_STORED
                    else _inflated_data(path, zf, info))
    except UserError:  # a UserError (a ValueError) inside says what is wrong itself
        raise
    except (OSError, zipfile.BadZipFile, ValueError, EOFError) as err:
        raise UserError(f"cannot read {path} as an .npz batch ({err}); download it again") from None
    if data.ndim != 2 or data.shape[1] != 3 * RES * RES:
        raise UserError(f"{path}: 'data' has shape {data.shape}; expected (N, {3 * RES * RES}) for 64x64 RGB "
                        "images (is this the 32x32 or another variant?)")
    if labels.shape != (data.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise UserError(f"{path}: 'labels' is {labels.dtype} of shape {labels.shape}; expected "
                        f"{data.shape[0]} integers")
    return data, labels.astype(np.int64)


def load_npz_batches(root: Path) -> StreamingImages:
    """All `train_data_batch_*.npz` in `root`, memory-mapped, labels remapped by `map_clsloc.txt` to
    sorted-synset order."""
    files = sorted(root.glob(BATCH_GLOB), key=_batch_number)
    mapping = root / CLASS_MAP
    if not mapping.is_file():
        raise UserError(f"{root} holds the downsampled ImageNet batches but not {CLASS_MAP}, which says "
                        "which synset each label 1..1000 is (needed to match OpenAI's sorted-synset "
                        f"labels); get it from {MAP_URL} or the ILSVRC2012 devkit and put it at {mapping}")
    wnids = read_class_map(mapping)
    sorted_wnids = sorted(wnids)
    remap = np.array([sorted_wnids.index(w) for w in wnids], np.int64)  # devkit label - 1 -> sorted index
    datas, labels = [], []
    for f in files:
        d, lab = _open_batch(f)
        if len(lab) and (lab.min() < 1 or lab.max() > len(wnids)):
            raise UserError(f"{f}: labels run {lab.min()}..{lab.max()} but {mapping} lists 1..{len(wnids)}")
        datas.append(d)
        labels.append(remap[lab - 1])
    starts = np.cumsum([0] + [len(d) for d in datas])

    def read(rows: np.ndarray) -> np.ndarray:
        out = np.empty((len(rows), 3 * RES * RES), np.uint8)
        which = np.searchsorted(starts, rows, side="right") - 1
        for b in np.unique(which):
            sel = which == b
            out[sel] = datas[b][rows[sel] - starts[b]]
        return out.reshape(-1, 3, RES, RES)

    y = torch.from_numpy(np.concatenate(labels)) if labels else torch.zeros(0, dtype=torch.int64)
    return StreamingImages(read, int(starts[-1]), y, len(wnids), f"ImageNet 64x64 npz batches ({root})",
                           sorted_wnids)


# --------------------------------------------------------------------------------------------------
# Class-folder tree


def adm_resize(im: Image.Image, size: int = RES) -> np.ndarray:
    """ADM's `center_crop_arr`: box-halve while the short side >= 2 size, bicubic to short side `size`, centre
    crop."""
    while min(im.size) >= 2 * size:
        im = im.resize(tuple(x // 2 for x in im.size), resample=Image.BOX)
    scale = size / min(im.size)
    im = im.resize(tuple(round(x * scale) for x in im.size), resample=Image.BICUBIC)
    a = np.asarray(im)
    top, left = (a.shape[0] - size) // 2, (a.shape[1] - size) // 2
    return a[top:top + size, left:left + size]


def _decode(path: str) -> np.ndarray:
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            a = np.asarray(im) if im.size == (RES, RES) else adm_resize(im)
    except DECODE_ERRORS as err:
        raise UserError(f"cannot read image {path} ({err}); remove or replace the file") from None
    return a.transpose(2, 0, 1)


def load_class_folders(root: Path, workers: int | None = None) -> StreamingImages:
    """Images under `root/<class>/`, classes in sorted order; decoded (and resized to 64x64) on demand."""
    classes = sorted(d.name for d in os.scandir(root) if d.is_dir() and not d.name.startswith("."))
    files, labels = [], []
    for k, c in enumerate(classes):
        names = sorted(e.name for e in os.scandir(root / c) if e.is_file()
                       and e.name.lower().endswith(IMAGE_EXTS))
        files += [str(root / c / n) for n in names]
        labels += [k] * len(names)
    if not files:
        raise UserError(f"no images in class folders under {root} ({', '.join(IMAGE_EXTS)} in "
                        f"{root}/<class>/); put the data there, or the downsampled batches ({BATCH_GLOB} and "
                        f"{CLASS_MAP})")
    pool_size = workers or min(16, os.cpu_count() or 1)

    def read(rows: np.ndarray) -> np.ndarray:
        with ThreadPoolExecutor(pool_size) as pool:
            return np.stack(list(pool.map(_decode, [files[i] for i in rows]))) if len(rows) else \
                np.empty((0, 3, RES, RES), np.uint8)

    ds = StreamingImages(read, len(files), torch.tensor(labels, dtype=torch.int64), len(classes),
                         f"ImageNet class folders ({root})", classes)
    ds.items = files
    return ds


def load_imagenet64(path: str | os.PathLike | None = None) -> StreamingImages:
    """The ImageNet-64 training set at `path` (default `default_imagenet64_dir()`): npz batches or class
    folders."""
    root = Path(path).expanduser() if path is not None else default_imagenet64_dir()
    if root.is_dir() and any(root.glob(BATCH_GLOB)):
        return load_npz_batches(root)
    if root.is_dir() and any(d.is_dir() and not d.name.startswith(".") for d in root.iterdir()):
        return load_class_folders(root)
    raise UserError(f"no ImageNet 64x64 data at {root}: put the ten {BATCH_GLOB} files of "
                    f"Imagenet64_train_npz ({NPZ_URL}) and {CLASS_MAP} ({MAP_URL}) there, or ILSVRC2012 "
                    "train/<synset>/*.JPEG class folders, or set data.path / `data`")
