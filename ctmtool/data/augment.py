"""DiffAugment (Zhao et al. 2020, "Differentiable Augmentation for Data-Efficient GAN Training").

`diff_augment(x, policies)` applies random colour, translation and cutout transforms, all differentiable
with respect to x, so the generator is trained through them. Apply the same call (same policies) to the
real and to the fake batch before the discriminator, in both the discriminator and the generator step;
each call draws fresh random parameters per sample. Pass a `torch.Generator` (on x's device) to make the
draws reproducible.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

POLICIES = ("color", "translation", "cutout")


def _rand(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One uniform [0, 1) draw per sample, shaped (B, 1, 1, 1) to broadcast over an image."""
    return torch.rand(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype, generator=generator)


def _randint(low: int, high: int, n: int, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """n integers uniform in [low, high] (both included)."""
    return torch.randint(low, high + 1, (n,), device=x.device, generator=generator)


def color(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random brightness (+U[-0.5, 0.5]), saturation (x U[0, 2]) and contrast (x U[0.5, 1.5]) per sample (Zhao
    et al. 2020)."""
    x = x + (_rand(x, generator) - 0.5)
    mean_c = x.mean(dim=1, keepdim=True)
    x = (x - mean_c) * (2 * _rand(x, generator)) + mean_c
    mean_all = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean_all) * (_rand(x, generator) + 0.5) + mean_all


def translate(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """Shift sample b by (dy[b], dx[b]) pixels (content moves down/right for positive values),
    zero-filling."""
    B, _, H, W = x.shape
    rows = torch.arange(H, device=x.device)[None, :] - dy.to(x.device)[:, None]  # (B, H) source rows
    cols = torch.arange(W, device=x.device)[None, :] - dx.to(x.device)[:, None]  # (B, W) source cols
    valid = ((rows >= 0) & (rows < H))[:, :, None] & ((cols >= 0) & (cols < W))[:, None, :]  # (B, H, W)
    b = torch.arange(B, device=x.device)[:, None, None]
    out = x[b, :, rows.clamp(0, H - 1)[:, :, None], cols.clamp(0, W - 1)[:, None, :]]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2) * valid[:, None].to(x.dtype)


def cutout(x: torch.Tensor, cy: torch.Tensor, cx: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Zero a size[0] x size[1] patch whose rows start at cy[b] - size[0] // 2 (cols likewise), clipped to the
    image."""
    _, _, H, W = x.shape
    ys = torch.arange(H, device=x.device)[None, :] - (cy.to(x.device)[:, None] - size[0] // 2)  # (B, H)
    xs = torch.arange(W, device=x.device)[None, :] - (cx.to(x.device)[:, None] - size[1] // 2)  # (B, W)
    in_y = (ys >= 0) & (ys < size[0])
    in_x = (xs >= 0) & (xs < size[1])
    keep = ~(in_y[:, :, None] & in_x[:, None, :])  # (B, H, W)
    return x * keep[:, None].to(x.dtype)


def random_translation(x: torch.Tensor, generator: torch.Generator | None = None,
                       ratio: float = 0.125) -> torch.Tensor:
    """Translate each sample by integers uniform in [-r, r], r = round(ratio * size), zero padding (Zhao et
    al. 2020)."""
    B, _, H, W = x.shape
    ry, rx = int(H * ratio + 0.5), int(W * ratio + 0.5)
    return translate(x, _randint(-ry, ry, B, x, generator), _randint(-rx, rx, B, x, generator))


def random_cutout(x: torch.Tensor, generator: torch.Generator | None = None,
                  ratio: float = 0.5) -> torch.Tensor:
    """Zero a patch of ratio * size with its centre uniform over the image, clipped at the border (Zhao et al.
    2020)."""
    B, _, H, W = x.shape
    size = (int(H * ratio + 0.5), int(W * ratio + 0.5))
    return cutout(x, _randint(0, H - 1, B, x, generator), _randint(0, W - 1, B, x, generator), size)


def diff_augment(x: torch.Tensor, policies: str | Sequence[str],
                 generator: torch.Generator | None = None, cutout_ratio: float = 0.5) -> torch.Tensor:
    """DiffAugment of a (B, C, H, W) batch: the policies in order ("color", "translation", "cutout"; a list or
    "a,b")."""
    names = [p for p in policies.split(",") if p] if isinstance(policies, str) else list(policies)
    for name in names:
        if name == "color":
            x = color(x, generator)
        elif name == "translation":
            x = random_translation(x, generator)
        elif name == "cutout":
            x = random_cutout(x, generator, ratio=cutout_ratio)
        else:
            raise ValueError(f"unknown DiffAugment policy {name!r}; known: {', '.join(POLICIES)}")
    return x
