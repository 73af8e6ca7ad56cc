"""EDM pickle import against NVIDIA's own format, built here without ctmtool's network code.

What a published EDM pickle is (NVlabs/edm: `training/training_loop.py` writes it, `generate.py` reads
`pickle.load(f)['ema']`): `dict(ema=<precond>, loss_fn=<loss>, augment_pipe=<pipe>, dataset_kwargs=dict)`.
Every network object is an instance of a class decorated with `torch_utils.persistence.persistent_class`,
which pickles it as `_reconstruct_persistent_obj(meta)`, `meta = dict(type='class', version=6,
module_src=<the whole source of training/networks.py>, class_name=..., state=<the module's __dict__>)`; the
state holds `_parameters`, `_buffers`, `_modules` (torch `ModuleDict`s for `enc`/`dec`), plain attributes
and the constructor's `_init_args`/`_init_kwargs`.

The stand-in classes below have EDM's class names and state layout (names and shapes of every parameter
and buffer, read from `training/networks.py`) and nothing else: no forward pass, no ctmtool code. Their
weights come from a seeded generator, so the test knows every tensor the importer must deliver, under
which name. Their pickles carry module source and a reconstruct function that would create a sentinel
file if anything ever ran them.
"""

from __future__ import annotations

import copy
import math
import os
import pickle
import sys
import types

import numpy as np
import pytest
import torch
from torch import nn

from ctmtool.checkpoint import load_checkpoint
from ctmtool.core.models import model_from_checkpoint, student_from_teacher
from ctmtool.errors import UserError
from ctmtool.importers.edm_pickle import SafeUnpickler, import_edm_pickle, read_edm_pickle

# the constructor arguments EDM's train.py records for DDPM++ and NCSN++ (made tiny); channel_mult_emb and
# label_dropout are left to SongUNet's defaults and so are not recorded, as in the published pickles
DDPMPP = dict(model_type="SongUNet", embedding_type="positional", encoder_type="standard",
              decoder_type="standard", channel_mult_noise=1, resample_filter=[1, 1], model_channels=16,
              channel_mult=[1, 2], num_blocks=1, attn_resolutions=[8], dropout=0.13, augment_dim=9,
              use_fp16=False)
NCSNPP = dict(DDPMPP, embedding_type="fourier", encoder_type="residual", decoder_type="skip",
              channel_mult_noise=2, resample_filter=[1, 3, 3, 1])


# --------------------------------------------------------------------------------------------------
# Stand-ins for EDM's persistent classes: state only, weights from a seeded generator


def _sentinel_code(path) -> str:
    return f"open({str(path)!r}, 'w').write('EDM module source was executed')\n"


class Persistent(nn.Module):
    """A class under `@persistence.persistent_class`: records its kwargs and pickles as EDM's decorator
    does."""

    # replaced per pickle (see `edm_dumps`)
    module_src = "raise SystemExit('EDM module source was executed')\n"

    def __init__(self, gen: torch.Generator, **kwargs):
        super().__init__()
        self._gen = gen
        self._init_args, self._init_kwargs = (), copy.deepcopy(kwargs)

    def rand(self, *shape) -> nn.Parameter:
        return nn.Parameter(0.2 * torch.randn(*shape, generator=self._gen), requires_grad=False)

    def __reduce__(self):
        fields = list(object.__reduce__(self))  # (copyreg._reconstructor, (cls, object, None), __dict__)
        state = {k: v for k, v in fields[2].items() if k != "_gen"}
        meta = dict(type="class", version=6, module_src=Persistent.module_src, class_name=type(self).__name__,
                    state=state)
        return (sys.modules["torch_utils.persistence"]._reconstruct_persistent_obj, (meta,), None)


class Linear(Persistent):
    def __init__(self, gen, in_features, out_features, bias=True, **init):
        super().__init__(gen, in_features=in_features, out_features=out_features, bias=bias, **init)
        self.in_features, self.out_features = in_features, out_features
        self.weight = self.rand(out_features, in_features)
        self.bias = self.rand(out_features) if bias else None


class Conv2d(Persistent):
    def __init__(self, gen, in_channels, out_channels, kernel, bias=True, up=False, down=False,
                 resample_filter=(1, 1), fused_resample=False, **init):
        super().__init__(gen, in_channels=in_channels, out_channels=out_channels, kernel=kernel, bias=bias,
                         up=up, down=down, resample_filter=list(resample_filter),
                         fused_resample=fused_resample, **init)
        self.in_channels, self.out_channels, self.up, self.down = in_channels, out_channels, up, down
        self.fused_resample = fused_resample
        self.weight = self.rand(out_channels, in_channels, kernel, kernel) if kernel else None
        self.bias = self.rand(out_channels) if kernel and bias else None
        f = torch.as_tensor(resample_filter, dtype=torch.float32)
        self.register_buffer("resample_filter",
                             (torch.outer(f, f) / f.sum() ** 2)[None, None] if up or down else None)


class GroupNorm(Persistent):
    def __init__(self, gen, num_channels, eps=1e-5):
        super().__init__(gen, num_channels=num_channels, eps=eps)
        self.num_groups, self.eps = min(32, num_channels // 4), eps
        self.weight, self.bias = self.rand(num_channels), self.rand(num_channels)


class UNetBlock(Persistent):
    def __init__(self, gen, in_channels, out_channels, emb_channels, up=False, down=False, attention=False,
                 resample_filter=(1, 1), dropout=0.0):
        super().__init__(gen, in_channels=in_channels, out_channels=out_channels, emb_channels=emb_channels,
                         up=up, down=down, attention=attention, num_heads=1, dropout=dropout,
                         skip_scale=np.sqrt(0.5), eps=1e-6, resample_filter=list(resample_filter),
                         resample_proj=True, adaptive_scale=False, init=dict(init_mode="xavier_uniform"),
                         init_attn=dict(init_mode="xavier_uniform", init_weight=np.sqrt(0.2)))
        self.in_channels, self.out_channels, self.emb_channels = in_channels, out_channels, emb_channels
        self.num_heads, self.dropout, self.adaptive_scale = (1 if attention else 0), dropout, False
        self.skip_scale = np.sqrt(0.5)  # a NumPy scalar, as in EDM
        self.norm0 = GroupNorm(gen, in_channels, eps=1e-6)
        self.conv0 = Conv2d(gen, in_channels, out_channels, 3, up=up, down=down,
                            resample_filter=resample_filter)
        self.affine = Linear(gen, emb_channels, out_channels)
        self.norm1 = GroupNorm(gen, out_channels, eps=1e-6)
        self.conv1 = Conv2d(gen, out_channels, out_channels, 3)
        self.skip = None
        if out_channels != in_channels or up or down:
            self.skip = Conv2d(gen, in_channels, out_channels, 1, up=up, down=down,
                               resample_filter=resample_filter)
        if attention:
            self.norm2 = GroupNorm(gen, out_channels, eps=1e-6)
            self.qkv = Conv2d(gen, out_channels, out_channels * 3, 1)
            self.proj = Conv2d(gen, out_channels, out_channels, 1)


class PositionalEmbedding(Persistent):
    def __init__(self, gen, num_channels, endpoint=False):
        super().__init__(gen, num_channels=num_channels, endpoint=endpoint)
        self.num_channels, self.max_positions, self.endpoint = num_channels, 10000, endpoint


class FourierEmbedding(Persistent):
    def __init__(self, gen, num_channels):
        super().__init__(gen, num_channels=num_channels)
        self.register_buffer("freqs", torch.randn(num_channels // 2, generator=gen) * 16)


class SongUNet(Persistent):
    """The layout of EDM's SongUNet.__init__ (mapping, encoder and decoder dicts) for the given arguments."""

    def __init__(self, gen, img_resolution, in_channels, out_channels, label_dim=0, augment_dim=0,
                 model_channels=128, channel_mult=(1, 2, 2, 2), channel_mult_emb=4, num_blocks=4,
                 attn_resolutions=(16,), dropout=0.10, label_dropout=0, embedding_type="positional",
                 channel_mult_noise=1, encoder_type="standard", decoder_type="standard",
                 resample_filter=(1, 1), record=None):
        super().__init__(gen, **record)
        self.label_dropout = label_dropout
        emb, noise = model_channels * channel_mult_emb, model_channels * channel_mult_noise
        blk = dict(emb_channels=emb, dropout=dropout, resample_filter=resample_filter)
        self.map_noise = (PositionalEmbedding(gen, noise, endpoint=True) if embedding_type == "positional"
                          else FourierEmbedding(gen, noise))
        self.map_label = Linear(gen, label_dim, noise) if label_dim else None
        self.map_augment = Linear(gen, augment_dim, noise, bias=False) if augment_dim else None
        self.map_layer0 = Linear(gen, noise, emb)
        self.map_layer1 = Linear(gen, emb, emb)
        self.enc, cout, caux = nn.ModuleDict(), in_channels, in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                cin, cout = cout, model_channels
                self.enc[f"{res}x{res}_conv"] = Conv2d(gen, cin, cout, 3)
            else:
                self.enc[f"{res}x{res}_down"] = UNetBlock(gen, cout, cout, down=True, **blk)
                if encoder_type == "residual":
                    self.enc[f"{res}x{res}_aux_residual"] = Conv2d(gen, caux, cout, 3, down=True,
                                                                   fused_resample=True,
                                                                   resample_filter=resample_filter)
                    caux = cout
            for idx in range(num_blocks):
                cin, cout = cout, model_channels * mult
                self.enc[f"{res}x{res}_block{idx}"] = UNetBlock(gen, cin, cout,
                                                                attention=res in attn_resolutions, **blk)
        skips = [b.out_channels for name, b in self.enc.items() if "aux" not in name]
        self.dec = nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            if level == len(channel_mult) - 1:
                self.dec[f"{res}x{res}_in0"] = UNetBlock(gen, cout, cout, attention=True, **blk)
                self.dec[f"{res}x{res}_in1"] = UNetBlock(gen, cout, cout, **blk)
            else:
                self.dec[f"{res}x{res}_up"] = UNetBlock(gen, cout, cout, up=True, **blk)
            for idx in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), model_channels * mult
                attn = idx == num_blocks and res in attn_resolutions
                self.dec[f"{res}x{res}_block{idx}"] = UNetBlock(gen, cin, cout, attention=attn, **blk)
            if decoder_type == "skip" or level == 0:
                if decoder_type == "skip" and level < len(channel_mult) - 1:
                    self.dec[f"{res}x{res}_aux_up"] = Conv2d(gen, out_channels, out_channels, 0, up=True,
                                                             resample_filter=resample_filter)
                self.dec[f"{res}x{res}_aux_norm"] = GroupNorm(gen, cout, eps=1e-6)
                self.dec[f"{res}x{res}_aux_conv"] = Conv2d(gen, cout, out_channels, 3)


class DhariwalUNet(Persistent):
    """EDM's ADM network, which ctmtool does not import: its name is enough."""

    def __init__(self, gen, record=None, **kwargs):
        super().__init__(gen, **record)


def _precond(cls_name: str, attrs: dict):
    """EDM's VPPrecond / VEPrecond / EDMPrecond / iDDPMPrecond: recorded kwargs, attributes, `self.model`."""

    def __init__(self, gen, img_resolution, img_channels, label_dim=0, use_fp16=False, model_type="SongUNet",
                 **kwargs):
        own = {k: kwargs.pop(k) for k in list(kwargs) if k in attrs}
        Persistent.__init__(self, gen, img_resolution=img_resolution, img_channels=img_channels,
                            label_dim=label_dim, use_fp16=use_fp16, model_type=model_type, **own, **kwargs)
        self.img_resolution, self.img_channels, self.label_dim, self.use_fp16 = (img_resolution, img_channels,
                                                                                 label_dim, use_fp16)
        for k, v in {**attrs, **own}.items():
            setattr(self, k, v)
        model_kw = dict(img_resolution=img_resolution, in_channels=img_channels, out_channels=img_channels,
                        label_dim=label_dim, **kwargs)
        self.model = {"SongUNet": SongUNet, "DhariwalUNet": DhariwalUNet}[model_type](gen, **model_kw,
                                                                                      record=model_kw)

    return type(cls_name, (Persistent,), {"__init__": __init__})


VP_ATTRS = dict(beta_d=19.9, beta_min=0.1, M=1000, epsilon_t=1e-5)
VPPrecond = _precond("VPPrecond", VP_ATTRS)
VEPrecond = _precond("VEPrecond", dict(sigma_min=0.02, sigma_max=100))
EDMPrecond = _precond("EDMPrecond", dict(sigma_min=0, sigma_max=float("inf"), sigma_data=0.5))
iDDPMPrecond = _precond("iDDPMPrecond", dict(C1=0.001, C2=0.008, M=1000))


class Plain:
    """A persistent class that is not a torch module (EDM's VPLoss, AugmentPipe)."""

    def __init__(self, name: str, **attrs):
        self.__dict__.update(attrs, _name=name)

    def __reduce__(self):
        state = {k: v for k, v in self.__dict__.items() if k != "_name"}
        meta = dict(type="class", version=6, module_src=Persistent.module_src, class_name=self._name,
                    state=state)
        return (sys.modules["torch_utils.persistence"]._reconstruct_persistent_obj, (meta,), None)


def build(cls, seed: int = 0, res: int = 16, label_dim: int = 0, **network_kwargs):
    """What EDM's train.py does: construct_class_by_name(**network_kwargs, **interface_kwargs), seeded
    weights."""
    return cls(torch.Generator().manual_seed(seed), img_resolution=res, img_channels=3, label_dim=label_dim,
               **network_kwargs).eval()


def edm_dumps(sentinel, **entries) -> bytes:
    """Pickle `entries` as training_loop.py does, with `torch_utils.persistence` and `dnnlib` present only
    for the duration; the module source and the reconstruct function both create `sentinel` if ever run."""

    def _reconstruct_persistent_obj(meta):
        open(sentinel, "w").write("EDM reconstruction was called")

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    mods = {n: types.ModuleType(n) for n in ("torch_utils", "torch_utils.persistence")}
    mods["torch_utils.persistence"]._reconstruct_persistent_obj = _reconstruct_persistent_obj
    saved = {n: sys.modules.get(n) for n in mods}
    sys.modules.update(mods)
    Persistent.module_src = _sentinel_code(sentinel)
    try:
        return pickle.dumps(entries)  # the default protocol, as training_loop.py
    finally:
        for n, m in saved.items():
            if m is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = m


def edm_snapshot(tmp_path, name: str, ema, sentinel) -> tuple:
    """A network-snapshot pickle with EDM's four entries; returns (path, the tensors the importer must
    deliver)."""
    loss = Plain("VPLoss", beta_d=19.9, beta_min=0.1, epsilon_t=1e-5)
    aug = Plain("AugmentPipe", p=0.12, xflip=1e8, yflip=1, scale=1, rotate_frac=0.0)
    dataset = dict(class_name="training.dataset.ImageFolderDataset", path="cifar10-32x32.zip",
                   use_labels=False, xflip=False, cache=True, resolution=32, max_size=50000)
    path = tmp_path / name
    path.write_bytes(edm_dumps(sentinel, ema=ema, loss_fn=loss, augment_pipe=aug, dataset_kwargs=dataset))
    return path, {f"net.{k}": v.detach().clone() for k, v in ema.model.state_dict().items()}


@pytest.fixture
def sentinel(tmp_path):
    """A file that must never appear: pickled code creates it when run."""
    path = tmp_path / "code-was-run"
    yield path
    assert not path.exists(), path.read_text()


def _write(tmp_path, name: str, data: bytes):
    p = tmp_path / name
    p.write_bytes(data)
    return p


# --------------------------------------------------------------------------------------------------
# Every tensor, under EDM's name, and the recorded constructor arguments


def test_vp_ddpmpp_every_tensor_arrives_unchanged(tmp_path, sentinel):
    ema = build(VPPrecond, **DDPMPP)
    path, tensors = edm_snapshot(tmp_path, "edm-tiny-16x16-uncond-vp.pkl", ema, sentinel)
    messages = []
    ckpt = import_edm_pickle(path, out_path=tmp_path / "teacher.safetensors", progress=messages.append)
    assert messages and ckpt.path == tmp_path / "teacher.safetensors"
    assert "torch_utils.persistence" not in sys.modules and "training.networks" not in sys.modules

    state = ckpt.state("ema")
    assert set(state) == set(tensors)
    for k, v in tensors.items():
        assert state[k].dtype == v.dtype and torch.equal(state[k], v), k
    # a few of EDM's names and shapes for this configuration, worked out from training/networks.py by hand
    shapes = {"net.map_layer0.weight": (64, 16), "net.map_layer1.bias": (64,),
              "net.map_augment.weight": (16, 9), "net.enc.16x16_conv.weight": (16, 3, 3, 3),
              "net.enc.8x8_down.conv0.resample_filter": (1, 1, 2, 2),
              "net.enc.8x8_block0.qkv.weight": (96, 32, 1, 1),
              "net.enc.8x8_block0.skip.weight": (32, 16, 1, 1), "net.dec.8x8_in0.proj.weight": (32, 32, 1, 1),
              "net.dec.8x8_block0.conv0.weight": (32, 64, 3, 3),
              "net.dec.16x16_up.skip.resample_filter": (1, 1, 2, 2),
              "net.dec.16x16_block0.norm0.weight": (48,), "net.dec.8x8_block1.norm0.weight": (48,),
              "net.dec.16x16_block1.conv0.weight": (16, 32, 3, 3),
              "net.dec.16x16_aux_conv.weight": (3, 16, 3, 3)}
    for k, shape in shapes.items():
        assert tuple(state[k].shape) == shape, k
    assert "net.map_augment.bias" not in state and not any(k.startswith("net.map_noise") for k in state)
    assert torch.equal(state["net.enc.8x8_down.conv0.resample_filter"], torch.full((1, 1, 2, 2), 0.25))

    p = ckpt.preset
    assert (p.net.kind == "unet" and p.net.label_dim == 0 and ckpt.data_shape == (3, 16, 16)
            and ckpt.kind == "teacher")
    u = p.net.unet
    assert (u.model_channels, u.channel_mult, u.num_blocks, u.attn_resolutions) == (16, [1, 2], 1, [8])
    assert (u.dropout, u.augment_dim, u.embedding_type, u.resample_filter) == (0.13, 9, "positional", [1, 1])
    assert (u.channel_mult_emb, u.channel_mult_noise, u.encoder_type) == (4, 1, "standard")  # EDM's defaults
    assert p.diffusion.precond == "vp" and (p.diffusion.sigma_min, p.diffusion.sigma_max) == (0.002, 80.0)
    assert ckpt.meta["source"] == "edm-pickle" and ckpt.meta["class"] == "VPPrecond"
    assert (ckpt.meta["network"] == "SongUNet" and ckpt.meta["file"] == path.name
            and ckpt.meta["use_fp16"] is False)
    assert ckpt.meta["vp"] == VP_ATTRS
    assert ckpt.meta["precond_sigma_range"][1] == pytest.approx(math.sqrt(math.expm1(0.5 * 19.9 + 0.1)))

    # the saved teacher is EDM's VPPrecond (Karras et al. 2022, Table 1) around the imported network
    net = model_from_checkpoint(load_checkpoint(ckpt.path)).net  # the preconditioned network; F is net.net
    x, sigma = torch.randn(3, 3, 16, 16), torch.tensor([0.05, 1.0, 20.0])
    s = sigma.reshape(-1, 1, 1, 1)
    t = ((0.1**2 + 2 * 19.9 * (1 + sigma**2).log()).sqrt() - 0.1) / 19.9
    with torch.no_grad():
        expected = x - s * net.net(x / (s**2 + 1).sqrt(), 999 * t)
        torch.testing.assert_close(net.denoise(x, sigma), expected, rtol=1e-5, atol=1e-5)


def test_ve_ncsnpp_every_tensor_arrives_unchanged(tmp_path, sentinel):
    ema = build(VEPrecond, seed=1, **NCSNPP)
    path, tensors = edm_snapshot(tmp_path, "edm-tiny-16x16-uncond-ve.pkl", ema, sentinel)
    ckpt = import_edm_pickle(path)
    assert ckpt.path is None
    state = ckpt.state("ema")
    assert set(state) == set(tensors) and all(torch.equal(state[k], v) for k, v in tensors.items())
    # NCSN++'s own pieces: Fourier frequencies, the residual encoder path, the skip decoder's resampler
    assert state["net.map_noise.freqs"].shape == (16,) and state["net.map_layer0.weight"].shape == (64, 32)
    assert state["net.enc.8x8_aux_residual.weight"].shape == (16, 3, 3, 3)
    assert set(k for k in state
               if k.startswith("net.dec.16x16_aux_up.")) == {"net.dec.16x16_aux_up.resample_filter"}
    torch.testing.assert_close(state["net.dec.16x16_aux_up.resample_filter"][0, 0],
                               torch.outer(torch.tensor([1.0, 3, 3, 1]), torch.tensor([1.0, 3, 3, 1])) / 64)
    u = ckpt.preset.net.unet
    assert (u.embedding_type, u.encoder_type, u.decoder_type) == ("fourier", "residual", "skip")
    assert (u.channel_mult_noise, u.resample_filter) == (2, [1, 3, 3, 1])
    d = ckpt.preset.diffusion
    assert d.precond == "ve" and (d.sigma_min, d.sigma_max) == (0.02, 80.0)
    assert ckpt.meta["precond_sigma_range"] == [0.02, 100.0]
    net = model_from_checkpoint(ckpt).net  # the preconditioned network; F is net.net
    x, sigma = torch.randn(2, 3, 16, 16), torch.tensor([0.1, 30.0])
    with torch.no_grad():  # VE: c_skip 1, c_out sigma, c_in 1, c_noise ln(sigma / 2)
        expected = x + sigma.reshape(-1, 1, 1, 1) * net.net(x, (0.5 * sigma).log())
        torch.testing.assert_close(net.denoise(x, sigma), expected, rtol=1e-5, atol=1e-5)


def test_edm_conditional_import_and_its_student(tmp_path, sentinel):
    kw = dict(DDPMPP, augment_dim=0, attn_resolutions=[16])
    ema = build(EDMPrecond, seed=2, label_dim=4, **kw)
    path, tensors = edm_snapshot(tmp_path, "edm-tiny-16x16-cond-edm.pkl", ema, sentinel)
    ckpt = import_edm_pickle(path)
    state = ckpt.state("ema")
    assert set(state) == set(tensors) and all(torch.equal(state[k], v) for k, v in tensors.items())
    assert state["net.map_label.weight"].shape == (16, 4) and "net.map_augment.weight" not in state
    assert ckpt.preset.net.label_dim == 4 and ckpt.preset.diffusion.precond == "edm"
    assert ckpt.meta["precond_sigma_range"] == [0.0, "inf"]
    net = model_from_checkpoint(ckpt).net  # the preconditioned network; F is net.net
    x, sigma, labels = torch.randn(2, 3, 16, 16), torch.tensor([0.3, 5.0]), torch.tensor([1, 3])
    s = sigma.reshape(-1, 1, 1, 1)
    with torch.no_grad():
        f = net.net(x / (0.25 + s**2).sqrt(), sigma.log() / 4, labels=labels)
        expected = 0.25 / (s**2 + 0.25) * x + s * 0.5 / (s**2 + 0.25).sqrt() * f
        torch.testing.assert_close(net.denoise(x, sigma, labels), expected, rtol=1e-5, atol=1e-5)
    # a CTM student (EDM coefficients, as this teacher) built from the imported weights starts as the teacher
    student = student_from_teacher(ckpt.state("ema"), ckpt.preset, ckpt.data_shape).eval()
    with torch.no_grad():
        assert torch.equal(student.g(x, sigma, sigma / 3, labels), net.denoise(x, sigma, labels))


# --------------------------------------------------------------------------------------------------
# Hostile and broken files: refused, nothing run


class _System:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Eval:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (eval, (f"open({self.marker!r}, 'w')",))


@pytest.mark.parametrize("evil", [_System, _Eval])
@pytest.mark.parametrize("where", ["top", "inside a network's init kwargs"])
def test_code_in_the_pickle_is_refused_without_running(tmp_path, sentinel, evil, where):
    if where == "top":
        data = pickle.dumps({"ema": evil(sentinel)})
    else:
        ema = build(VPPrecond, **DDPMPP)
        ema.model._init_kwargs["dropout"] = evil(sentinel)
        data = edm_dumps(sentinel, ema=ema)
    with pytest.raises(UserError, match="refusing") as err:
        import_edm_pickle(_write(tmp_path, "evil.pkl", data))
    assert ("system" if evil is _System else "eval") in str(err.value)


def test_real_persistence_module_installed_is_still_not_called(tmp_path, sentinel, monkeypatch):
    """Even with a `torch_utils.persistence` importable (EDM installed), the importer uses its own
    stand-in."""
    path, _ = edm_snapshot(tmp_path, "snap.pkl", build(VPPrecond, **DDPMPP), sentinel)
    mod = types.ModuleType("torch_utils.persistence")
    mod._reconstruct_persistent_obj = lambda meta: open(sentinel, "w").write("called")
    monkeypatch.setitem(sys.modules, "torch_utils", types.ModuleType("torch_utils"))
    monkeypatch.setitem(sys.modules, "torch_utils.persistence", mod)
    assert import_edm_pickle(path).kind == "teacher"


def test_persistent_record_without_a_network(tmp_path, sentinel):
    """A persistent object pointing at code stays an inert record; a precond with no `model` is refused."""
    ema = build(VPPrecond, **DDPMPP)
    del ema._modules["model"]
    with pytest.raises(UserError, match="no 'model' network"):
        import_edm_pickle(_write(tmp_path, "trap.pkl", edm_dumps(sentinel, ema=ema)))


def test_unknown_callable_is_inert(tmp_path, sentinel):
    mod = types.ModuleType("evil_pkg")

    def boom(*args):
        open(sentinel, "w").write("unknown callable was run")

    boom.__module__, boom.__qualname__, mod.boom = "evil_pkg", "boom", boom

    class Boom:
        def __reduce__(self):
            return (boom, ("x",))

    sys.modules["evil_pkg"] = mod
    try:
        data = pickle.dumps({"ema": Boom()})
    finally:
        del sys.modules["evil_pkg"]
    with pytest.raises(UserError, match="not an EDM network object"):
        import_edm_pickle(_write(tmp_path, "boom.pkl", data))


def test_not_a_pickle_and_no_ema(tmp_path):
    with pytest.raises(UserError, match="not a pickle"):
        import_edm_pickle(_write(tmp_path, "junk.pkl", b"hello, not a pickle"))
    with pytest.raises(UserError, match="zip"):
        import_edm_pickle(_write(tmp_path, "zip.pkl", b"PK\x03\x04rest"))
    with pytest.raises(UserError, match="damaged"):
        import_edm_pickle(_write(tmp_path, "cut.pkl", pickle.dumps({"ema": list(range(100))})[:40]))
    with pytest.raises(UserError, match="no 'ema'"):
        import_edm_pickle(_write(tmp_path, "noema.pkl", pickle.dumps({"net": 1})))
    with pytest.raises(UserError, match="does not exist"):
        import_edm_pickle(tmp_path / "missing.pkl")
    with pytest.raises(UserError, match="not an EDM network pickle"):
        read_edm_pickle(_write(tmp_path, "list.pkl", pickle.dumps([1, 2])))


def test_unsupported_classes(tmp_path, sentinel):
    adm = build(EDMPrecond, **dict(DDPMPP, model_type="DhariwalUNet"))
    with pytest.raises(UserError, match="DhariwalUNet"):
        import_edm_pickle(_write(tmp_path, "adm.pkl", edm_dumps(sentinel, ema=adm)))
    iddpm = build(iDDPMPrecond, **DDPMPP)
    with pytest.raises(UserError, match="iDDPMPrecond"):
        import_edm_pickle(_write(tmp_path, "iddpm.pkl", edm_dumps(sentinel, ema=iddpm)))


def test_weights_not_fitting_the_recorded_arguments(tmp_path, sentinel):
    ema = build(VPPrecond, **DDPMPP)
    ema.model._init_kwargs["model_channels"] = 32  # the record disagrees with the stored weights
    with pytest.raises(UserError, match="does not fit"):
        import_edm_pickle(_write(tmp_path, "lie.pkl", edm_dumps(sentinel, ema=ema)))


def test_cyclic_module_tree_refused(tmp_path, sentinel):
    ema = build(VPPrecond, **DDPMPP)
    loop = nn.ModuleDict()
    loop._modules["again"] = loop  # a tree that refers to itself (only possible through BUILD state)
    ema.model._modules["enc"] = loop
    with pytest.raises(UserError, match="loops back"):
        import_edm_pickle(_write(tmp_path, "loop.pkl", edm_dumps(sentinel, ema=ema)))


def test_stand_in_pickle_has_edms_layout(tmp_path, sentinel):
    """The pickle written here names only what EDM's do (the persistence hook, torch's tensor rebuilders and
    ModuleDict, OrderedDict, NumPy scalars), and its persistent records carry EDM's metadata fields."""
    import io

    seen = set()

    class Recording(SafeUnpickler):
        def find_class(self, module, name):
            seen.add((module, name))
            return super().find_class(module, name)

    data = edm_dumps(sentinel, ema=build(VPPrecond, **DDPMPP))
    ema = Recording(io.BytesIO(data)).load()["ema"]
    assert ("torch_utils.persistence", "_reconstruct_persistent_obj") in seen
    assert (("torch.nn.modules.container", "ModuleDict") in seen
            and ("torch._utils", "_rebuild_tensor_v2") in seen)
    modules = {m for m, _ in seen}
    assert modules <= {"torch_utils.persistence", "torch._utils", "torch.storage", "torch", "collections",
                       "torch.nn.modules.container", "numpy", "numpy.core.multiarray",
                       "numpy._core.multiarray", "_codecs"}, modules
    assert (set(ema.meta) == {"type", "version", "module_src", "class_name", "state"}
            and ema.meta["version"] == 6)
    assert {"_parameters", "_buffers", "_modules", "_init_args", "_init_kwargs"} <= set(ema.meta["state"])
