"""Per-image noise sources for sampling: `make_noise(kind, seeds, shape, device, dtype)`.

Both kinds keep the property that image i's noise depends only on its own seed (not on the batch it is
drawn in, its position, the batch size or the device):
- "edm": one CPU `torch.Generator` per image (`sampling.ImageNoise`); the first draw equals the latents of
  NVlabs/edm `generate.py` for the same seeds. Costs host time per image, then a copy to the device.
- "philox": counter-based Philox4x32-10 keyed by (seed, element index), computed on the device (a Triton
  kernel on CUDA, the PyTorch reference elsewhere; same integers everywhere). A different stream from "edm".
The interface: `noise()` -> next standard-normal draw (B, *shape); `noise.integers(high)` -> one int per
image.
"""

from __future__ import annotations

import torch

from ctmtool.kernels.philox import philox_integers, philox_normal

NOISE_KINDS = ("philox", "edm")


class ImageNoise:
    """One normal stream per image, seeded by the image's own seed: images do not depend on the batch
    they are drawn in, the batch size or the device (draws are made on the CPU, then moved)."""

    def __init__(self,
        seeds: list[int] | torch.Tensor,   # one seed per image in the batch
        shape: tuple[int, ...],            # shape of one item
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        self.gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
        self.shape, self.device, self.dtype = tuple(shape), device, dtype

    def __call__(self) -> torch.Tensor:
        z = torch.stack([torch.randn(self.shape, generator=g) for g in self.gens])
        return z.to(device=self.device, dtype=self.dtype)

    def integers(self, high: int) -> torch.Tensor:
        """One integer in [0, high) per image (e.g. a class label), from the same streams."""
        return torch.stack([torch.randint(high, (), generator=g) for g in self.gens]).to(self.device)


class GeneratorNoise:
    """A batch drawn from one caller-given `torch.Generator` (k-diffusion style `generator=`): reproducible
    for that generator's state, but, unlike the per-image streams, dependent on the batch size."""

    def __init__(self, generator: torch.Generator, n: int, shape: tuple[int, ...],
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        self.generator, self.n, self.shape, self.device, self.dtype = (generator, n, tuple(shape), device,
                                                                       dtype)

    def __call__(self) -> torch.Tensor:
        z = torch.randn((self.n, *self.shape), generator=self.generator, device=self.generator.device)
        return z.to(device=self.device, dtype=self.dtype)

    def integers(self, high: int) -> torch.Tensor:
        return torch.randint(high, (self.n,), generator=self.generator,
                             device=self.generator.device).to(self.device)


def _use_triton(device: torch.device) -> bool:
    if device.type != "cuda":
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


class PhiloxNoise:
    """Per-image Philox4x32-10 streams: draw d of image b is philox_normal(seed_b, draw=d) (Salmon et al.
    2011)."""

    def __init__(self,
        seeds: list[int] | torch.Tensor,   # one seed per image in the batch (64-bit)
        shape: tuple[int, ...],            # shape of one item
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        backend: str = "auto",             # auto (Triton on CUDA) | triton | torch
    ):
        self.device, self.dtype, self.shape = torch.device(device), dtype, tuple(shape)
        self.seeds = torch.as_tensor(seeds, dtype=torch.int64).reshape(-1).to(self.device)
        if backend not in ("auto", "triton", "torch"):
            raise ValueError(f"backend must be auto, triton or torch, got {backend!r}")
        self.triton = backend == "triton" or (backend == "auto" and _use_triton(self.device))
        self.draws = 0  # normal draws made so far
        self.int_draws = 0  # integer draws made so far

    def __call__(self) -> torch.Tensor:
        if self.triton:
            from ctmtool.kernels.philox_triton import philox_normal_triton

            z = philox_normal_triton(self.seeds, self.shape, self.draws)
        else:
            z = philox_normal(self.seeds, self.shape, self.draws)
        self.draws += 1
        return z.to(self.dtype)

    def integers(self, high: int) -> torch.Tensor:
        """One integer in [0, high) per image (e.g. a class label), from the image's own integer stream."""
        out = philox_integers(self.seeds, high, self.int_draws)
        self.int_draws += 1
        return out


def make_noise(kind: str, seeds: list[int] | torch.Tensor, shape: tuple[int, ...],
               device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
    """A per-image noise source: kind "philox" (on the device, fast) or "edm" (EDM generate.py-equal
    latents)."""
    if kind == "philox":
        return PhiloxNoise(seeds, shape, device, dtype)
    if kind == "edm":
        return ImageNoise(seeds, shape, device, dtype)
    raise ValueError(f"unknown `noise` {kind!r}; use one of {', '.join(NOISE_KINDS)}")
