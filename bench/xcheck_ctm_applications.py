"""ctmtool's zero-shot restoration loop against the official CTM code's (sony/ctm code/cm/sample_util.py
`iterative_colorization`, `iterative_superres`) on a small random CTM (run by hand; not in CI).

    git --git-dir=/work/.mirror/sony+ctm/repo archive HEAD | tar -x -C /tmp --one-top-level=ctm
    python bench/xcheck_ctm_applications.py --ctm /tmp/ctm [--nfe 3] [--size 16]

The official functions are imported from the checkout (blobfile, the classifier module and the device helper
are stubbed) and given ctmtool's jump G(x, t, sigma_min) as the distiller and ctmtool's noise as the
generator, with `ts` indices that put their levels on ctmtool's grid; both start from the noised observation
(the official application_sample passes the clean images as the starting x, a difference of the starting
point only). Prints the largest absolute difference of the outputs; never asserts.
"""

from __future__ import annotations

import argparse
import sys
import types

import torch


def _stub_modules() -> None:
    sys.modules.setdefault("blobfile", types.ModuleType("blobfile"))
    enc = types.ModuleType("cm.enc_dec_lib")
    enc.get_classifier_guidance, enc.vpsde = None, None
    sys.modules["cm.enc_dec_lib"] = enc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ctm", required=True, help="a checkout of github.com/sony/ctm")
    ap.add_argument("--nfe", type=int, default=3)
    ap.add_argument("--size", type=int, default=16)
    args = ap.parse_args()
    _stub_modules()
    sys.path.insert(0, f"{args.ctm}/code")
    import cm.dist_util as dist_util

    dist_util.dev = lambda: torch.device("cpu")
    from cm import sample_util  # the official code

    from ctmtool.config import load_preset
    from ctmtool.core.editing import edit_schedule
    from ctmtool.core.models import Model, build_precond
    from ctmtool.core.zero_shot import observed, restore

    preset = load_preset("digits",
                         ["net.kind=unet", "net.unet.model_channels=16", "net.unet.channel_mult=[1]",
                                    "net.unet.num_blocks=1", "net.unet.attn_resolutions=[]",
                          "net.unet.dropout=0.0",
                                    "diffusion.sigma_max=80"])
    shape = (3, args.size, args.size)
    torch.manual_seed(0)
    net = build_precond("ctm", preset, shape).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model = Model("ctm", net, preset, shape)
    y = torch.rand(2, *shape, generator=torch.Generator().manual_seed(1)) * 2 - 1
    levels = [float(v) for v in edit_schedule(model, net.sigma_max, args.nfe)]
    steps = 3 * args.nfe + 1  # ts = 0, 3, 6, ...: Karras index spacing equal to ctmtool's nfe + 1 point grid
    ts = tuple(range(0, steps, 3))

    class Gen:  # the official `generator.randn_like`, drawing from a seeded torch generator
        def __init__(self, seed):
            self.g = torch.Generator().manual_seed(seed)

        def randn_like(self, x):
            return torch.randn(x.shape, generator=self.g)

    def distiller(x, t, s=None):
        s = net.sigma_min if s is None else float(s.flatten()[0]) if torch.is_tensor(s) else float(s)
        return net.jump(x, float(t.flatten()[0]), s)

    # colourisation always re-noises fully (gamma 1); super-resolution takes gamma (its default is 0)
    for task, official, gamma in (("colorize", sample_util.iterative_colorization, 1.0),
                                  ("superres", sample_util.iterative_superres, 1.0),
                                  ("superres", sample_util.iterative_superres, 0.0)):
        ours_gen = Gen(0)
        ours = restore(model, y, task, levels[0], args.nfe, lambda gen=ours_gen: gen.randn_like(y),
                       gamma=gamma, factor=8)
        g = Gen(0)
        start = observed(task, y, None, 8) + levels[0] * g.randn_like(y)
        with torch.no_grad():
            theirs, _ = official(distiller, y, start, ts, t_min=net.sigma_min, t_max=net.sigma_max,
                                 rho=net.rho, steps=steps, generator=g, gamma=gamma)
        print(f"{task:10s} gamma {gamma:g}: max |ours - official| = "
              f"{float((ours - theirs.clamp(-1, 1)).abs().max()):.3e}  (levels "
              f"{', '.join(f'{v:.4g}' for v in levels)})")


if __name__ == "__main__":
    main()
