"""The references that `ctmtool translate --metrics` scores outputs against, and how they are matched.

In order of preference: the images of `--ref` (matched to the inputs by file stem when both sides have
unique stems covering each other, else by position when the counts agree); the clean inputs when the
command degrades them itself (`--degrade`); the target halves of side-by-side pairs (pix2pix layouts).
"""

from __future__ import annotations

import torch

from ctmtool.errors import UserError


def references(model, data, ref: str | None, degraded: bool, log=None) -> tuple[torch.Tensor, str]:
    """(reference images aligned with data.x, what they are) for `translate --metrics`."""
    from ctmtool.jobs import inputs

    if not model.is_image:
        raise UserError("`metrics` (PSNR, SSIM, LPIPS) scores images; this model works on points")
    n = len(data.x)
    if ref is not None:
        r = inputs.load_inputs(ref, model, log=log)
        if data.names is not None and r.names is not None and set(data.names) <= set(r.names):
            where = {name: i for i, name in enumerate(r.names)}
            return r.x[[where[name] for name in data.names]], f"{ref} (matched by file name)"
        if len(r.x) != n:
            raise UserError(f"`ref` {ref} holds {len(r.x)} images for {n} inputs and their file names do not "
                            "match; give one reference per input, with the input's file name or in the same "
                            "order")
        return r.x, f"{ref} (matched by order)"
    if degraded:
        return data.x, "the clean inputs (--degrade)"
    if data.other is not None:
        return data.other, "the target halves of the paired inputs"
    raise UserError("`metrics` needs references: give `ref` IMAGES, or `degrade` (the clean inputs are the "
                    "references), or side-by-side pairs as inputs")


__all__ = ["references"]
