"""Cross-check `ctmtool likelihood --protocol ctm-paper` against sony/ctm's eval_bpd.py itself, by hand.

    python bench/xcheck_likelihood_paper.py PATH_TO_SONY_CTM_CHECKOUT

eval_bpd.py's `likelihood(mode='correct')` and the functions it calls (`sigma`, `prior_logp`, `residual`,
`drift_fn`, `div_fn`) are read from the checkout and run as they are (its imports of the training code are
not needed: the functions are taken out of the file with `ast`); `diffusion.get_denoised_and_G` is a shim
that calls the same ctmtool network. Both get the same points and the same random draws (the official code's
global generator and ctmtool's `torch.Generator`, seeded alike). Reports bits/dim per image of both, their
difference, and ctmtool's exact PF-ODE bits/dim of the same points (dequantised) beside them. Not for CI.
"""

from __future__ import annotations

import ast
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from scipy import integrate

NEEDED = ("sigma", "inv_sigma", "prior_logp", "residual", "drift_fn", "div_fn", "likelihood")


def official_functions(checkout: str) -> dict:
    src = (Path(checkout) / "code" / "eval_bpd.py").read_text()
    tree = ast.parse(src)
    keep = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in NEEDED]
    ns = {"torch": torch, "np": np, "integrate": integrate}
    # the official code, as is
    exec(compile(ast.Module(body=keep, type_ignores=[]), "eval_bpd.py", "exec"), ns)
    return ns


def main(checkout: str) -> None:
    from ctmtool.checkpoint import Checkpoint, save_checkpoint
    from ctmtool.config import load_preset
    from ctmtool.core.likelihood_paper import ctm_paper_bpd
    from ctmtool.core.models import build_precond, load_model
    from ctmtool.data.base import Dataset
    from ctmtool.jobs.likelihood import NLLOptions, likelihood_of

    off = official_functions(checkout)
    p = load_preset("cifar10", ["data.source=folder", "data.resolution=8", "net.unet.model_channels=16",
                                "net.unet.channel_mult=[1,2]", "net.unet.num_blocks=1",
                                "net.unet.attn_resolutions=[]"])
    shape = (3, 8, 8)
    torch.manual_seed(0)
    net = build_precond("ctm", p, shape)
    with torch.no_grad():
        for q in net.parameters():
            q.add_(0.05 * torch.randn_like(q))
    tmp = Path(tempfile.mkdtemp(prefix="xcheck-bpd-"))
    save_checkpoint(tmp / "c.safetensors", Checkpoint("ctm", p, shape, groups={"ema": net.state_dict()}))
    model = load_model(tmp / "c.safetensors")

    def denoise(x, std):
        return model.net.denoise(x, std.reshape(-1).expand(x.shape[0]))

    class Diffusion:  # what eval_bpd.py calls: get_denoised_and_G(model, x, std, s=std, ctm=True)[0]
        def get_denoised_and_G(self, _model, x, std, s=None, ctm=True, teacher=False):
            return denoise(x, std), None

    u8 = torch.randint(0, 256, (4, *shape), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    images = u8.float() / 127.5 - 1
    smax, smin = torch.tensor([80.0]), torch.tensor([0.002])
    torch.manual_seed(7)
    with torch.no_grad():
        want = off["likelihood"](None, None, Diffusion(), images, std_max=smax, std_min=smin)
    got, nfe = ctm_paper_bpd(denoise, images, torch.Generator().manual_seed(7))
    d = (got - want.double()).abs().max().item()
    print(f"official code: {checkout} (eval_bpd.py likelihood, mode 'correct'); small CTM (8x8, random "
          f"weights), 4 images; torch {torch.__version__}, CPU")
    print(f"  official bits/dim {[round(v, 6) for v in want.tolist()]}")
    print(f"  ctmtool  bits/dim {[round(v, 6) for v in got.tolist()]}  ({nfe} network evaluations)")
    print(f"  max |difference| {d:.3e} bits/dim (relative {d / want.abs().max().item():.2e})")
    torch.manual_seed(8)
    with torch.no_grad():
        other = off["likelihood"](None, None, Diffusion(), images, std_max=smax, std_min=smin)
    print("  control, official with other draws (seed 8): max |difference| "
          f"{(other - want).abs().max().item():.3e}")
    ds = Dataset(u8, None, 0, "points", [str(i) for i in range(4)])
    summary, _ = likelihood_of(model, ds, NLLOptions(divergence="exact"), batch=4)
    print(f"  ctmtool exact PF-ODE (dequantised, exact divergence): {summary['bits_per_dim']:.6f} bits/dim "
          "(mean)")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python bench/xcheck_likelihood_paper.py PATH_TO_SONY_CTM_CHECKOUT")
    main(sys.argv[1])
