"""Cross-check `ctmtool import` of NVIDIA's ImageNet ADM pickle format against the official EDM code, by hand.

    python bench/xcheck_edm_adm.py PATH_TO_NVLABS_EDM_CHECKOUT

Builds the official `EDMPrecond(model_type='DhariwalUNet')` (training/networks.py; small: 16x16, 128
channels, 10 classes) with random weights (every tensor redrawn, zero-initialised ones included), pickles
`dict(ema=net)` as `training/training_loop.py` does (persistent classes carry their source), imports it
with `ctmtool.importers.import_file` (nothing in the pickle runs) and compares the denoiser D(x, sigma, y)
at several sigma. Not for CI (needs the official code).
"""

from __future__ import annotations

import pickle
import sys
import tempfile
from pathlib import Path

import torch


def main(checkout: str) -> None:
    sys.path.insert(0, str(Path(checkout).resolve()))
    from training.networks import EDMPrecond

    from ctmtool.core.models import load_model
    from ctmtool.importers import import_file

    torch.set_grad_enabled(False)
    torch.manual_seed(0)
    off = EDMPrecond(img_resolution=16, img_channels=3, label_dim=10, use_fp16=False,
                     model_type="DhariwalUNet", model_channels=128, channel_mult=[1, 2], num_blocks=1,
                     attn_resolutions=[8]).eval()
    g = torch.Generator().manual_seed(1)
    for p in off.parameters():
        p.copy_(0.05 * torch.randn(p.shape, generator=g))
    tmp = Path(tempfile.mkdtemp(prefix="xcheck-edm-adm-"))
    with open(tmp / "edm-tiny-16x16-cond-adm.pkl", "wb") as f:
        pickle.dump(dict(ema=off, loss_fn=None, augment_pipe=None, dataset_kwargs={}), f)
    res, out = import_file(tmp / "edm-tiny-16x16-cond-adm.pkl", tmp / "adm.safetensors")
    mine = load_model(out)
    print(f"official code: {checkout}; EDMPrecond(DhariwalUNet) 16x16, 128 ch, mult [1, 2], 1 block, attn 8, "
          f"10 classes; imported as {res.kind} ({mine.preset.net.kind}, qkv {mine.preset.net.adm.qkv_order}, "
          f"time_scale {mine.preset.net.adm.time_scale}); torch {torch.__version__}, float32, CPU")
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    y = torch.tensor([0, 3, 7, 9])
    onehot = torch.nn.functional.one_hot(y, 10).float()
    worst = 0.0
    for sigma in (80.0, 10.0, 1.0, 0.5, 0.02, 0.002):
        xs, ss = x * sigma, torch.full((4,), sigma)
        want = off(xs, ss, onehot)
        for name, lab in (("int labels", y), ("one-hot", onehot)):
            got = mine.net.denoise(xs, ss, labels=lab)
            d = (got - want).abs().max().item()
            rel = d / want.abs().max().item()
            worst = max(worst, rel)
            print(f"  D sigma={sigma:<6} {name:<10} max|diff| {d:.3e}   rel {rel:.3e}")
    from ctmtool.core.models import build_precond

    for field, value in (("qkv_order", "three"), ("time_scale", 1000.0)):  # controls: each conversion matters
        p = mine.preset.model_copy(update={"net": mine.preset.net.model_copy(update={
            "adm": mine.preset.net.adm.model_copy(update={field: value})})})
        ctl = build_precond("teacher", p, mine.data_shape).eval()
        ctl.load_state_dict(mine.net.state_dict())
        want = off(x * 10.0, torch.full((4,), 10.0), onehot)
        d = (ctl.denoise(x * 10.0, torch.full((4,), 10.0), labels=y) - want).abs().max().item()
        print(f"  control {field}={value!r} (must differ): max|diff| {d:.3e}")
    print(f"worst relative difference: {worst:.3e}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python bench/xcheck_edm_adm.py PATH_TO_NVLABS_EDM_CHECKOUT")
    main(sys.argv[1])
