"""`ctmtool import` of every official format from the command line, then `ctmtool sample` / `translate` from
the result.

Each file is written in its published format with small random weights: OpenAI's ADM teacher
(`edm_imagenet64_ema.pt`: a `UNetModel` state dict), Sony's CTM (`ema_0.999_*.pt`: the same with
`time_embed_s`), ctm-cifar10 (`EDMPrecond_CTM` state dict), GCTM (`train_gctm.py`'s dict), and NVIDIA's EDM
pickles (a SongUNet, and the ImageNet ADM `edm-imagenet-64x64-cond-adm.pkl` layout: `EDMPrecond` around a
`DhariwalUNet`, built here from NVlabs/edm training/networks.py 134-187, 372-433 with the stand-ins of
tests/importers/test_edm_pickle.py; nothing in the pickle runs). bench/xcheck_edm_adm.py and
bench/xcheck_adm.py compare the same conversions with the official code.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F
from typer.testing import CliRunner

from ctmtool.cli.app import app
from ctmtool.core.models import build_precond, load_model
from ctmtool.nets.adm import ADMUNet

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "importers"))
import test_edm_pickle as edm_t  # noqa: E402  (EDM's persistent-class stand-ins)
import test_importers as imp_t  # noqa: E402  (writers of the ctm-cifar10 / GCTM formats)

ENV = {"COLUMNS": "200"}
ADM = dict(model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), head_channels=16)


def _cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args], env=ENV)


def _ok(r) -> dict:
    assert r.exit_code == 0, (r.exit_code, r.stdout, r.stderr)
    return json.loads(r.stdout)


def _adm_state(use_s: bool) -> dict:
    net = ADMUNet(16, 3, 3, label_dim=5, use_s=use_s, **ADM)
    g = torch.Generator().manual_seed(1)
    return {k: 0.1 * torch.randn(v.shape, generator=g) for k, v in net.state_dict().items()}


# --------------------------------------------------------------------------------------------------
# NVIDIA's DhariwalUNet (EDM's ADM), stand-ins with its layout, and its forward pass transcribed from EDM


class DhariwalBlock(edm_t.Persistent):
    """EDM's UNetBlock as DhariwalUNet builds it: adaptive scale, eps 1e-5, 64 channels per head, skip_scale
    1."""

    def __init__(self, gen, in_channels, out_channels, emb_channels, up=False, down=False, attention=False):
        super().__init__(gen, in_channels=in_channels, out_channels=out_channels, emb_channels=emb_channels,
                         up=up, down=down, attention=attention, channels_per_head=64, dropout=0.1)
        self.in_channels, self.out_channels, self.up, self.down = in_channels, out_channels, up, down
        self.num_heads = out_channels // 64 if attention else 0
        self.norm0 = edm_t.GroupNorm(gen, in_channels)
        self.conv0 = edm_t.Conv2d(gen, in_channels, out_channels, 3, up=up, down=down)
        self.affine = edm_t.Linear(gen, emb_channels, 2 * out_channels)
        self.norm1 = edm_t.GroupNorm(gen, out_channels)
        self.conv1 = edm_t.Conv2d(gen, out_channels, out_channels, 3)
        self.skip = None
        if out_channels != in_channels or up or down:
            kernel = 1 if out_channels != in_channels else 0
            self.skip = edm_t.Conv2d(gen, in_channels, out_channels, kernel, up=up, down=down)
        if attention:
            self.norm2 = edm_t.GroupNorm(gen, out_channels)
            self.qkv = edm_t.Conv2d(gen, out_channels, 3 * out_channels, 1)
            self.proj = edm_t.Conv2d(gen, out_channels, out_channels, 1)


class DhariwalUNet(edm_t.Persistent):
    def __init__(self, gen, img_resolution, in_channels, out_channels, label_dim=0, augment_dim=0,
                 model_channels=192, channel_mult=(1, 2, 3, 4), num_blocks=3, attn_resolutions=(32, 16, 8),
                 record=None, **_):
        super().__init__(gen, **record)
        emb = 4 * model_channels
        self.map_noise = edm_t.PositionalEmbedding(gen, model_channels)
        self.map_augment = edm_t.Linear(gen, augment_dim, model_channels, bias=False) if augment_dim else None
        self.map_layer0 = edm_t.Linear(gen, model_channels, emb)
        self.map_layer1 = edm_t.Linear(gen, emb, emb)
        self.map_label = edm_t.Linear(gen, label_dim, emb, bias=False) if label_dim else None
        self.enc, cout = torch.nn.ModuleDict(), in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                cin, cout = cout, model_channels * mult
                self.enc[f"{res}x{res}_conv"] = edm_t.Conv2d(gen, cin, cout, 3)
            else:
                self.enc[f"{res}x{res}_down"] = DhariwalBlock(gen, cout, cout, emb, down=True)
            for idx in range(num_blocks):
                cin, cout = cout, model_channels * mult
                self.enc[f"{res}x{res}_block{idx}"] = DhariwalBlock(gen, cin, cout, emb,
                                                                    attention=res in attn_resolutions)
        skips = [b.out_channels for b in self.enc.values()]
        self.dec = torch.nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            if level == len(channel_mult) - 1:
                self.dec[f"{res}x{res}_in0"] = DhariwalBlock(gen, cout, cout, emb, attention=True)
                self.dec[f"{res}x{res}_in1"] = DhariwalBlock(gen, cout, cout, emb)
            else:
                self.dec[f"{res}x{res}_up"] = DhariwalBlock(gen, cout, cout, emb, up=True)
            for idx in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), model_channels * mult
                self.dec[f"{res}x{res}_block{idx}"] = DhariwalBlock(gen, cin, cout, emb,
                                                                    attention=res in attn_resolutions)
        self.out_norm = edm_t.GroupNorm(gen, cout)
        self.out_conv = edm_t.Conv2d(gen, cout, out_channels, 3)


def _conv(c, x):
    if c.up:
        x = F.interpolate(x, scale_factor=2, mode="nearest")  # conv_transpose with the [1,1] filter x 4
    if c.down:
        x = F.avg_pool2d(x, 2)  # conv2d with the [1,1] filter, stride 2
    return x if c.weight is None else F.conv2d(x, c.weight, c.bias, padding=c.weight.shape[-1] // 2)


def _gn(n, x):
    return F.group_norm(x, n.num_groups, n.weight, n.bias, n.eps)


def _block(b, x, emb):
    orig = x
    x = _conv(b.conv0, F.silu(_gn(b.norm0, x)))
    scale, shift = F.linear(emb, b.affine.weight, b.affine.bias)[:, :, None, None].chunk(2, dim=1)
    x = _conv(b.conv1, F.silu(torch.addcmul(shift, _gn(b.norm1, x), scale + 1)))
    x = x + (_conv(b.skip, orig) if b.skip is not None else orig)
    if b.num_heads:
        q, k, v = _conv(b.qkv, _gn(b.norm2, x)).reshape(x.shape[0] * b.num_heads, x.shape[1] // b.num_heads,
                                                        3,
                                                          -1).unbind(2)
        w = torch.einsum("ncq,nck->nqk", q, k / math.sqrt(q.shape[1])).softmax(dim=2)
        x = _conv(b.proj, torch.einsum("nqk,nck->ncq", w, v).reshape(*x.shape)) + x
    return x


def dhariwal_denoise(pre, x, sigma, onehot):
    """EDMPrecond.forward (networks.py 654-668) around DhariwalUNet.forward (435-470), from the stand-in's
    tensors."""
    m, s = pre.model, sigma.reshape(-1, 1, 1, 1)
    c_skip, c_out, c_in = 0.25 / (s**2 + 0.25), s * 0.5 / (s**2 + 0.25).sqrt(), 1 / (0.25 + s**2).sqrt()
    half = m.map_noise.num_channels // 2
    freqs = (1 / 10000) ** (torch.arange(half, dtype=torch.float32) / half)
    emb = torch.outer(sigma.log() / 4, freqs)
    emb = torch.cat([emb.cos(), emb.sin()], dim=1)
    emb = F.linear(F.silu(F.linear(emb, m.map_layer0.weight, m.map_layer0.bias)), m.map_layer1.weight,
                   m.map_layer1.bias)
    emb = F.silu(emb + F.linear(onehot, m.map_label.weight))
    h, skips = c_in * x, []
    for blk in m.enc.values():
        h = _block(blk, h, emb) if isinstance(blk, DhariwalBlock) else _conv(blk, h)
        skips.append(h)
    for blk in m.dec.values():
        if h.shape[1] != blk.in_channels:
            h = torch.cat([h, skips.pop()], dim=1)
        h = _block(blk, h, emb)
    return c_skip * x + c_out * _conv(m.out_conv, F.silu(_gn(m.out_norm, h)))


def _edm_adm_pickle(tmp_path: Path, sentinel: Path) -> tuple[Path, object]:
    cls = edm_t._precond("EDMPrecond", dict(sigma_min=0, sigma_max=float("inf"), sigma_data=0.5))
    saved = edm_t.DhariwalUNet
    edm_t.DhariwalUNet = DhariwalUNet  # the precond factory looks the network class up in test_edm_pickle
    try:
        pre = cls(torch.Generator().manual_seed(0), img_resolution=16, img_channels=3, label_dim=5,
                  use_fp16=False, model_type="DhariwalUNet", model_channels=128, channel_mult=[1, 1],
                  num_blocks=1, attn_resolutions=[8], augment_dim=9, dropout=0.1).eval()
    finally:
        edm_t.DhariwalUNet = saved
    path = tmp_path / "edm-imagenet-16x16-cond-adm.pkl"
    path.write_bytes(edm_t.edm_dumps(sentinel, ema=pre, loss_fn=None, augment_pipe=None, dataset_kwargs={}))
    return path, pre


# --------------------------------------------------------------------------------------------------
# One file per official format


def _write(fmt: str, tmp_path: Path) -> tuple[Path, list[str], object]:
    """(file, extra import options, an oracle for the imported model's output or None)."""
    if fmt == "openai-adm":
        sd = _adm_state(False)
        f = tmp_path / "edm_imagenet64_ema.pt"
        torch.save(sd, f)
        return f, ["--resolution", 16, "--head-channels", 16], None
    if fmt == "sony-ctm":
        f = tmp_path / "ema_0.999_006000.pt"
        torch.save(_adm_state(True), f)
        return f, ["--resolution", 16, "--head-channels", 16], None
    if fmt == "ctm-cifar10":
        src = imp_t._perturbed(build_precond("ctm", imp_t._preset(), (3, 16, 16)))
        f = tmp_path / "ema_0.999_000200.pt"
        torch.save(imp_t._official_ctm_names(src.state_dict()), f)
        return f, [], None
    if fmt == "edm-songunet":
        ema = edm_t.build(edm_t.VPPrecond, **edm_t.DDPMPP)
        f, _ = edm_t.edm_snapshot(tmp_path, "edm-tiny-16x16-uncond-vp.pkl", ema, tmp_path / "code-was-run")
        return f, [], None
    if fmt == "edm-adm":
        f, pre = _edm_adm_pickle(tmp_path, tmp_path / "code-was-run")
        return f, [], pre
    raise AssertionError(fmt)


@pytest.mark.parametrize("fmt,kind", [("openai-adm", "teacher"), ("sony-ctm", "ctm"), ("ctm-cifar10", "ctm"),
                                      ("edm-songunet", "teacher"), ("edm-adm", "teacher")])
def test_import_then_sample_from_the_command_line(tmp_path, fmt, kind):
    f, extra, _ = _write(fmt, tmp_path)
    out = tmp_path / "imported.safetensors"
    info = _ok(_cli("import", f, "--out", out, *extra, "--json"))
    assert info["kind"] == kind and out.is_file() and info["data_shape"] == [3, 16, 16]
    steps = ["--steps", 2] if kind == "teacher" else ["--nfe", 1]
    res = _ok(_cli("sample", "--ckpt", out, "--n", 2, *steps, "--out", tmp_path / "s.npz", "--device", "cpu",
                   "--json"))
    x = np.load(tmp_path / "s.npz")["samples"]
    assert res["n"] == 2 and x.shape[0] == 2 and np.isfinite(x).all()
    assert not (tmp_path / "code-was-run").exists()


def test_edm_imagenet_adm_pickle_denoises_as_edm(tmp_path):
    """NVIDIA's DhariwalUNet layout imports as ctmtool's ADM: D(x, sigma, y) equals EDM's forward pass."""
    f, _, pre = _write("edm-adm", tmp_path)
    info = _ok(_cli("import", f, "--out", tmp_path / "a.safetensors", "--json"))
    assert info["label_dim"] == 5
    m = load_model(tmp_path / "a.safetensors")
    assert m.preset.net.adm.qkv_order == "heads" and m.preset.net.adm.time_scale == 1.0
    assert m.meta["dropped"] == ["map_augment.weight"]
    g = torch.Generator().manual_seed(5)
    y = torch.tensor([0, 4])
    with torch.no_grad():
        for sigma in (40.0, 1.3, 0.01):
            x = sigma * torch.randn(2, 3, 16, 16, generator=g)
            want = dhariwal_denoise(pre, x, torch.full((2,), sigma), F.one_hot(y, 5).float())
            got = m.net.denoise(x, torch.full((2,), sigma), labels=y)
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_gctm_import_with_source_noise_then_translate(tmp_path):
    """A GCTM file imports with its X1_eps_std; `translate` then computes G(x1 + eps_std * eps, 1, 0) with the
    eps of item i's seed, as the official evaluation on Sampler.sample_X1 does."""
    from ctmtool.core.noise import ImageNoise

    p = imp_t._preset()
    src = imp_t._perturbed(build_precond("gctm", p, (3, 16, 16)))
    rng = torch.Generator().manual_seed(1)
    net = imp_t._gctm_official(src.state_dict(), rng)
    f = tmp_path / "idx_250_best.pt"
    torch.save({"X0_eval": torch.zeros(1), "X1_eval": torch.zeros(1), "net": net, "net_ema": net,
                "opt_CTM": {}, "avgmeter": {}, "best_FID": 30.0}, f)
    out = tmp_path / "g.safetensors"
    r = _cli("import", f, "--out", out, "--var0", 0.23, "--var1", 0.01, "--cov01", 0.0, "--x1-eps-std", 0.05)
    assert r.exit_code == 0, r.stderr
    m = load_model(out)
    assert m.preset.gctm.source_noise == 0.05 and math.isclose(m.meta["moments"]["var1"], 0.01 + 0.05**2)
    u8 = torch.randint(0, 256, (3, 16, 16, 3), generator=rng, dtype=torch.uint8)
    np.savez(tmp_path / "x1.npz", samples=u8.numpy())  # images: uint8 NHWC
    _ok(_cli("translate", tmp_path / "x1.npz", "--ckpt", out, "--out", tmp_path / "y.npz", "--seed", 7,
             "--json"))
    y = torch.from_numpy(np.load(tmp_path / "y.npz")["samples"]).int()
    x1 = u8.permute(0, 3, 1, 2).float() / 127.5 - 1
    eps = ImageNoise([7, 8, 9], (3, 16, 16), "cpu")()
    with torch.no_grad():
        want = m.net.jump(x1 + 0.05 * eps, torch.ones(3), torch.zeros(3))
        plain = m.net.jump(x1, torch.ones(3), torch.zeros(3))

    def u8_of(v):
        return ((v + 1) * 127.5).round().clamp(0, 255).int().permute(0, 2, 3, 1)

    assert (y - u8_of(want)).abs().max() <= 1  # equal up to a rounding boundary
    assert (y - u8_of(plain)).abs().max() > 3  # the source noise is really there


def test_options_of_another_format_are_refused(tmp_path):
    f, _, _ = _write("ctm-cifar10", tmp_path)
    r = _cli("import", f, "--out", tmp_path / "x.safetensors", "--var0", 0.2)
    assert r.exit_code == 2 and r.stderr.strip().startswith("error: ") and "var0" in r.stderr
    assert not (tmp_path / "x.safetensors").exists()
