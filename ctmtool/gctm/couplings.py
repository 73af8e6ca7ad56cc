"""Couplings q(x0, x1) between the target (data) side x0 and the source side x1 (GCTM, Kim et al. 2024b, Alg.
1).

A GCTM moves along x_t = (1 - t) x0 + t x1; the coupling decides which source goes with which target.
Every coupling offers `pair(x0, labels, generator) -> (x0, x1)` for a training batch and
`moments(sample) -> {var0, var1, cov01}`, the per-dimension second moments that `GCTMPrecond` takes.
Source noise (`source_noise`, GCTM's X1_eps_std: 0.05 for Edges->Shoes) is added to x1 after pairing.

Specs for `make_coupling` (GCTMConfig.coupling):

    independent            x1 ~ N(0, I), independent of x0: plain generation (GCTM's unconditional CIFAR-10)
    ot                     x1 ~ N(0, I), paired with x0 by minibatch Sinkhorn OT (reg = sinkhorn_reg)
    paired[:left|right]    the batch holds side-by-side [A|B] images; the named half is the source
                           (default left: pix2pix's A, e.g. the edges of edges2shoes), the other the target
    corrupt:<degradation>  x1 = degrade(x0), e.g. corrupt:sr4, corrupt:blur:2.0, corrupt:inpaint:0.25:noise
                           (grammar in ctmtool.gctm.degrade)
    toy:<name>             2-D: x1 drawn independently from another toy distribution (moons, checkerboard,
                           swissroll, gmm, gaussian)
    toy-ot:<name>          the same, paired with x0 by minibatch OT
    dataset                x1 drawn independently from another data set ([gctm.source], e.g. a folder of
                           images): unpaired image-to-image translation between two data sets
    dataset-ot             the same, paired with x0 by minibatch OT
    latent[:<sigma>]       x1 ~ N(mu_c, diag(s_c^2)) for an item of class c (GCTM's `latent` coupling, for
                           latent manipulation): mu_c the mean of the class's items, s_c their per-dimension
                           std, or the one number sigma for every class and dimension; needs labelled data
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from ctmtool.data.base import Dataset
from ctmtool.data.images import IMAGE_EXTS, decode_images
from ctmtool.data.toy import toy_points
from ctmtool.gctm.degrade import Degradation, SpecError, make_degradation, randn
from ctmtool.gctm.sinkhorn import ot_pairing

TOY_SOURCES = ("gaussian", "moons", "checkerboard", "swissroll", "gmm")


def batch_moments(x0: torch.Tensor, x1: torch.Tensor) -> dict[str, float]:
    """Per-dimension Var x0, Var x1 and Cov(x0, x1), each averaged over dimensions (unbiased estimates)."""
    a, b = x0.detach().flatten(1).double(), x1.detach().flatten(1).double()
    if a.shape != b.shape or a.shape[0] < 2:
        raise ValueError(f"moments need two matching batches of at least 2 items, got {tuple(a.shape)}, "
                         f"{tuple(b.shape)}")
    a, b = a - a.mean(0), b - b.mean(0)
    n = a.shape[0] - 1
    return {"var0": float(a.square().sum(0).mean() / n), "var1": float(b.square().sum(0).mean() / n),
            "cov01": float((a * b).sum(0).mean() / n)}


class Coupling:
    """Base: subclasses implement `_pair`; `pair` adds the source noise, `moments` estimates second
    moments."""

    def __init__(self, source_noise: float = 0.0):
        if source_noise < 0:
            raise ValueError(f"source_noise must be non-negative, got {source_noise}")
        self.source_noise = source_noise

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"

    def _pair(self, x0: torch.Tensor, labels, generator) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def source_state(self) -> dict[str, torch.Tensor]:
        """Tensors the trained model must carry to rebuild its source (the class Gaussians of `latent`)."""
        return {}

    def pair(self, x0: torch.Tensor, labels: torch.Tensor | None = None,
             generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(target x0, source x1) for a batch drawn from the data (GCTM Alg. 1)."""
        x0, x1 = self._pair(x0, labels, generator)
        if self.source_noise > 0:
            x1 = x1 + self.source_noise * randn(x1.shape, generator, x1.device, x1.dtype)
        return x0, x1

    @torch.no_grad()
    def moments(self, sample: torch.Tensor | Dataset, labels: torch.Tensor | None = None,
                generator: torch.Generator | None = None, n: int = 2048, batch: int = 256,
                device=None) -> dict[str, float]:
        """{var0, var1, cov01} for GCTMPrecond, from `n` random items of a Dataset or from a given data batch.

        Pairs are made `batch` items at a time, as in training: minibatch OT depends on the batch size
        (on CIFAR-like data, cov01 is 0.10 with batches of 128 and 0.13 with one batch of 1024).
        """
        if isinstance(sample, Dataset):
            where = generator.device if generator is not None else "cpu"
            idx = torch.randperm(len(sample), generator=generator, device=where)[:n].cpu()
            sample, labels = sample.get(idx, device)
        a, b = [], []
        for i in range(0, sample.shape[0], batch):
            y = None if labels is None else labels[i:i + batch]
            x0, x1 = self.pair(sample[i:i + batch], y, generator)
            a.append(x0)
            b.append(x1)
        return batch_moments(torch.cat(a), torch.cat(b))


class IndependentCoupling(Coupling):
    """x1 = scale * n, n ~ N(0, I) independent of x0: GCTM's unconditional generation (scale 1)."""

    def __init__(self,
        scale: float = 1.0,             # standard deviation of the Gaussian source
        source_noise: float = 0.0,      # extra Gaussian noise std on x1 (adds source_noise^2 to Var x1)
    ):
        super().__init__(source_noise)
        self.scale = scale

    def _pair(self, x0, labels, generator):
        return x0, self.scale * randn(x0.shape, generator, x0.device, x0.dtype)


class OTCoupling(IndependentCoupling):
    """Gaussian x1 paired with x0 by minibatch entropic OT (GCTM Alg. 1 and 3, reg 0.01; OT-CFM)."""

    def __init__(self,
        reg: float = 0.01,              # entropic regularisation, relative to the cost spread (sinkhorn.py)
        iters: int = 500,               # most Sinkhorn passes
        scale: float = 1.0,             # standard deviation of the Gaussian source
        source_noise: float = 0.0,      # extra Gaussian noise on x1 after pairing
        normalize: str = "spread",      # cost normalisation before Sinkhorn (sinkhorn.NORMALIZE)
    ):
        super().__init__(scale, source_noise)
        self.reg, self.iters, self.normalize = reg, iters, normalize

    def _pair(self, x0, labels, generator):
        x0, x1 = super()._pair(x0, labels, generator)
        return x0, ot_pairing(x0, x1, self.reg, generator, self.iters, normalize=self.normalize)


class CorruptCoupling(Coupling):
    """Restoration pairs: x1 = degrade(x0) (+ source noise), GCTM's supervised image restoration."""

    def __init__(self,
        degradation: str | Callable,    # a degrade.make_degradation spec or a callable (x, generator) -> x1
        source_noise: float = 0.0,      # Gaussian noise std added to the degraded image
    ):
        super().__init__(source_noise)
        self.degradation = make_degradation(degradation) if isinstance(degradation, str) else degradation

    def _pair(self, x0, labels, generator):
        with torch.no_grad():
            return x0, self.degradation(x0, generator=generator)


def split_side_by_side(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(left, right) halves of side-by-side pix2pix images (..., H, 2W): left is A, right is B."""
    w = images.shape[-1]
    if w % 2:
        raise ValueError(f"side-by-side images need an even width, got {w}")
    return images[..., : w // 2], images[..., w // 2:]


class PairedCoupling(Coupling):
    """Supervised pairs stored side by side (pix2pix layout): one half is the source, the other the target.

    The GCTM reference takes the left half (A) as the source x1 and the right half (B) as the target x0:
    edges -> shoes for edges2shoes, night -> day for night2day. Facades stores the photo on the left and
    the label map on the right, so labels -> photo needs source_side='right'.
    """

    def __init__(self,
        source_side: str = "left",      # which half holds the source x1
        source_noise: float = 0.0,      # Gaussian noise std added to the source half
    ):
        super().__init__(source_noise)
        if source_side not in ("left", "right"):
            raise ValueError(f"source_side must be 'left' or 'right', got {source_side!r}")
        self.source_side = source_side

    def _pair(self, x0, labels, generator):
        left, right = split_side_by_side(x0)
        return (right, left) if self.source_side == "left" else (left, right)


class DistributionCoupling(Coupling):
    """2-D translation: x1 from another distribution, independent or paired by minibatch OT."""

    def __init__(self,
        source_sampler: Callable[[int, torch.Generator | None], torch.Tensor],  # (n, generator) -> (n, D)
        ot: bool = False,               # pair by minibatch Sinkhorn OT instead of independently
        reg: float = 0.01,              # entropic regularisation for ot
        iters: int = 500,               # most Sinkhorn passes
        source_noise: float = 0.0,      # Gaussian noise std added to x1 after pairing
        name: str = "custom",           # what the sampler draws, for messages
        normalize: str = "spread",      # cost normalisation before Sinkhorn (sinkhorn.NORMALIZE)
    ):
        super().__init__(source_noise)
        self.name = name
        self._sampler, self.ot, self.reg, self.iters, self.normalize = (source_sampler, ot, reg, iters,
                                                                        normalize)

    def _pair(self, x0, labels, generator):
        x1 = self._sampler(x0.shape[0], generator).to(device=x0.device, dtype=x0.dtype).reshape(x0.shape)
        return (x0, ot_pairing(x0, x1, self.reg, generator, self.iters, normalize=self.normalize) if self.ot
                else x1)


MIN_CLASS_STD = 1e-3  # floor of the per-dimension class stds of `latent` (images in [-1, 1])


STATS_CHUNK = 4096  # items per chunk of the class statistics (CIFAR-10 in float64 at once would be 1.2 GB)


@torch.no_grad()
def class_statistics(values: torch.Tensor, labels: torch.Tensor, num_classes: int | None = None,
                     sigma: float | None = None,
                     min_std: float = MIN_CLASS_STD) -> tuple[torch.Tensor, torch.Tensor]:
    """(means, stds), each (K, *item shape): the mean of each class's items and their per-dimension standard
    deviation (unbiased, at least `min_std`: a pixel constant over a class, such as a digit's border, keeps a
    proper Gaussian), or `sigma` everywhere when given; in float64, STATS_CHUNK items at a time (two passes),
    returned as float32."""
    labels = labels.reshape(-1).long().cpu()
    if values.shape[0] != labels.shape[0]:
        raise ValueError(f"{values.shape[0]} items but {labels.shape[0]} labels")
    n = values.shape[0]

    def chunks():
        for i in range(0, n, STATS_CHUNK):
            yield values[i:i + STATS_CHUNK], labels[i:i + STATS_CHUNK]

    k = int(labels.max()) + 1 if num_classes is None else num_classes
    return _class_statistics(chunks, k, tuple(values.shape[1:]), sigma, min_std)


def _class_statistics(chunks: Callable, k: int, shape: tuple[int, ...], sigma: float | None,
                      min_std: float) -> tuple[torch.Tensor, torch.Tensor]:
    """class_statistics over `chunks()` -> (x, labels) pieces (called once, or twice for the stds)."""
    d = math.prod(shape)
    counts = torch.zeros(k, dtype=torch.long)
    sums = torch.zeros(k, d, dtype=torch.float64)
    for x, y in chunks():
        y = y.reshape(-1).long().cpu()
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= k):
            raise ValueError(f"labels must lie in 0..{k - 1}")
        counts += torch.bincount(y, minlength=k)
        sums.index_add_(0, y, x.detach().cpu().double().reshape(len(y), d))
    few = [c for c in range(k) if counts[c] < (1 if sigma is not None else 2)]
    if few:
        raise ValueError(f"class(es) {few} have too few items for a class Gaussian (each class needs "
                         f"{1 if sigma is not None else 2})")
    means = sums / counts[:, None]
    if sigma is not None:
        stds = torch.full_like(means, float(sigma))
    else:
        sq = torch.zeros_like(means)
        for x, y in chunks():
            y = y.reshape(-1).long().cpu()
            sq.index_add_(0, y, (x.detach().cpu().double().reshape(len(y), d) - means[y]).square())
        stds = (sq / (counts[:, None] - 1)).sqrt().clamp_min(min_std)
    return means.float().reshape(k, *shape), stds.float().reshape(k, *shape)


class LatentCoupling(Coupling):
    """GCTM's `latent` coupling (1202kbs/GCTM couplings.py 118-130): an item x0 of class c is paired with
    x1 = mu_c + s_c * n, n ~ N(0, I), so each class has its own Gaussian region of the source space and an
    unconditional network learns class -> class; moving a latent from one class's Gaussian to another's is
    latent manipulation (`ctmtool.core.translate.manipulate`)."""

    def __init__(self,
        means: torch.Tensor,            # (K, *item shape): the class means mu_c
        stds: torch.Tensor,             # (K, *item shape) or broadcastable: the class stds s_c (> 0)
        source_noise: float = 0.0,      # extra Gaussian noise std on x1 after pairing
    ):
        super().__init__(source_noise)
        if means.shape[0] != stds.shape[0] or means.shape[0] < 1:
            raise ValueError(f"means {tuple(means.shape)} and stds {tuple(stds.shape)} must give the same "
                             "classes")
        if not (stds > 0).all():
            raise ValueError("class stds must be positive")
        self.classes = int(means.shape[0])
        self._means, self._stds = means.float(), stds.float().expand_as(means).contiguous()

    @classmethod
    def from_dataset(cls, ds: Dataset, sigma: float | None = None,
                     source_noise: float = 0.0) -> LatentCoupling:
        """Class statistics of all of `ds`'s items (floats, images in [-1, 1]), as the training data."""
        if ds.labels is None or len(ds) == 0:
            raise ValueError(f"{ds.name} has no labels")
        n = len(ds)

        def chunks():  # float items (images in [-1, 1]) a chunk at a time, as class_statistics takes them
            for i in range(0, n, STATS_CHUNK):
                yield ds.get(torch.arange(i, min(n, i + STATS_CHUNK)))

        k = max(ds.num_classes or 0, int(ds.labels.max()) + 1)
        return cls(*_class_statistics(chunks, k, ds.shape, sigma, MIN_CLASS_STD), source_noise)

    def source_state(self) -> dict[str, torch.Tensor]:
        return {"source_means": self._means, "source_stds": self._stds}

    def _pair(self, x0, labels, generator):
        if labels is None:
            raise ValueError("the latent coupling pairs each item with its class's Gaussian: it needs labels")
        y = labels.reshape(-1).long().to(self._means.device)
        if int(y.min()) < 0 or int(y.max()) >= self.classes:
            raise ValueError(f"labels must lie in 0..{self.classes - 1}")
        mu, sd = self._means[y].to(x0.device, x0.dtype), self._stds[y].to(x0.device, x0.dtype)
        return x0, mu + sd * randn(x0.shape, generator, x0.device, x0.dtype)


def pool_sampler(pool: torch.Tensor) -> Callable[[int, torch.Generator | None], torch.Tensor]:
    """A sampler drawing rows of `pool` uniformly with replacement."""
    def sample(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        idx = torch.randint(0, pool.shape[0], (n,), generator=generator,
                            device=generator.device if generator is not None else "cpu")
        return pool[idx.to(pool.device)]
    return sample


def toy_sampler(name: str, n: int = 20000, seed: int = 1, gmm=None) -> Callable:
    """A sampler over a fixed pool of `n` points of a 2-D toy distribution ('gaussian' draws fresh N(0,
    I))."""
    if name == "gaussian":
        return lambda k, generator=None: randn((k, 2), generator, "cpu")
    if name not in TOY_SOURCES:
        raise SpecError(f"unknown toy source {name!r}; choose one of {', '.join(TOY_SOURCES)}")
    return pool_sampler(toy_points(name, n, seed, gmm).values)


# --------------------------------------------------------------------------------------------------
# Paired image folders


def resize_uint8(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 NCHW images resized to size x size: antialiased bilinear (as torchvision's Resize), rounded."""
    if images.shape[-2:] == (size, size):
        return images
    x = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8)


def _side_by_side(a: torch.Tensor, b: torch.Tensor, size: int | None) -> torch.Tensor:
    """Concatenate uint8 halves along the width, resizing each apart (no blur across the seam)."""
    if size:
        a, b = resize_uint8(a, size), resize_uint8(b, size)
    if a.shape[1] != b.shape[1]:  # a grey half next to a colour one: replicate the grey channel
        c = max(a.shape[1], b.shape[1])
        a, b = a.expand(-1, c, -1, -1), b.expand(-1, c, -1, -1)
    if a.shape[-2:] != b.shape[-2:]:
        raise SpecError(f"paired halves differ in size ({tuple(a.shape[-2:])} vs {tuple(b.shape[-2:])}); "
                        "pass size= to resize both")
    return torch.cat([a, b], dim=-1).contiguous()


def _image_files(folder: Path) -> list[Path]:
    """Image files under `folder` (recursive, hidden entries skipped), sorted by relative path."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTS
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _decode(files: list[Path], size: int | None, split: bool, chunk: int = 2048) -> torch.Tensor:
    """Decode `files` a chunk at a time, resizing as it goes, so full-size images never all sit in memory.

    split=True: each file is a side-by-side pair, resized half by half; else each file is resized whole.
    """
    parts = []
    for i in range(0, len(files), chunk):
        v = torch.from_numpy(decode_images([(str(f), str(f), None) for f in files[i:i + chunk]]))
        if split:
            if v.shape[-1] != 2 * v.shape[-2]:
                raise SpecError(f"{files[i]}: {v.shape[-1]}x{v.shape[-2]} images are not side-by-side pairs "
                                "(width twice the height); use A/ and B/ sub-folders for separate files")
            parts.append(_side_by_side(*split_side_by_side(v), size))
        else:
            parts.append(resize_uint8(v, size) if size else v)
    c = max(p.shape[1] for p in parts)
    return torch.cat([p.expand(-1, c, -1, -1) for p in parts])


def load_paired(path: str | Path, size: int | None = None) -> Dataset:
    """A Dataset of side-by-side [A|B] uint8 images for PairedCoupling, from a folder in either layout:

    - A/ and B/ sub-folders of images, matched by file name (without extension), or
    - pix2pix side-by-side files, e.g. edges2shoes/train (49,825 files of 256 x 512).
    `size` resizes each half to size x size while decoding (GCTM trains edges2shoes at 64: 1.2 GB).
    """
    root = Path(path)
    if not root.is_dir():
        raise SpecError(f"paired data {root} is not a folder; give A/ and B/ sub-folders or side-by-side "
                        "images")
    if (root / "A").is_dir() and (root / "B").is_dir():
        b_files = {p.stem: p for p in _image_files(root / "B")}
        a_files = [p for p in _image_files(root / "A") if p.stem in b_files]
        if not a_files:
            raise SpecError(f"{root}: no image in A/ has a partner of the same name in B/")
        values = _side_by_side(_decode(a_files, size, False),
                               _decode([b_files[p.stem] for p in a_files], size, False), None)
        return Dataset(values, name=f"paired:{root}", items=[str(p) for p in a_files])
    files = _image_files(root)
    if not files:
        raise SpecError(f"{root}: no images ({', '.join(IMAGE_EXTS)}) and no A/ and B/ sub-folders")
    return Dataset(_decode(files, size, True), name=f"paired:{root}", items=[str(p) for p in files])


# --------------------------------------------------------------------------------------------------
# Spec parser

COUPLINGS = ("independent", "ot", "paired[:left|right]", "corrupt:<degradation>", "toy:<name>",
             "toy-ot:<name>", "dataset", "dataset-ot", "latent[:<sigma>]")
DATASET_SOURCES = ("dataset", "dataset-ot")  # couplings whose source x1 comes from [gctm.source]


def make_coupling(spec: str,
    source_noise: float = 0.0,          # GCTMConfig.source_noise
    sinkhorn_reg: float = 0.01,         # GCTMConfig.sinkhorn_reg (ot, toy-ot)
    sinkhorn_iters: int = 500,          # most Sinkhorn passes (ot, toy-ot)
    gmm=None,                           # GMMConfig for a toy:gmm source
    sinkhorn_normalize: str = "spread", # GCTMConfig.sinkhorn_normalize (ot, toy-ot)
    source: Dataset | None = None,      # the source data set of dataset / dataset-ot
    data: Dataset | None = None,        # the labelled target data whose class statistics `latent` takes
) -> Coupling:
    """Parse a coupling spec (module docstring) into a Coupling; unknown specs raise SpecError."""
    kind, _, arg = spec.strip().partition(":")
    valid = "valid couplings: " + ", ".join(COUPLINGS)
    if kind in ("independent", "ot", *DATASET_SOURCES) and arg:
        raise SpecError(f"coupling {spec!r}: {kind!r} takes no argument; {valid}")
    if kind == "independent":
        return IndependentCoupling(source_noise=source_noise)
    if kind == "ot":
        return OTCoupling(sinkhorn_reg, sinkhorn_iters, source_noise=source_noise,
                          normalize=sinkhorn_normalize)
    if kind == "paired":
        side = arg or "left"
        if side not in ("left", "right"):
            raise SpecError(f"coupling {spec!r}: the source side must be 'left' or 'right'; {valid}")
        return PairedCoupling(side, source_noise)
    if kind == "corrupt":
        if not arg:
            raise SpecError(f"coupling {spec!r} names no degradation, e.g. corrupt:sr4; {valid}")
        return CorruptCoupling(make_degradation(arg), source_noise)
    if kind in ("toy", "toy-ot"):
        if not arg:
            raise SpecError(f"coupling {spec!r} names no toy source ({', '.join(TOY_SOURCES)}); {valid}")
        return DistributionCoupling(toy_sampler(arg, gmm=gmm), ot=kind == "toy-ot", reg=sinkhorn_reg,
                                    iters=sinkhorn_iters, source_noise=source_noise, name=arg,
                                    normalize=sinkhorn_normalize)
    if kind in DATASET_SOURCES:
        if source is None:
            raise SpecError(f"coupling {spec!r} draws the source from another data set: give a [gctm.source] "
                            "table (as [data], e.g. source = \"folder\", path = \"horses/\")")
        return DistributionCoupling(dataset_sampler(source), ot=kind == "dataset-ot", reg=sinkhorn_reg,
                                    iters=sinkhorn_iters, source_noise=source_noise, name=source.name,
                                    normalize=sinkhorn_normalize)
    if kind == "latent":
        sigma = _latent_sigma(spec, arg, valid)
        if data is None or data.labels is None:
            what = "the data" if data is None else data.name
            raise SpecError(f"coupling {spec!r} pairs each item with a Gaussian around its class's mean, "
                            f"but {what} has no labels; use labelled data (class sub-folders, digits, "
                            "cifar10) or another coupling")
        try:
            return LatentCoupling.from_dataset(data, sigma, source_noise)
        except ValueError as err:
            raise SpecError(f"coupling {spec!r}: {err}") from None
    raise SpecError(f"unknown coupling {spec!r}; {valid}")


def _latent_sigma(spec: str, arg: str, valid: str) -> float | None:
    """The one std of `latent:<sigma>`, or None for the per-class per-dimension stds of `latent`."""
    if not arg:
        return None
    try:
        sigma = float(arg)
    except ValueError:
        sigma = float("nan")
    if not sigma > 0 or sigma == float("inf"):
        raise SpecError(f"coupling {spec!r}: sigma must be a positive number, e.g. latent:0.5; {valid}")
    return sigma


def dataset_sampler(ds: Dataset) -> Callable[[int, torch.Generator | None], torch.Tensor]:
    """Items of `ds` uniformly with replacement, as floats (images in [-1, 1])."""
    def sample(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        idx = torch.randint(0, len(ds), (n,), generator=generator,
                            device=generator.device if generator is not None else "cpu")
        return ds.get(idx.cpu())[0]
    return sample


def coupling_from_config(cfg, gmm=None, source: Dataset | None = None,
                         data: Dataset | None = None) -> Coupling:
    """The Coupling a preset's [gctm] section (GCTMConfig) describes (`source`: the loaded [gctm.source];
    `data`: the target data, whose class statistics the `latent` coupling takes)."""
    return make_coupling(cfg.coupling, cfg.source_noise, cfg.sinkhorn_reg, cfg.sinkhorn_iters, gmm=gmm,
                         sinkhorn_normalize=cfg.sinkhorn_normalize, source=source, data=data)


GAUSSIAN_SOURCES = ("independent", "ot")  # couplings whose source x1 is N(0, I) noise


def coupling_kind(spec: str) -> str:
    """The kind of a coupling spec: independent, ot, paired, corrupt, toy, toy-ot, dataset, dataset-ot or
    latent."""
    return spec.strip().partition(":")[0]


def item_shape(spec: str, data_shape: tuple[int, ...]) -> tuple[int, ...]:
    """Shape of one x0 (and x1) for a coupling spec, given the stored item shape (paired: half the width)."""
    if spec.strip().partition(":")[0] == "paired":
        *lead, w = data_shape
        return (*lead, w // 2)
    return tuple(data_shape)


__all__ = ["Coupling", "IndependentCoupling", "OTCoupling", "CorruptCoupling", "PairedCoupling",
           "DistributionCoupling", "LatentCoupling", "Degradation", "class_statistics", "batch_moments",
           "split_side_by_side", "load_paired",
           "make_coupling", "coupling_from_config", "toy_sampler", "pool_sampler", "item_shape"]
