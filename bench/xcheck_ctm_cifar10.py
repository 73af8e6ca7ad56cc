"""Cross-check ctmtool's CTM recipe against the official CIFAR-10 code (Kim-Dongjun/ctm-cifar10), by hand.

    python bench/xcheck_ctm_cifar10.py PATH_TO_CTM_CIFAR10_CHECKOUT

Builds the official student (`EDMPrecond_CTM`, SongUNet DDPM++ with CTM's s-layers; small: 16x16, 32
channels) with random weights, writes it as an official checkpoint (`ema_0.999_000100.pt`), imports that
with `ctmtool import`, and compares on the same inputs and random draws:
  1. the student G(x, t, s) at several (t, s), unconditional and class-conditional;
  2. the CTM loss (the paper's LPIPS: piq, average pooling, 224; random VGG/LPIPS weights of the real shapes,
     given to both sides) for fixed (t, u, s, k) and noise, with the teacher's Heun solve;
  3. the DSM loss with the `halflognormal` sampler (same global-RNG draws);
  4. the Projected-GAN discriminator's logits and hinge losses (timm DeiT-base-distilled and
     EfficientNet-lite0 with random weights shared by both sides; random CCM/CSM/heads copied from the
     official ones);
  5. the imported checkpoint's one-step sample (ctmtool's `generate(nfe=1)` vs the official G(80 z, 80,
     0.002)).
Stubs, only for modules the official code imports but this check never uses: `blobfile` (file I/O), and
`ftfy` / `regex` (CLIP's tokenizer) when they are not installed. timm's EfficientNet now folds the stem's
activation into `bn1`, so the official builder's `model.act1` is given as an identity.
Not for CI (needs the official code).
"""

from __future__ import annotations

import copy
import sys
import tempfile
import types
from pathlib import Path

import torch


def _stub(name: str) -> None:
    try:
        __import__(name)
    except ImportError:
        mod = types.ModuleType(name)
        mod.compile = lambda *a, **k: None  # regex.compile at import time of CLIP's tokenizer (unused here)
        mod.IGNORECASE = 0
        sys.modules[name] = mod


def _randomise(module: torch.nn.Module, seed: int, scale: float = 0.05) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=g))


def _rel(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    d = (a.double() - b.double()).abs().max().item()
    return d, d / max(b.double().abs().max().item(), 1e-30)


def main(checkout: str) -> None:
    sys.path.insert(0, str(Path(checkout).resolve()))
    for name in ("blobfile", "ftfy", "regex"):
        _stub(name)
    import cm.script_util  # noqa: F401  (import order: script_util before karras_diffusion, as cm_train.py)
    from cm.karras_diffusion import KarrasDenoiser
    from cm.networks import EDMPrecond_CTM
    from cm.resample import HalfLogNormalHalfUniformSampler

    import ctmtool.losses.ctm as ctm_losses
    from ctmtool.core.models import build_precond, load_model
    from ctmtool.core.precond import EDMPrecond
    from ctmtool.core.sampling import generate
    from ctmtool.core.schedules import karras_sigmas
    from ctmtool.importers import import_file
    from ctmtool.jobs.plan import plan_explicit
    from ctmtool.losses.ctm import CTMLoss, DSMLoss
    from ctmtool.losses.lpips import PaperLPIPS

    torch.set_grad_enabled(False)
    tmp = Path(tempfile.mkdtemp(prefix="xcheck-"))
    res, kw = 16, dict(model_channels=32, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[8],
                       dropout=0.13)
    args = types.SimpleNamespace(sigma_data=0.5, sigma_min=0.002, sigma_max=80.0, rho=7, start_scales=18,
                                 target_subtract=False, rescaling=False, inner_parametrization="edm",
                                 outer_parametrization="euler", training_mode="ctm", time_continuous=False,
                                 loss_norm="lpips", large_log=False, self_learn=False, diffusion_mult=0.7,
                                 diffusion_weight_schedule="karras_weight", apply_adaptive_weight=False,
                                 weight_schedule="uniform", weight_schedule_multiplier=1.0)
    print(f"official code: {checkout}; small DDPM++ student {res}x{res}, {kw}")

    for label_dim in (0, 10):
        torch.manual_seed(0)
        off = EDMPrecond_CTM(img_resolution=res, img_channels=3, label_dim=label_dim, use_fp16=False,
                             sigma_min=0.002, sigma_max=80.0, sigma_data=0.5, model_type="SongUNet",
                             training_mode="ctm", arch="ddpmpp", **kw).eval()
        _randomise(off, seed=1)
        f = tmp / f"ema_0.999_000100_{label_dim}.pt"
        torch.save(off.state_dict(), f)
        f2 = tmp / "ema_0.999_000100.pt"
        f.rename(f2)
        out = tmp / f"ctm{label_dim}.safetensors"
        import_file(f2, out)
        f2.rename(f)
        mine = load_model(out, device="cpu")
        diff = KarrasDenoiser(args, None, None)
        kwargs = {}
        labels = None
        if label_dim:
            labels = torch.tensor([3, 7])
            kwargs = {"y": labels}
        x = 2 * torch.randn(2, 3, res, res, generator=torch.Generator().manual_seed(5))
        print(f"\n== label_dim {label_dim}: student G(x, t, s), max |diff| (relative to max |official|)")
        for t, s in ((80.0, 0.002), (80.0, 40.0), (10.0, 1.0), (1.0, 0.5), (0.5, 0.5), (0.05, 0.002)):
            tt, ss = torch.full((2,), t), torch.full((2,), s)
            want = diff.get_denoised_and_G(off, x * max(t, 1.0), tt, s=ss, ctm=True, **kwargs)[1]
            got = mine.net.jump(x * max(t, 1.0), tt, ss, labels)
            a, r = _rel(got, want)
            print(f"  t={t:<6} s={s:<6} abs {a:.3e}  rel {r:.3e}")

        print(f"== label_dim {label_dim}: one-step sample of the imported checkpoint (ctmtool generate, nfe "
              "1)")
        got, _ = next(generate(mine, 4, plan_explicit(mine, nfe=1, class_label=3 if label_dim else None,
                                                      batch=4), seed=0))
        z = torch.stack([torch.randn(3, res, res, generator=torch.Generator().manual_seed(i))
                         for i in range(4)])
        kw4 = {"y": torch.full((4,), 3)} if label_dim else {}
        want = diff.get_denoised_and_G(off, 80.0 * z, torch.full((4,), 80.0), s=torch.full((4,), 0.002),
                                       ctm=True, **kw4)[1].clamp(-1, 1)
        a, r = _rel(got, want)
        print(f"  abs {a:.3e}  rel {r:.3e}")

    _losses(tmp, args, off_cls=EDMPrecond_CTM, KarrasDenoiser=KarrasDenoiser,
            Sampler=HalfLogNormalHalfUniformSampler, res=res, kw=kw, ctm_losses=ctm_losses, CTMLoss=CTMLoss,
            DSMLoss=DSMLoss, PaperLPIPS=PaperLPIPS, build_precond=build_precond, load_model=load_model,
            EDMPrecond=EDMPrecond, karras_sigmas=karras_sigmas)
    _discriminator()


def _losses(tmp, args, *, off_cls, KarrasDenoiser, Sampler, res, kw, ctm_losses, CTMLoss, DSMLoss, PaperLPIPS,
            build_precond, load_model, EDMPrecond, karras_sigmas):
    import piq.perceptual
    from torchvision.models.vgg import cfgs, make_layers

    from ctmtool.losses.lpips import LPIPS_FILE, VGG16_FILE

    print("\n== CTM loss (paper LPIPS, random VGG16/LPIPS weights) and DSM loss (halflognormal)")
    mine = load_model(tmp / "ctm0.safetensors")
    def official(mode):
        net = off_cls(img_resolution=res, img_channels=3, label_dim=0, use_fp16=False, sigma_min=0.002,
                      sigma_max=80.0, sigma_data=0.5, model_type="SongUNet", training_mode=mode,
                      arch="ddpmpp", **kw).eval()
        sd = torch.load(tmp / "ema_0.999_000100_0.pt", weights_only=True)
        net.load_state_dict({k: v for k, v in sd.items() if k in net.state_dict()})
        return net

    off = official("ctm")
    # the student's network without its s-layers, called with s = None (EDM scalings)
    teacher_off = official("")
    teacher = build_precond("teacher", mine.preset, mine.data_shape).eval()
    assert isinstance(teacher, EDMPrecond)
    teacher.load_state_dict({k: v for k, v in mine.net.state_dict().items() if "map_s" not in k
                             and "affine_s" not in k})

    # LPIPS weights of the real shapes, random, given to piq.LPIPS (official) and to ctmtool's PaperLPIPS
    torch.manual_seed(3)
    feats = make_layers(cfgs["D"])
    torch.save({f"features.{k}": v for k, v in feats.state_dict().items()}, tmp / VGG16_FILE)
    lins = [torch.rand(1, c, 1, 1) for c in (64, 128, 256, 512, 512)]
    torch.save(lins, tmp / LPIPS_FILE)

    class _VGG:
        def __init__(self, features):
            self.features = features

    piq.perceptual.vgg16 = lambda pretrained=True, progress=False: _VGG(copy.deepcopy(feats))
    real_hub = torch.hub.load_state_dict_from_url
    torch.hub.load_state_dict_from_url = lambda url, progress=False, **k: [w.clone() for w in lins]
    try:
        # the official construction (enc_dec_lib.py)
        off_lpips = piq.LPIPS(replace_pooling=True, reduction="none")
    finally:
        torch.hub.load_state_dict_from_url = real_hub
    my_lpips = PaperLPIPS.from_files(tmp)

    diff = KarrasDenoiser(args, None, None, feature_extractor=off_lpips)
    diff.teacher_model = teacher_off
    b = 2
    x0 = torch.rand(b, 3, res, res, generator=torch.Generator().manual_seed(11)) * 2 - 1
    grid = karras_sigmas(18, 0.002, 80.0, 7.0)
    for t_i, k, s_extra in ((0, 17, 0), (3, 5, 2), (10, 1, 4)):
        u_i = t_i + k
        s_i = u_i + s_extra
        ind = torch.full((b,), float(t_i))
        gen = torch.Generator().manual_seed(21)
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(21))
        # official pieces of ctm_losses (karras_diffusion.py 467-512) with these draws
        t, t_dt, s = diff.get_t(ind), diff.get_t(ind + k), diff.get_t(torch.full((b,), float(s_i)))
        x_t = x0 + noise * t.view(-1, 1, 1, 1)
        est = diff.get_ctm_estimate(x_t, t, t_dt, s, off, off, True, "target_model_sg", "model", False)
        x_t_dt = diff.heun_solver(off, x_t, ind, 4, t, t_dt, ctm=True, num_step=k)
        tgt = diff.get_ctm_target(x_t_dt, t_dt, s, off, off, True, "model_sg")
        want = diff.get_CTM_loss(est, tgt, torch.ones(b), 0)
        idx = (torch.full((b,), t_i), torch.full((b,), u_i), torch.full((b,), s_i), k)
        ctm_losses.sample_ctm_indices = lambda *a, idx=idx, **kw2: idx
        got, _ = CTMLoss(grid, 17, my_lpips, "heun")(mine.net, mine.net, teacher, x0, None, gen, None, None)
        a, r = _rel(got, want)
        print(f"  CTM t={float(grid[t_i]):8.4f} u={float(grid[u_i]):8.4f} s={float(grid[s_i]):8.4f} "
              f"k={k:2d}: official {want.tolist()}  abs {a:.3e} rel {r:.3e}")

    diff.diffusion_schedule_sampler = Sampler(args)
    x0 = torch.rand(5, 3, res, res, generator=torch.Generator().manual_seed(12)) * 2 - 1
    torch.manual_seed(7)
    want = diff.get_DSM_loss(off, x0, {}, None, 0, 0)
    torch.manual_seed(7)
    got = DSMLoss(grid, -1.2, 1.2, 0.5, sampler="halflognormal")(mine.net, x0)
    a, r = _rel(got, want)
    print(f"  DSM (5 samples): official {[round(v, 6) for v in want.tolist()]}  abs {a:.3e} rel {r:.3e}")
    _adaptive_micro_batches(diff, off, teacher, mine, my_lpips, grid, res, ctm_losses, CTMLoss, DSMLoss)


def _adaptive_micro_batches(diff, off, teacher, mine, my_lpips, grid, res, ctm_losses, CTMLoss, DSMLoss):
    """lambda_DSM per micro-batch (karras_diffusion.py 384-392: calculate_adaptive_weight of the micro-batch's
    mean CTM and DSM losses at the last layer, inside train_util.py 1043's micro-batch loop) vs ctmtool's
    `adaptive_weight` at `last_layer(net)` on the same two micro-batches of 3 rows; and the whole 6-row
    batch's."""
    from ctmtool.losses.gan import adaptive_weight
    from ctmtool.train.teacher_objective import last_layer

    print("\n== adaptive lambda_DSM on two micro-batches of 3 rows (official calculate_adaptive_weight vs "
          "ctmtool)")
    # the official CIFAR-10 choice, dec['32x32_aux_conv']
    off_last = off.model.dec[f"{res}x{res}_aux_conv"].weight
    mine.net.requires_grad_(True)
    my_last = last_layer(mine.net)
    print(f"  last layer: official dec.{res}x{res}_aux_conv.weight {tuple(off_last.shape)}; ctmtool "
          f"{next(n for n, p in mine.net.named_parameters() if p is my_last)} {tuple(my_last.shape)}")
    x0 = torch.rand(6, 3, res, res, generator=torch.Generator().manual_seed(13)) * 2 - 1
    t_i, k, s_i = 3, 5, 10
    with torch.enable_grad():
        for m in (0, 1, None):
            rows = x0 if m is None else x0[3 * m:3 * m + 3]
            b = rows.shape[0]
            noise = torch.randn(rows.shape, generator=torch.Generator().manual_seed(30 + (m or 0)))
            ind = torch.full((b,), float(t_i))
            t, t_dt, s = diff.get_t(ind), diff.get_t(ind + k), diff.get_t(torch.full((b,), float(s_i)))
            x_t = rows + noise * t.view(-1, 1, 1, 1)
            est = diff.get_ctm_estimate(x_t, t, t_dt, s, off, off, True, "target_model_sg", "model", False)
            with torch.no_grad():
                x_t_dt = diff.heun_solver(off, x_t, ind, 4, t, t_dt, ctm=True, num_step=k)
                tgt = diff.get_ctm_target(x_t_dt, t_dt, s, off, off, True, "model_sg")
            ctm_off = diff.get_CTM_loss(est, tgt, torch.ones(b), 0)
            torch.manual_seed(40 + (m or 0))
            dsm_off = diff.get_DSM_loss(off, rows, {}, None, 0, 0)
            w_off = diff.calculate_adaptive_weight(ctm_off.mean(), dsm_off.mean(), last_layer=off_last)

            idx = (torch.full((b,), t_i), torch.full((b,), t_i + k), torch.full((b,), s_i), k)
            ctm_losses.sample_ctm_indices = lambda *a, idx=idx, **kw2: idx
            gen = torch.Generator().manual_seed(30 + (m or 0))
            ctm_me, _ = CTMLoss(grid, 17, my_lpips, "heun")(mine.net, mine.net, teacher, rows, None, gen,
                                                            None, None)
            torch.manual_seed(40 + (m or 0))
            dsm_me = DSMLoss(grid, -1.2, 1.2, 0.5, sampler="halflognormal")(mine.net, rows)
            w_me = adaptive_weight(ctm_me.mean(), dsm_me.mean(), my_last, 0.0, 1e4)
            what = "whole batch (6 rows)" if m is None else f"micro-batch {m} (rows {3 * m}-{3 * m + 2})"
            print(f"  {what:<28} official {float(w_off):.7g}  ctmtool {float(w_me):.7g}  "
                  f"rel {abs(float(w_me) - float(w_off)) / abs(float(w_off)):.2e}")


def _discriminator():
    import timm
    from pg_modules.discriminator import MultiScaleD
    from pg_modules.projector import F_RandomProj

    from ctmtool.losses.gan import d_hinge_loss, g_hinge_loss
    from ctmtool.nets.projected_gan import BACKBONES, ProjectedDiscriminator

    print("\n== Projected-GAN discriminator (random timm weights shared by both sides)")
    torch.manual_seed(4)
    nets = {n: timm.create_model(n, pretrained=False).eval() for n in BACKBONES}
    import feature_networks.pretrained_builder as pb

    def create_model(name, pretrained=True, **k):
        m = copy.deepcopy(nets[name])
        if not hasattr(m, "act1"):
            m.act1 = torch.nn.Identity()  # new timm: bn1 is BatchNormAct2d (the activation is inside)
        return m

    pb.timm = types.SimpleNamespace(create_model=create_model)
    import feature_networks.vit as fv
    fv.timm = pb.timm
    torch.manual_seed(5)
    feats, discs = {}, {}
    for n in BACKBONES:
        feats[n] = F_RandomProj(n, im_res=16).train(False).requires_grad_(False)
        discs[n] = MultiScaleD(channels=feats[n].CHANNELS, resolutions=feats[n].RESOLUTIONS,
                               im_res=16).train()
    mine = ProjectedDiscriminator({n: copy.deepcopy(nets[n]) for n in BACKBONES})
    # copy the official random projections and heads into ctmtool's, in module order (shapes checked)
    for n in BACKBONES:
        off_sd = {k: v for k, v in feats[n].state_dict().items()
                  if k.startswith("scratch.") or (n.startswith("deit") and k.startswith("pretrained.layer"))}
        my_sd = dict(mine.features[n].state_dict())
        order = [k for k in my_sd if k.startswith("maps.post.")] + [k for k in my_sd
                                                                    if k.startswith("ccm.")] + \
            [k for k in my_sd if k.startswith("csm.")]
        off_order = ([k for k in off_sd if k.startswith("pretrained.layer")]
                     + [f"scratch.layer{i}_ccm.{p}" for i in range(4) for p in ("weight", "bias")]
                     + [f"scratch.layer{i}_csm.out_conv.{p}" for i in range(4) for p in ("weight", "bias")])
        assert len(order) == len(off_order), (n, len(order), len(off_order))
        for a, b in zip(order, off_order, strict=True):
            assert my_sd[a].shape == off_sd[b].shape, (a, b)
            my_sd[a] = off_sd[b].clone()
        mine.features[n].load_state_dict(my_sd)
        off_h, my_h = discs[n].state_dict(), mine.heads[n].state_dict()
        assert len(off_h) == len(my_h)
        new = {}
        for a, b in zip(my_h, off_h, strict=True):
            assert my_h[a].shape == off_h[b].shape, (a, b)
            new[a] = off_h[b].clone()
        mine.heads[n].load_state_dict(new)
    from torchvision.transforms import Normalize

    def official_logits(x):
        out = []
        for n in BACKBONES:
            xn = Normalize(feats[n].normstats["mean"], feats[n].normstats["std"])(x.add(1).div(2))
            xn = torch.nn.functional.interpolate(xn, 224, mode="bilinear", align_corners=False)
            out.append(discs[n](feats[n](xn), None))
        return out

    xn = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(7))
    for n in BACKBONES:  # the projected feature maps themselves
        a, b = mine.features[n](xn), feats[n](xn)
        worst = max(_rel(a[i], b[str(i)])[1] for i in range(4))
        print(f"  {n:32s} the four projected maps: worst rel {worst:.3e}")
    real = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(8)) * 2 - 1
    fake = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(9)) * 2 - 1
    for mode in ("train", "eval"):
        for m in discs.values():
            m.train(mode == "train")
        mine.train(mode == "train")
        w_r, w_f = official_logits(real), official_logits(fake)
        g_r, g_f = mine(real), mine(fake)
        for n, a, b in zip(BACKBONES, g_r, w_r, strict=True):
            d, r = _rel(a, b)
            print(f"  {mode:5s} {n:32s} logits {tuple(a.shape)}: abs {d:.3e} rel {r:.3e}")
        # the official losses (karras_diffusion.py 425-447): per-row means over the list extended by each
        # tensor
        rows_r, rows_f = [row for t in w_r for row in t], [row for t in w_f for row in t]
        off_g = sum((-l).mean() for l in rows_f) / len(rows_f)
        off_d = sum(torch.relu(1 - l).mean() for l in rows_r) / len(rows_r) + \
            sum(torch.relu(1 + l).mean() for l in rows_f) / len(rows_f)
        print(f"  {mode:5s} hinge G: official {off_g.item():.6f} ctmtool {g_hinge_loss(g_f).item():.6f}; "
              f"D: official {off_d.item():.6f} ctmtool {d_hinge_loss(g_r, g_f).item():.6f}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python bench/xcheck_ctm_cifar10.py PATH_TO_CTM_CIFAR10_CHECKOUT")
    main(sys.argv[1])
