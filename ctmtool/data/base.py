"""The one interface every data source yields: an in-memory `Dataset` and random batches from it.

Images are stored as uint8 NCHW (compact, exact) and returned as float NCHW in [-1, 1]; 2-D (or any
vector) data is stored as float32 (N, D) and returned as is. Labels are optional int64 (N,).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Dataset:
    values: torch.Tensor  # uint8 (N, C, H, W) images, or float32 (N, D) points
    labels: torch.Tensor | None = None  # int64 (N,) class labels, or None
    num_classes: int = 0  # 0 when unlabelled
    name: str = "data"  # where it came from, for messages
    items: list[str] | None = field(default=None, repr=False)  # per-item names (file paths), optional
    class_names: list[str] | None = None  # label index -> name, when known

    def __post_init__(self):
        if self.labels is not None and len(self.labels) != len(self.values):
            raise ValueError(f"{self.name}: {len(self.labels)} labels for {len(self.values)} items")

    def __len__(self) -> int:
        return self.values.shape[0]

    @property
    def is_image(self) -> bool:
        return self.values.ndim == 4

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one item: (C, H, W) or (D,)."""
        return tuple(self.values.shape[1:])

    def to(self, device) -> Dataset:
        """Move the stored tensors (e.g. the whole data set onto the GPU, to keep batches off the host)."""
        return Dataset(self.values.to(device), None if self.labels is None else self.labels.to(device),
                       self.num_classes, self.name, self.items, self.class_names)

    def get(self, idx: torch.Tensor, device=None,
            dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Items `idx` as (x, labels): x float in [-1, 1] for images."""
        idx = idx.to(self.values.device)
        v = self.values[idx]
        x = (v.to(device=device, dtype=dtype) / 127.5 - 1 if self.is_image
             else v.to(device=device, dtype=dtype))
        y = None if self.labels is None else self.labels[idx].to(device)
        return x, y


def to_uint8_images(x: torch.Tensor) -> torch.Tensor:
    """Float NCHW in [-1, 1] -> uint8 NCHW (rounded, clamped)."""
    return ((x.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)

