"""Writing samples: image grids, scatter plots of 2-D points, PNG folders and .npz files (all atomic)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from ctmtool.checkpoint import atomic_write
from ctmtool.data.base import to_uint8_images


def make_grid(images: torch.Tensor, nrow: int | None = None, pad: int = 1) -> np.ndarray:
    """uint8 NCHW -> one HWC uint8 array, images in rows of `nrow` separated by `pad` black pixels."""
    n, c, h, w = images.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / nrow)
    grid = np.zeros((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), dtype=np.uint8)
    arr = images.permute(0, 2, 3, 1).cpu().numpy()
    for i in range(n):
        r, q = divmod(i, nrow)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + q * (w + pad): pad + q * (w + pad) + w] = arr[i]
    return grid


def _pil(arr: np.ndarray) -> Image.Image:
    return Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)


def save_png(arr: np.ndarray, path: str | Path, scale: int = 1) -> Path:
    img = _pil(arr)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    atomic_write(path, lambda tmp: img.save(tmp, format="PNG"))
    return Path(path)


def scatter_image(points: torch.Tensor, size: int = 512, extent: float | None = None,
                  reference: torch.Tensor | None = None) -> np.ndarray:
    """2-D points as a white-background RGB scatter plot (reference points, if given, in light grey)."""
    pts = points.detach().float().cpu()
    lim = extent or float(max(1.0, pts.abs().quantile(0.995).item() * 1.1))
    img = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(img)
    draw.line([(size // 2, 0), (size // 2, size)], fill=(230, 230, 230))
    draw.line([(0, size // 2), (size, size // 2)], fill=(230, 230, 230))

    def plot(p: torch.Tensor, color) -> None:
        xy = ((p[:, :2] / lim + 1) * size / 2).numpy()
        for x, y in xy:
            if 0 <= x < size and 0 <= y < size:
                draw.point((float(x), float(size - 1 - y)), fill=color)

    if reference is not None:
        plot(reference.detach().float().cpu(), (190, 190, 190))
    plot(pts, (31, 119, 180))
    return np.asarray(img)


def save_samples_png(x: torch.Tensor, path: str | Path, is_image: bool, nrow: int | None = None) -> Path:
    """A grid (images, x float in [-1, 1]) or a scatter plot (points) as one PNG."""
    if is_image:
        scale = max(1, 256 // (x.shape[-1] * (nrow or math.ceil(math.sqrt(len(x))))) + 1)
        return save_png(make_grid(to_uint8_images(x), nrow), path, scale=min(scale, 8))
    return save_png(scatter_image(x), path)


def save_npz(x: torch.Tensor, path: str | Path, is_image: bool, labels: torch.Tensor | None = None) -> Path:
    """Key `samples`: uint8 NHWC for images, float32 (N, D) for points; `labels` when present."""
    arrays = {"samples": to_uint8_images(x).permute(0, 2, 3, 1).cpu().numpy() if is_image else x.float().cpu().numpy()}
    if labels is not None:
        arrays["labels"] = labels.cpu().numpy()

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    atomic_write(path, write)
    return Path(path)


def save_png_folder(x: torch.Tensor, folder: str | Path, start: int = 0) -> list[Path]:
    """One PNG per image, named by its index (= its seed offset)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, img in enumerate(to_uint8_images(x).permute(0, 2, 3, 1).cpu().numpy()):
        p = folder / f"{start + i:06d}.png"
        save_png(img, p)
        out.append(p)
    return out


def line_chart(series: dict[str, list[tuple[float, float]]], title: str, xlabel: str, ylabel: str,
               size: tuple[int, int] = (640, 420)) -> np.ndarray:
    """A small line chart (one line per series) as an RGB array: enough to see a trend without matplotlib."""
    w, h = size
    left, right, top, bottom = 70, 150, 30, 45
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    xs = [x for pts in series.values() for x, _ in pts]
    ys = [y for pts in series.values() for _, y in pts if math.isfinite(y)]
    if not xs or not ys:
        return np.asarray(img)
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:
        y1 = y0 + 1
    pad = 0.05 * (y1 - y0)
    y0, y1 = y0 - pad, y1 + pad

    def px(x: float, y: float) -> tuple[float, float]:
        return (left + (x - x0) / (x1 - x0) * (w - left - right), top + (y1 - y) / (y1 - y0) * (h - top - bottom))

    d.rectangle([left, top, w - right, h - bottom], outline=(0, 0, 0))
    for x in sorted(set(xs)):
        p = px(x, y0)
        d.line([p, (p[0], p[1] + 4)], fill=(0, 0, 0))
        d.text((p[0] - 4, p[1] + 6), f"{x:g}", fill=(0, 0, 0))
    for i in range(5):
        y = y0 + (y1 - y0) * i / 4
        p = px(x0, y)
        d.line([(p[0] - 4, p[1]), p], fill=(0, 0, 0))
        d.text((4, p[1] - 5), f"{y:.3g}", fill=(0, 0, 0))
    d.text((left, 8), title, fill=(0, 0, 0))
    d.text(((w - right + left) / 2 - 20, h - 18), xlabel, fill=(0, 0, 0))
    d.text((4, top - 22), ylabel, fill=(0, 0, 0))
    colors = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]
    for i, (name, pts) in enumerate(series.items()):
        c = colors[i % len(colors)]
        pts = sorted((x, y) for x, y in pts if math.isfinite(y))
        if len(pts) > 1:
            d.line([px(x, y) for x, y in pts], fill=c, width=2)
        for x, y in pts:
            q = px(x, y)
            d.ellipse([q[0] - 3, q[1] - 3, q[0] + 3, q[1] + 3], fill=c)
        d.text((w - right + 10, top + 16 * i), name, fill=c)
    return np.asarray(img)


def side_by_side(columns: list[torch.Tensor], is_image: bool, reference: torch.Tensor | None = None,
                 per_row: int | None = None) -> np.ndarray:
    """One picture of items next to their translations: images as [col 1 | col 2 | ...] per item, in rows of
    `per_row` items; 2-D points as one scatter panel per column on a common scale (reference in grey)."""
    if is_image:
        n, k = columns[0].shape[0], len(columns)
        per_row = per_row or max(1, round((n / k) ** 0.5))
        stack = torch.stack([to_uint8_images(c.cpu()) for c in columns], 1).flatten(0, 1)  # item-major
        return make_grid(stack, nrow=per_row * k)
    pts = torch.cat([c.detach().float().cpu() for c in columns])
    lim = float(max(1.0, pts.abs().quantile(0.995).item() * 1.1))
    panels = [scatter_image(c, size=384, extent=lim, reference=reference if i == len(columns) - 1 else None)
              for i, c in enumerate(columns)]
    return np.concatenate(panels, axis=1)
