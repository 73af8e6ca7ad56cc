"""Cross-check `ctmtool import` of a GCTM checkpoint against the official network (1202kbs/GCTM), by hand.

    python bench/xcheck_gctm_import.py PATH_TO_GCTM_CHECKOUT

Builds the official `SongUNet(param='LIN')` (small: 16x16, 32 channels) with random weights, saves it as
`train_gctm.py` does (`{X0_eval, X1_eval, net, net_ema, opt_CTM, avgmeter, best_FID}`), imports it with
`ctmtool import` (moments and label range given as options) and compares the jump G(x, t, s) and g at
several (t, s), the ends t = 1 and s = 0 included. Then the official evaluation with source noise: the file
is imported again with `x1_eps_std` (its --X1_eps_std; var1 given as its --vars[1]), and ctmtool's
`translate_items` (what `ctmtool translate` runs) is compared with the official `net(x1 + X1_eps_std * eps,
1, 0)` (utils.py eval_FID on data.py Sampler.sample_X1) for the same eps (ctmtool's per-item seeded noise).
Not for CI (needs the official code).
"""

from __future__ import annotations

import sys
import tempfile
import types
from pathlib import Path

import torch


def main(checkout: str) -> None:
    sys.path.insert(0, str(Path(checkout).resolve()))
    from networks import SongUNet

    from ctmtool.core.models import load_model
    from ctmtool.importers import import_file

    torch.set_grad_enabled(False)
    var0, var1, cov01, smin, smax = 0.23, 0.01 + 0.05**2, 0.02, 0.002, 80.0
    disc = types.SimpleNamespace(smin=smin, smax=smax)  # only the label range is read in 'LIN' mode
    torch.manual_seed(0)
    off = SongUNet(vars=[var0, var1, cov01], param="LIN", discretization=disc, img_resolution=16,
                   in_channels=3, out_channels=3, model_channels=32, channel_mult=[1, 2], num_blocks=1,
                   attn_resolutions=[8], dropout=0.1).eval()
    g = torch.Generator().manual_seed(1)
    for p in off.parameters():
        p.copy_(0.05 * torch.randn(p.shape, generator=g))
    tmp = Path(tempfile.mkdtemp(prefix="xcheck-gctm-"))
    ckpt = {"X0_eval": torch.zeros(1), "X1_eval": torch.zeros(1), "net": off.state_dict(),
            "net_ema": off.state_dict(), "opt_CTM": {}, "avgmeter": {}, "best_FID": float("inf")}
    torch.save(ckpt, tmp / "idx_0_best.pt")
    import_file(tmp / "idx_0_best.pt", tmp / "g.safetensors", var0=var0, var1=var1, cov01=cov01, smin=smin,
                smax=smax)
    mine = load_model(tmp / "g.safetensors")
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    print(f"official code: {checkout}; small SongUNet(param='LIN') 16x16; moments {var0}, {var1}, {cov01}")
    for t, s in ((1.0, 0.0), (1.0, 0.5), (0.9, 0.3), (0.5, 0.1), (0.3, 0.3), (0.2, 0.0)):
        tt, ss = torch.full((2,), t), torch.full((2,), s)
        want_G, want_g = off(x, tt.clone(), ss.clone()), off(x, tt.clone(), ss.clone(), return_g=True)
        got_G, got_g = mine.net.jump(x, tt, ss), mine.net.g(x, tt, ss)
        dG = (got_G - want_G).abs().max().item() / want_G.abs().max().item()
        dg = (got_g - want_g).abs().max().item() / want_g.abs().max().item()
        print(f"  t={t:<4} s={s:<4} G rel {dG:.3e}   g rel {dg:.3e}")

    from ctmtool.core.noise import ImageNoise
    from ctmtool.jobs.items import translate_items
    from ctmtool.jobs.plan import plan_translation

    eps_std, var1_cmd = 0.05, 0.01
    off_eps = SongUNet(vars=[var0, var1_cmd + eps_std**2, cov01], param="LIN", discretization=disc,
                       img_resolution=16, in_channels=3, out_channels=3, model_channels=32,
                       channel_mult=[1, 2], num_blocks=1, attn_resolutions=[8], dropout=0.1).eval()
    off_eps.load_state_dict(off.state_dict())
    import_file(tmp / "idx_0_best.pt", tmp / "g_eps.safetensors", var0=var0, var1=var1_cmd, cov01=cov01,
                smin=smin, smax=smax, x1_eps_std=eps_std)
    mine = load_model(tmp / "g_eps.safetensors")
    x1 = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(3)) * 2 - 1
    seed = 11
    got = translate_items(mine, x1, plan_translation(mine, nfe=1, batch=4), seed=seed)
    eps = ImageNoise(list(range(seed, seed + 4)), (3, 16, 16), "cpu")()
    want = off_eps(x1 + eps_std * eps, torch.ones(4), torch.zeros(4)).clamp(-1, 1)  # as tensor2img clips
    plain = off_eps(x1, torch.ones(4), torch.zeros(4)).clamp(-1, 1)
    print(f"translate (X1_eps_std {eps_std}) vs official net(x1 + eps, 1, 0), same eps: max|diff| "
          f"{(got - want).abs().max().item():.3e} (images in [-1, 1]); "
          f"control without eps (must differ): {(got - plain).abs().max().item():.3e}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python bench/xcheck_gctm_import.py PATH_TO_GCTM_CHECKOUT")
    main(sys.argv[1])
