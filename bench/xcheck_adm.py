"""Cross-check ctmtool's ADM U-Net against the official code (run by hand; not part of CI).

    python bench/xcheck_adm.py PATH_TO_SONY_CTM_CHECKOUT [PATH_TO_CONSISTENCY_MODELS_CHECKOUT]

1. Sony's `UNetModel(training_mode='ctm')` (sony/ctm code/cm/unet.py) and ctmtool's `ADMUNet(use_s=True)`
   get the same random weights (every tensor, zero-initialised ones included, redrawn); the raw networks
   are compared at several (t, s, label), then Sony's g / G (`KarrasDenoiser.get_denoised_and_G`, EDM
   inner and Euler outer parametrisation) against ctmtool's `CTMPrecond.g` / `.jump`.
2. OpenAI's `UNetModel` (openai/consistency_models cm/unet.py) with random weights is saved with
   `torch.save(state_dict)` as the release does, imported by `ctmtool.importers.import_file`, and the
   teacher's denoiser D(x, sigma) is compared with OpenAI's `KarrasDenoiser.denoise`.

Both official networks run on the CPU with their non-flash attention (Sony: `attention_type="legacy"`; OpenAI,
whose UNetModel always builds flash attention: its `QKVAttentionLegacy` swapped in), which splits qkv
three-major as their flash path does. OpenAI's fallback casts q, k, v to float16 on the CPU;
the figures are printed as is and with that cast neutralised (the float32 comparison). Modules the
official code imports but these paths never call are stubbed here: flash_attn, xformers, blobfile,
mpi4py, piq, and Sony's cm.script_util / cm.enc_dec_lib. einops must be importable (pip install einops,
or put it on PYTHONPATH).
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import types
from pathlib import Path
from types import SimpleNamespace

import torch

from ctmtool.checkpoint import load_checkpoint
from ctmtool.config import ADMConfig, NetConfig, Preset
from ctmtool.core.models import build_precond, model_from_checkpoint
from ctmtool.importers import import_file

CFG = dict(res=32, model_channels=64, mult=(1, 2, 2), blocks=2, attn=(16, 8), head=32, classes=10)
CASES = [(80.0, 0.002), (10.0, 2.0), (1.0, 1.0), (0.5, 0.002), (0.02, 0.01)]


def stub(name: str, **attrs) -> None:
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)
    sys.modules[name] = mod


def install_stubs() -> None:
    def unused(*args, **kwargs):
        raise RuntimeError("stubbed in bench/xcheck_adm.py")

    stub("flash_attn")
    stub("flash_attn.flash_attn_interface", flash_attn_varlen_qkvpacked_func=unused)
    stub("flash_attn.bert_padding", unpad_input=unused, pad_input=unused)
    stub("flash_attn.flash_attention", FlashAttention=lambda **kwargs: torch.nn.Identity())  # replaced below
    stub("xformers")
    stub("xformers.components")
    stub("xformers.components.attention", ScaledDotProduct=unused)
    stub("blobfile", BlobFile=unused, join=unused, basename=unused, listdir=unused, isdir=unused,
         exists=unused)
    stub("mpi4py", MPI=SimpleNamespace())
    stub("piq", LPIPS=unused)


def import_cm(root: Path, extra_stubs: bool):
    """The official `cm` package of a checkout (repo root or its code/ folder), freshly imported."""
    for name in [m for m in sys.modules if m == "cm" or m.startswith("cm.")]:
        del sys.modules[name]
    base = root / "code" if (root / "code" / "cm").is_dir() else root
    if not (base / "cm" / "unet.py").is_file():
        sys.exit(f"error: no cm/unet.py under {root}")
    sys.path.insert(0, str(base))
    try:
        import cm.unet as unet
        if extra_stubs:  # Sony's karras_diffusion imports heavy training helpers it does not need here
            stub("cm.script_util")
            stub("cm.enc_dec_lib", get_xl_feature=None, gaussian_blur=None)
        import cm.karras_diffusion as kd
    finally:
        sys.path.remove(str(base))
    return unet, kd


def randomise(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Redraw every tensor (so zero-initialised layers matter too); scales keep activations O(1)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            fan_in = p[0].numel() if p.ndim > 1 else 1
            scale = 1 / math.sqrt(fan_in) if p.ndim > 1 else 0.1
            p.copy_(torch.randn(p.shape, generator=gen) * scale + (1.0 if name.endswith("norm.weight") or
                                                                       ".0.weight" in name and p.ndim == 1
                                                                   else 0.0))


def adm_preset(use_classes: bool) -> Preset:
    adm = ADMConfig(model_channels=CFG["model_channels"], channel_mult=list(CFG["mult"]),
                    num_res_blocks=CFG["blocks"], attn_resolutions=list(CFG["attn"]),
                    head_channels=CFG["head"])
    return Preset(net=NetConfig(kind="adm", adm=adm, label_dim=CFG["classes"] if use_classes else 0),
                  data={"source": "folder", "resolution": CFG["res"], "channels": 3})


def official_kwargs(training_mode: str) -> dict:
    extra = {"training_mode": training_mode, "attention_type": "legacy"} if training_mode else {}
    return dict(image_size=CFG["res"], in_channels=3, model_channels=CFG["model_channels"], out_channels=3,
                num_res_blocks=CFG["blocks"],
                attention_resolutions=tuple(CFG["res"] // r for r in CFG["attn"]), dropout=0.0,
                channel_mult=CFG["mult"], num_classes=CFG["classes"], num_head_channels=CFG["head"],
                use_scale_shift_norm=True, resblock_updown=True, **extra)


def report(tag: str, a: torch.Tensor, b: torch.Tensor) -> float:
    d = (a.double() - b.double()).abs().max().item()
    rel = d / b.double().abs().max().item()
    print(f"  {tag:<44} max|diff| {d:.3e}   rel {rel:.3e}")
    return rel


def check_sony(root: Path, gen: torch.Generator) -> float:
    unet, kd = import_cm(root, extra_stubs=True)
    official = unet.UNetModel(**official_kwargs("ctm")).eval()
    randomise(official, gen)
    ours = build_precond("ctm", adm_preset(True), (3, CFG["res"], CFG["res"])).eval()
    ours.net.load_state_dict(official.state_dict(), strict=True)
    den = object.__new__(kd.KarrasDenoiser)
    den.args = SimpleNamespace(sigma_data=0.5, sigma_min=0.002, target_subtract=False, rescaling=False,
                               inner_parametrization="edm", outer_parametrization="euler",
                               training_mode="ctm")
    print("Sony UNetModel(training_mode='ctm') vs ctmtool ADMUNet(use_s=True) / CTMPrecond")
    worst = 0.0
    b = 4
    x = torch.randn(b, 3, CFG["res"], CFG["res"], generator=gen)
    for t, s in CASES:
        y = torch.randint(0, CFG["classes"], (b,), generator=gen)
        tt, ss = torch.full((b,), t), torch.full((b,), s)
        xt = x * t
        with torch.no_grad():
            f_off = official(xt / math.sqrt(t * t + 0.25), 250 * torch.log(tt), y=y, s=250 * torch.log(ss))
            f_our = ours.net(xt / math.sqrt(t * t + 0.25), torch.log(tt) / 4, torch.log(ss) / 4, labels=y)
            g_off, G_off = den.get_denoised_and_G(official, xt, tt, s=ss, ctm=True, y=y)
            g_our, G_our = ours.g(xt, tt, ss, labels=y), ours.jump(xt, tt, ss, labels=y)
        worst = max(worst, report(f"F   t={t:<6} s={s:<6}", f_our, f_off),
                    report(f"g   t={t:<6} s={s:<6}", g_our, g_off),
                    report(f"G   t={t:<6} s={s:<6}", G_our, G_off))
    control = build_precond("ctm", adm_preset(True).model_copy(update={"net": adm_preset(True).net.model_copy(
        update={"adm": adm_preset(True).net.adm.model_copy(update={"qkv_order": "heads"})})}),
                            (3, CFG["res"], CFG["res"]))
    control.net.load_state_dict(official.state_dict(), strict=True)
    with torch.no_grad():
        g_ctl = control.eval().g(xt, tt, ss, labels=y)
    report("control: qkv_order='heads' (must differ)", g_ctl, g_off)
    return worst


def check_openai(root: Path, gen: torch.Generator) -> float:
    unet, kd = import_cm(root, extra_stubs=False)
    # always flash attention: swap in the CPU fallback
    official = unet.UNetModel(**official_kwargs("")).eval()
    for block in official.modules():
        if isinstance(block, unet.AttentionBlock):
            block.attention = unet.QKVAttentionLegacy(block.num_heads)
    randomise(official, gen)
    den = kd.KarrasDenoiser(sigma_data=0.5, sigma_max=80.0, sigma_min=0.002, loss_norm="l2")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "edm_tiny_ema.pt"
        torch.save(official.state_dict(), path)
        _, written = import_file(path, Path(tmp) / "edm_tiny_ema.safetensors", resolution=CFG["res"],
                                 head_channels=CFG["head"])
        model = model_from_checkpoint(load_checkpoint(written))
    print("OpenAI UNetModel (torch.save state dict -> ctmtool import) vs ctmtool EDMPrecond(ADMUNet)")
    worst = 0.0
    b = 4
    x = torch.randn(b, 3, CFG["res"], CFG["res"], generator=gen)
    for t, _ in CASES:
        y = torch.randint(0, CFG["classes"], (b,), generator=gen)
        tt = torch.full((b,), t)
        with torch.no_grad():
            ours = model.net.denoise(x * t, tt, labels=y)
            _, d_half = den.denoise(official, x * t, tt, y=y)
            half = torch.Tensor.half
            torch.Tensor.half = lambda self, *a, **k: self  # neutralise the CPU fallback's fp16 cast
            try:
                _, d_full = den.denoise(official, x * t, tt, y=y)
            finally:
                torch.Tensor.half = half
        report(f"D   sigma={t:<6} (official fp16 attention)", ours, d_half)
        worst = max(worst, report(f"D   sigma={t:<6} (fp16 cast neutralised)", ours, d_full))
    return worst


def check_paper_size(root: Path) -> None:
    """Sony's `create_model` with script_util.py's ImageNet-64 defaults vs the `imagenet64` preset: names and
    shapes."""
    from ctmtool.config import load_preset

    unet, _ = import_cm(root, extra_stubs=True)
    d = dict(attention_resolutions="32,16,8", num_channels=192, num_res_blocks=3, num_heads=4,
             num_head_channels=64, num_heads_upsample=-1, channel_mult="", dropout=0.0,
             use_scale_shift_norm=True, resblock_updown=True)
    ds = tuple(64 // int(r) for r in d["attention_resolutions"].split(","))
    official = unet.UNetModel(image_size=64, in_channels=3, model_channels=d["num_channels"], out_channels=3,
                              num_res_blocks=d["num_res_blocks"], attention_resolutions=ds,
                              dropout=d["dropout"], channel_mult=(1, 2, 3, 4), num_classes=1000,
                              num_heads=d["num_heads"], num_head_channels=d["num_head_channels"],
                              use_scale_shift_norm=True, resblock_updown=True, training_mode="ctm",
                              attention_type="legacy")
    ours = build_precond("ctm", load_preset("imagenet64"), (3, 64, 64)).net
    a = {k: tuple(v.shape) for k, v in official.state_dict().items()}
    b = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    print("paper size: Sony UNetModel(ImageNet-64 defaults, ctm) vs the imagenet64 preset")
    print(f"  tensors {len(a)} vs {len(b)}; same names and shapes: {a == b}; parameters "
          f"{sum(p.numel() for p in official.parameters()) / 1e6:.2f} M vs "
          f"{sum(p.numel() for p in ours.parameters()) / 1e6:.2f} M")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sony", type=Path, help="a checkout of github.com/sony/ctm")
    ap.add_argument("openai", type=Path, nargs="?", help="a checkout of github.com/openai/consistency_models")
    args = ap.parse_args()
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    install_stubs()
    print(f"tiny ADM: {CFG}; torch {torch.__version__}, float32, CPU")
    worst = check_sony(args.sony, gen)
    check_paper_size(args.sony)
    if args.openai is not None:
        worst = max(worst, check_openai(args.openai, gen))
    print(f"worst relative difference: {worst:.3e}")


if __name__ == "__main__":
    main()
