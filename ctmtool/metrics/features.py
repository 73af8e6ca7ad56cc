"""Feature networks for Frechet distances: clean-fid's Inception (its "clean" mode) or any TorchScript file.

Inception (Parmar et al. 2022, clean-fid): the TorchScript `inception-2015-12-05.pt` (the TF-FID Inception
of Heusel et al. 2017, as exported by NVIDIA for StyleGAN2-ADA), looked up in the ctmtool cache
(`--cache-dir`, `$CTMTOOL_CACHE`, else ~/.cache/ctmtool) and then where clean-fid keeps it (/tmp, or
`$CTMTOOL_CLEANFID_DIR`). Images are resized to 299x299 by clean-fid's own PIL-bicubic resizer. If the
file is missing it is downloaded (unless offline); it is never replaced by other weights.

Any other TorchScript file (`--features FILE.pt`) maps uint8/float NCHW in [0, 255] to (B, D) features and
is fed the images at their own resolution, unresized.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import numpy as np
import torch

from ctmtool.errors import UserError

INCEPTION_FILE = "inception-2015-12-05.pt"
# The URL clean-fid 0.1.35 downloads from (cleanfid/downloads_helper.py, `inception_url`).
INCEPTION_URL = ("https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt")
# Its sha256 could not be established offline (no copy of the file here). Until it is filled in, a
# downloaded file is checked by loading it as TorchScript and running it (2048 features per image).
INCEPTION_SHA256: str | None = None
INCEPTION_SIZE = 299
INCEPTION_DIM = 2048
SPATIAL_CHANNELS = 7  # sFID: the first 7 channels of the spatial map (ADM's evaluator: mixed_6/conv[..., :7])
SPATIAL_BLOCK = "mixed_6"  # the Inception block whose `conv` branch gives the spatial features

ProgressFactory = Callable[..., AbstractContextManager[Callable[..., None]]]  # like Reporter.progress


def cache_dir(explicit: str | os.PathLike | None = None) -> Path:
    """ctmtool's cache: `explicit`, else $CTMTOOL_CACHE, else ~/.cache/ctmtool."""
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get("CTMTOOL_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ctmtool"


def cleanfid_dir() -> Path:
    """Where clean-fid itself keeps the Inception file: /tmp (hard-coded there), or $CTMTOOL_CLEANFID_DIR."""
    return Path(os.environ.get("CTMTOOL_CLEANFID_DIR") or "/tmp")


def offline() -> bool:
    """True when $CTMTOOL_OFFLINE is set to a non-empty value other than 0: never download."""
    return os.environ.get("CTMTOOL_OFFLINE", "") not in ("", "0")


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _jit_load(path: Path, device: torch.device) -> torch.jit.ScriptModule:
    """torch.jit.load with its deprecation warning silenced and failures as UserError."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            net = torch.jit.load(str(path), map_location=device)
    except (RuntimeError, ValueError, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"cannot load feature network {path} as TorchScript ({first}); give a file saved "
                        "with torch.jit.save, or 'inception'") from None
    return net.eval()


class FeatureExtractor:
    """A TorchScript network mapping uint8 NCHW images in [0, 255] to (B, D) features, fed unresized."""

    mode = "native"  # images reach the network at their own resolution

    def __init__(self, path: str | os.PathLike, device: torch.device | str = "cpu", name: str | None = None):
        self.path = Path(path)
        self.device = torch.device(device)
        self.name = name or self.path.stem
        self.sha256 = sha256_file(self.path)
        self.net = _jit_load(self.path, self.device)

    @property
    def short_sha(self) -> str:
        return self.sha256[:12]

    def to(self, device: torch.device | str) -> FeatureExtractor:
        self.device = torch.device(device)
        self.net = self.net.to(self.device)
        return self

    def describe(self) -> dict:
        return {"features": self.name, "features_sha256": self.short_sha, "mode": self.mode}

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    # Heads beyond the pooled features, for `ctmtool metrics`: class logits (Inception Score) and a spatial
    # map (sFID). A TorchScript file provides them as methods `classify(x) -> (B, K)` and
    # `spatial(x) -> (B, C, H, W)`; the first SPATIAL_CHANNELS channels of the map are used, flattened.
    def has_head(self, head: str) -> bool:
        return head == "pool" or hasattr(self.net, {"logits": "classify", "spatial": "spatial"}[head])

    def _heads(self, x: torch.Tensor, heads: tuple[str, ...]) -> dict[str, torch.Tensor]:
        out = {}
        if "pool" in heads:
            out["pool"] = self._forward(x)
        if "logits" in heads:
            out["logits"] = self.net.classify(x)
        if "spatial" in heads:
            out["spatial"] = self.net.spatial(x)[:, :SPATIAL_CHANNELS]
        return out

    def missing_head(self, head: str) -> str:
        """Why `head` is not available: a sentence for an error message."""
        method = {"logits": "classify(x) -> (B, classes) logits",
                  "spatial": "spatial(x) -> (B, C, H, W) maps"}[head]
        return f"feature network {self.path.name} has no method {method}"

    def _run(self, fn, images: torch.Tensor):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"feature networks take uint8 NCHW images, got {images.dtype} "
                             f"{tuple(images.shape)}")
        try:
            return fn(images.to(self.device, non_blocking=True))
        except (RuntimeError, ValueError, TypeError) as err:  # TorchScript shape errors are RuntimeErrors
            last = [ln for ln in str(err).strip().splitlines() if ln.strip()][-1:] or [type(err).__name__]
            _, c, h, w = images.shape
            raise UserError(f"feature network {self.path.name} failed on {c}x{h}x{w} (CxHxW) images: "
                            f"{last[0].strip()}; give images of the size and channel count it was made "
                            "for") from None

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, C, H, W) -> float32 (B, D) on self.device."""
        f = self._run(self._forward, images)
        return f.reshape(f.shape[0], -1).float()

    @torch.no_grad()
    def heads(self, images: torch.Tensor, heads: tuple[str, ...] = ("pool",)) -> dict[str, torch.Tensor]:
        """uint8 (B, C, H, W) -> {head: float32 (B, D_head)} for heads among pool, logits, spatial."""
        for h in heads:
            if not self.has_head(h):
                raise UserError(self.missing_head(h))
        out = self._run(lambda x: self._heads(x, heads), images)
        return {k: v.reshape(v.shape[0], -1).float() for k, v in out.items()}


class InceptionFeatures(FeatureExtractor):
    """clean-fid's "clean" Inception features: PIL bicubic resize of uint8 images to 299x299 (clean-fid's
    `make_resizer("PIL", False, "bicubic", (299, 299))`), then pool3 features of inception-2015-12-05.pt."""

    mode = "clean"

    def __init__(self, path: str | os.PathLike, device: torch.device | str = "cpu",
                 workers: int | None = None):
        super().__init__(path, device, name="inception")
        if not hasattr(self.net, "layers"):
            raise UserError(f"{self.path} loads as TorchScript but is not clean-fid's Inception file (no "
                            f"`layers`); download {INCEPTION_URL} again")
        from cleanfid.resize import make_resizer  # imports torchvision: only when Inception is used

        self.resize = make_resizer("PIL", False, "bicubic", (INCEPTION_SIZE, INCEPTION_SIZE))
        self.workers = workers or min(16, os.cpu_count() or 1)

    def _resized(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 NCHW (grey made RGB) -> float32 NCHW 299x299 in [0, 255], resized on the CPU by PIL."""
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        if images.shape[1] != 3:
            raise UserError(f"Inception needs RGB or grey images, got {images.shape[1]} channels")
        arrays = images.permute(0, 2, 3, 1).cpu().numpy()
        with ThreadPoolExecutor(self.workers) as pool:  # PIL releases the GIL while resampling
            out = list(pool.map(self.resize, arrays))
        return torch.from_numpy(np.stack(out).transpose(0, 3, 1, 2).copy())

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._resized(x).to(self.device, non_blocking=True)
        return self.net.layers.forward((x - 128) / 128).reshape(x.shape[0], INCEPTION_DIM)

    def has_head(self, head: str) -> bool:
        if head == "logits":
            return hasattr(self.net, "output")
        if head == "spatial":
            return hasattr(getattr(self.net.layers, SPATIAL_BLOCK, None), "conv")
        return head == "pool"

    def missing_head(self, head: str) -> str:
        what = ("its `output` layer (logits)" if head == "logits"
                else f"layer {SPATIAL_BLOCK} (spatial features)")
        return (f"{self.path} has no {what}; it is not the TF-FID Inception file {INCEPTION_FILE} "
                f"({INCEPTION_URL})")

    def _heads(self, x: torch.Tensor, heads: tuple[str, ...]) -> dict[str, torch.Tensor]:
        """One pass through the Inception layers: pool3 features, the 1008 logits without output bias (as
        torch-fidelity's `logits_unbiased` and StyleGAN's IS), and mixed_6's `conv` branch (ADM's sFID)."""
        x = self._resized(x).to(self.device, non_blocking=True)
        h = (x - 128) / 128
        out = {}
        for name, layer in self.net.layers.named_children():
            if name == SPATIAL_BLOCK and "spatial" in heads:
                out["spatial"] = layer.conv(h)[:, :SPATIAL_CHANNELS]
            h = layer(h)
        pool = h.reshape(x.shape[0], INCEPTION_DIM)
        if "pool" in heads:
            out["pool"] = pool
        if "logits" in heads:
            out["logits"] = pool @ self.net.output.weight.T
        return out


def find_inception(cache: str | os.PathLike | None = None, download: bool | None = None,
                   progress: ProgressFactory | None = None) -> Path:
    """The Inception file: in the ctmtool cache, else clean-fid's folder, else downloaded into the cache."""
    target = cache_dir(cache) / INCEPTION_FILE
    candidates = [target, cleanfid_dir() / INCEPTION_FILE]
    for c in candidates:
        if c.is_file():
            return c
    where = " or ".join(str(c) for c in candidates)
    fix = (f"download it on a machine with internet access from {INCEPTION_URL} and copy it to {target} "
           "(or set $CTMTOOL_CACHE / `cache_dir` to its folder), or use `features` FILE.pt with another "
           "TorchScript feature network")
    if download is False or (download is None and offline()):
        raise UserError(f"Inception weights {INCEPTION_FILE} not found at {where}, and downloads are off "
                        f"($CTMTOOL_OFFLINE); {fix}")
    try:
        download_file(INCEPTION_URL, target, progress)
    except (urllib.error.URLError, OSError, TimeoutError) as err:
        reason = getattr(err, "reason", None) or err
        raise UserError(f"Inception weights {INCEPTION_FILE} not found at {where}, and downloading them "
                        f"failed ({reason}); {fix}") from None
    _verify_inception(target)
    return target


def _verify_inception(path: Path) -> None:
    """Check a downloaded Inception file: its sha256 when known, else that it runs and gives 2048 features."""
    if INCEPTION_SHA256 is not None:
        got = sha256_file(path)
        if got != INCEPTION_SHA256:
            path.unlink(missing_ok=True)
            raise UserError(f"downloaded {path} has sha256 {got}, expected {INCEPTION_SHA256}; removed it, "
                            "try again")
        return
    try:
        net = _jit_load(path, torch.device("cpu"))
        with torch.no_grad():
            f = net.layers.forward(torch.zeros(1, 3, INCEPTION_SIZE, INCEPTION_SIZE))
        ok = f.numel() == INCEPTION_DIM
    except (UserError, RuntimeError, AttributeError):
        ok = False
    if not ok:
        path.unlink(missing_ok=True)
        raise UserError(f"downloaded {path} is not a working Inception TorchScript file; removed it, try "
                        "again")


def download_file(url: str, dest: Path, progress: ProgressFactory | None = None, timeout: float = 60) -> Path:
    """Download `url` to `dest` through a temporary file in the same folder (os.replace at the end)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.part")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(tmp, "wb") as f:
            total = int(resp.headers.get("Content-Length") or 0)
            bar = (progress(total / 2**20 if total else 0, f"downloading {dest.name}", "MiB") if progress
                   else nullcontext(None))
            with bar as advance:
                while block := resp.read(1 << 20):
                    f.write(block)
                    if advance is not None:
                        advance(len(block) / 2**20)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


class LegacyInceptionFeatures(FeatureExtractor):
    """clean-fid's "legacy_tensorflow" Inception: uint8 images at their own size into `net(x,
    return_features=True)`."""

    mode = "legacy_tensorflow"

    def __init__(self, path: str | os.PathLike, device: torch.device | str = "cpu"):
        super().__init__(path, device, name="inception")
        if not hasattr(self.net, "layers"):
            raise UserError(f"{self.path} loads as TorchScript but is not the TF-FID Inception file (no "
                            "`layers`)")

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self._rgb(x), return_features=True).reshape(x.shape[0], INCEPTION_DIM)

    @staticmethod
    def _rgb(x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[1] != 3:
            raise UserError(f"Inception needs RGB or grey images, got {x.shape[1]} channels")
        return x.float()

    def has_head(self, head: str) -> bool:
        return head in ("pool", "logits")

    def missing_head(self, head: str) -> str:
        return ("sFID's spatial features are taken in the clean mode only: use `features` inception "
                "(inception-legacy resizes inside the network, where its mixed_6 map cannot be read)")

    def _heads(self, x: torch.Tensor, heads: tuple[str, ...]) -> dict[str, torch.Tensor]:
        out = {}
        if "pool" in heads:
            out["pool"] = self._forward(x)
        # StyleGAN2-ADA's IS: softmax without the output bias; log gives logits up to a constant
        if "logits" in heads:
            out["logits"] = self.net(self._rgb(x), no_output_bias=True).clamp_min(1e-30).log()
        return out


def make_extractor(features: str, device: torch.device | str = "cpu", cache: str | os.PathLike | None = None,
                   download: bool | None = None, progress: ProgressFactory | None = None) -> FeatureExtractor:
    """`features` is "inception" or the path of a TorchScript feature network file."""
    if features.lower() == "inception":
        return InceptionFeatures(find_inception(cache, download, progress), device)
    if features.lower() == "inception-legacy":  # clean-fid's legacy_tensorflow mode (published numbers)
        return LegacyInceptionFeatures(find_inception(cache, download, progress), device)
    path = Path(features).expanduser()
    if not path.is_file():
        raise UserError(f"feature network {features!r} is neither 'inception' nor an existing file; give the "
                        "path of a TorchScript feature network (e.g. fd_a.pt) as `features`")
    return FeatureExtractor(path, device)


__all__ = ["FeatureExtractor", "InceptionFeatures", "INCEPTION_FILE", "INCEPTION_URL", "cache_dir",
           "cleanfid_dir", "download_file", "find_inception", "make_extractor", "sha256_file"]
