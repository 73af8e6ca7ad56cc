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
        grid[pad + r * (h + pad): pad + r * (h + pad) + h,
             pad + q * (w + pad): pad + q * (w + pad) + w] = arr[i]
    return grid


def _pil(arr: np.ndarray) -> Image.Image:
    return Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)


def save_png(arr: np.ndarray, path: str | Path, scale: int = 1) -> Path:
    img = _pil(arr)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    atomic_write(path, lambda tmp: img.save(tmp, format="PNG"))
    return Path(path)


def nice_extent(points: torch.Tensor) -> float:
    """A round half-width holding the points (99.9% quantile of |coordinate|, 10% more, up to a 0.25 step):
    the same data give the same range, so plots of one preset compare."""
    q = float(points.detach().float().abs().quantile(0.999).item()) if len(points) else 1.0
    return max(0.25, math.ceil(q * 1.1 / 0.25) * 0.25)


def preset_view(preset, n: int = 4096) -> tuple[torch.Tensor | None, float | None]:
    """(target points, plot half-width) of a 2-D toy preset, the same on every call: scatter plots of one
    preset share their range (and can show the target in grey); (None, None) for other data."""
    d = preset.data
    if d.source != "toy":
        return None, None
    from ctmtool.data.toy import toy_points

    target = toy_points(d.toy, n, 1, d.gmm).values
    return target, nice_extent(target)


def _ticks(lim: float) -> list[float]:
    step = next((st for st in (0.1, 0.2, 0.25, 0.5, 1, 2, 2.5, 5, 10, 20, 50, 100) if lim / st <= 4), lim / 2)
    k = int(lim // step)
    return [i * step for i in range(-k, k + 1)]


def scatter_image(points: torch.Tensor, size: int = 512, extent: float | None = None,
                  reference: torch.Tensor | None = None, title: str | None = None) -> np.ndarray:
    """2-D points as a scatter plot people can read: axes with ticks and values, a title (default: how many
    points), reference points (e.g. the target data) in light grey under the points in blue; `extent` fixes
    the range [-extent, extent] on both axes (pass the same one to plots that should compare)."""
    pts = points.detach().float().cpu()
    lim = extent or nice_extent(pts)
    left, right, top, bottom = 44, 16, 26, 30
    img = Image.new("RGB", (left + size + right, top + size + bottom), "white")
    draw = ImageDraw.Draw(img)

    def to_px(v: torch.Tensor) -> np.ndarray:
        xy = ((v[:, :2] / lim + 1) * size / 2).numpy()
        return np.stack([left + xy[:, 0], top + size - 1 - xy[:, 1]], 1)

    for t in _ticks(lim):  # grid, ticks and values on both axes
        p = (t / lim + 1) * size / 2
        x, y = left + p, top + size - 1 - p
        draw.line([(x, top), (x, top + size)], fill=(238, 238, 238))
        draw.line([(left, y), (left + size, y)], fill=(238, 238, 238))
        draw.line([(x, top + size), (x, top + size + 4)], fill=(0, 0, 0))
        draw.line([(left - 4, y), (left, y)], fill=(0, 0, 0))
        draw.text((x - 8, top + size + 7), f"{t:g}", fill=(0, 0, 0))
        draw.text((4, y - 5), f"{t:g}", fill=(0, 0, 0))
    draw.rectangle([left, top, left + size, top + size], outline=(0, 0, 0))

    def plot(p: torch.Tensor, color) -> int:
        shown = 0
        for x, y in to_px(p):
            if left <= x < left + size and top <= y < top + size:
                draw.point((float(x), float(y)), fill=color)
                shown += 1
        return shown

    if reference is not None:
        plot(reference.detach().float().cpu(), (185, 185, 185))
    shown = plot(pts, (31, 119, 180))
    head = title or f"{len(pts)} points"
    if shown < len(pts):
        head += f" ({len(pts) - shown} outside the plot)"
    if reference is not None:
        head += "; grey: target"
    draw.text((left, 7), head, fill=(0, 0, 0))
    return np.asarray(img)


def save_samples_png(x: torch.Tensor, path: str | Path, is_image: bool, nrow: int | None = None,
                     title: str | None = None, extent: float | None = None) -> Path:
    """A grid (images, x float in [-1, 1]) or a scatter plot (points; `title`, `extent`) as one PNG."""
    if is_image:
        scale = max(1, 256 // (x.shape[-1] * (nrow or math.ceil(math.sqrt(len(x))))) + 1)
        return save_png(make_grid(to_uint8_images(x), nrow), path, scale=min(scale, 8))
    return save_png(scatter_image(x, extent=extent, title=title), path)


def save_npz(x: torch.Tensor, path: str | Path, is_image: bool, labels: torch.Tensor | None = None) -> Path:
    """Key `samples`: uint8 NHWC for images, float32 (N, D) for points; `labels` when present."""
    arrays = {"samples": to_uint8_images(x).permute(0, 2, 3, 1).cpu().numpy() if is_image
              else x.float().cpu().numpy()}
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
               size: tuple[int, int] = (640, 420), reference: tuple[str, float] | None = None) -> np.ndarray:
    """A small line chart (one line per series) as an RGB array: enough to see a trend without matplotlib;
    `reference` = (label, value) is drawn as a dashed grey line (e.g. the score of true samples)."""
    w, h = size
    left, right, top, bottom = 70, 150, 30, 45
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    xs = [x for pts in series.values() for x, _ in pts]
    ys = [y for pts in series.values() for _, y in pts if math.isfinite(y)]
    if reference is not None and math.isfinite(reference[1]):
        ys.append(reference[1])
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
        return (left + (x - x0) / (x1 - x0) * (w - left - right),
                top + (y1 - y) / (y1 - y0) * (h - top - bottom))

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
    if reference is not None and math.isfinite(reference[1]):
        (a, yr), (b, _) = px(x0, reference[1]), px(x1, reference[1])
        for xa in range(int(a), int(b), 12):
            d.line([(xa, yr), (min(xa + 6, b), yr)], fill=(150, 150, 150), width=2)
        d.text((w - right + 10, yr - 5), reference[0], fill=(120, 120, 120))
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
                 per_row: int | None = None, titles: list[str] | None = None,
                 extent: float | None = None) -> np.ndarray:
    """One picture of items next to their translations: images as [col 1 | col 2 | ...] per item, in rows of
    `per_row` items; 2-D points as one scatter panel per column on a common scale, each with its title (the
    target data, if given, in grey under the last panel)."""
    if is_image:
        n, k = columns[0].shape[0], len(columns)
        per_row = per_row or max(1, round((n / k) ** 0.5))
        stack = torch.stack([to_uint8_images(c.cpu()) for c in columns], 1).flatten(0, 1)  # item-major
        return make_grid(stack, nrow=per_row * k)
    pts = torch.cat([c.detach().float().cpu() for c in columns])
    lim = extent or nice_extent(torch.cat([pts, reference.float().cpu()]) if reference is not None else pts)
    titles = titles or [f"column {i + 1}" for i in range(len(columns))]
    panels = [scatter_image(c, size=384, extent=lim, reference=reference if i == len(columns) - 1 else None,
                            title=f"{t}: {len(c)} points")
              for i, (c, t) in enumerate(zip(columns, titles, strict=True))]
    return np.concatenate(panels, axis=1)
