"""EDM pickle import: a pickle in NVIDIA's layout is read without running its code and round-trips exactly."""

from __future__ import annotations

import math
import os
import pickle
import sys
import types
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from ctmtool.checkpoint import load_checkpoint
from ctmtool.edm_import import import_edm_pickle, read_edm_pickle
from ctmtool.errors import UserError
from ctmtool.models import model_from_checkpoint, student_from_teacher
from ctmtool.nets.songunet import SongUNet

TRAP_SRC = 'raise SystemExit("pickle code was executed")'
DDPMPP = dict(model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[8], dropout=0.13,
              embedding_type="positional", channel_mult_noise=1, encoder_type="standard", decoder_type="standard",
              resample_filter=[1, 1], augment_dim=9)
NCSNPP = dict(DDPMPP, embedding_type="fourier", channel_mult_noise=2, encoder_type="residual", decoder_type="skip",
              resample_filter=[1, 3, 3, 1])


# --------------------------------------------------------------------------------------------------
# Writing pickles in EDM's layout with stand-in `torch_utils.persistence` and `dnnlib.util` modules


class FakeEDM:
    """Real modules named like EDM's, present in sys.modules only while pickling."""

    NAMES = ("torch_utils", "torch_utils.persistence", "dnnlib", "dnnlib.util")

    def __init__(self):
        self.mods = {n: types.ModuleType(n) for n in self.NAMES}

        def _reconstruct_persistent_obj(meta):
            raise SystemExit("EDM reconstruction was called")

        _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
        _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"

        class EasyDict(dict):
            def __getattr__(self, name):
                try:
                    return self[name]
                except KeyError:
                    raise AttributeError(name) from None

        EasyDict.__module__, EasyDict.__qualname__ = "dnnlib.util", "EasyDict"
        self.mods["torch_utils.persistence"]._reconstruct_persistent_obj = _reconstruct_persistent_obj
        self.mods["dnnlib.util"].EasyDict = EasyDict
        self.mods["torch_utils"].persistence = self.mods["torch_utils.persistence"]
        self.mods["dnnlib"].util = self.mods["dnnlib.util"]
        self.mods["dnnlib"].EasyDict = EasyDict
        self.reconstruct, self.EasyDict = _reconstruct_persistent_obj, EasyDict

        fake = self

        class Persistent(nn.Module):
            """Pickles as EDM's persistence decorator does: source, class name and __dict__."""

            def __reduce__(self):
                state = {k: v for k, v in self.__dict__.items() if k != "_edm_class"}
                meta = dict(type="class", version=6, module_src=TRAP_SRC, class_name=self._edm_class, state=state)
                return (fake.reconstruct, (meta,))

        self.Persistent = Persistent

    def persistent(self, class_name: str, state: dict):
        obj = self.Persistent.__new__(self.Persistent)
        obj.__dict__.update(state)
        obj.__dict__["_edm_class"] = class_name
        return obj

    def convert(self, m: nn.Module, init_kwargs: dict | None = None):
        """An EDM-style copy of a ctmtool module tree: persistent objects, real torch ModuleDicts."""
        if isinstance(m, nn.ModuleDict):
            out = nn.ModuleDict()
            for k, v in m.items():
                out[k] = self.convert(v)
            return out
        state = dict(m.__dict__)
        state["_modules"] = OrderedDict((k, None if v is None else self.convert(v)) for k, v in m._modules.items())
        state.pop("affine_s", None)
        state["_init_args"] = ()
        state["_init_kwargs"] = self.EasyDict(init_kwargs or {})
        if "skip_scale" in state:
            state["skip_scale"] = np.float64(state["skip_scale"])  # EDM stores np.sqrt(0.5)
        return self.persistent(type(m).__name__, state)

    def dumps(self, obj) -> bytes:
        saved = {n: sys.modules.get(n) for n in self.NAMES}
        sys.modules.update(self.mods)
        try:
            return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        finally:
            for n, m in saved.items():
                if m is None:
                    sys.modules.pop(n, None)
                else:
                    sys.modules[n] = m


def _module_state(**attrs) -> dict:
    m = nn.Module()
    for k, v in attrs.items():
        setattr(m, k, v)
    return dict(m.__dict__)


def _edm_pickle(fake: FakeEDM, net: SongUNet, precond: str, res: int, label_dim: int, unet_kw: dict,
                model_class: str = "SongUNet", **precond_attrs) -> bytes:
    model_kw = dict(img_resolution=res, in_channels=3, out_channels=3, label_dim=label_dim, **unet_kw)
    model = fake.convert(net, model_kw)
    model.__dict__["_edm_class"] = model_class
    pre_kw = dict(img_resolution=res, img_channels=3, label_dim=label_dim, use_fp16=False, model_type=model_class,
                  **precond_attrs, **unet_kw)
    st = _module_state(img_resolution=res, img_channels=3, label_dim=label_dim, use_fp16=False, **precond_attrs)
    st["_modules"] = OrderedDict(model=model)
    st["_init_args"], st["_init_kwargs"] = (), fake.EasyDict(pre_kw)
    ema = fake.persistent(precond, st)
    loss = fake.persistent("VPLoss", dict(beta_d=19.9, beta_min=0.1, epsilon_t=1e-5))
    aug = fake.persistent("AugmentPipe", _module_state(p=0.12, xflip=1e8, yflip=1, scale=1, rotate_frac=0.0))
    data = dict(ema=ema, loss_fn=loss, augment_pipe=aug,
                dataset_kwargs=fake.EasyDict(class_name="training.dataset.ImageFolderDataset", path="cifar10.zip",
                                             use_labels=bool(label_dim), xflip=False, resolution=res))
    return fake.dumps(data)


def _small(kw: dict, res: int = 16, label_dim: int = 0, seed: int = 0) -> SongUNet:
    torch.manual_seed(seed)
    net = SongUNet(res, 3, 3, label_dim=label_dim, **kw).eval()
    with torch.no_grad():  # weights away from their (near-)zero initialisation so every path matters
        for p in net.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    return net


def _write(tmp_path, name: str, data: bytes):
    p = tmp_path / name
    p.write_bytes(data)
    return p


# --------------------------------------------------------------------------------------------------
# Round trips


def test_vp_ddpmpp_round_trip(tmp_path):
    net = _small(DDPMPP)
    path = _write(tmp_path, "edm-tiny-16x16-uncond-vp.pkl", _edm_pickle(
        FakeEDM(), net, "VPPrecond", 16, 0, DDPMPP, beta_d=19.9, beta_min=0.1, M=1000, epsilon_t=1e-5))
    messages = []
    ckpt = import_edm_pickle(path, out_path=tmp_path / "teacher.safetensors", progress=messages.append)
    assert messages and ckpt.path == tmp_path / "teacher.safetensors"
    assert "torch_utils.persistence" not in sys.modules and "dnnlib.util" not in sys.modules

    state = ckpt.state("ema")
    ref = net.state_dict()
    assert set(state) == {f"net.{k}" for k in ref}
    for k, v in ref.items():
        assert torch.equal(state[f"net.{k}"], v), k

    p = ckpt.preset
    assert p.net.kind == "unet" and p.net.label_dim == 0 and ckpt.data_shape == (3, 16, 16)
    u = p.net.unet
    assert (u.model_channels, u.channel_mult, u.num_blocks, u.attn_resolutions) == (16, [1, 2], 1, [8])
    assert (u.dropout, u.augment_dim, u.embedding_type, u.resample_filter) == (0.13, 9, "positional", [1, 1])
    assert p.diffusion.precond == "vp" and (p.diffusion.sigma_min, p.diffusion.sigma_max) == (0.002, 80.0)
    assert ckpt.kind == "teacher"
    assert ckpt.meta["source"] == "edm-pickle" and ckpt.meta["class"] == "VPPrecond"
    assert ckpt.meta["file"] == path.name

    model = model_from_checkpoint(load_checkpoint(ckpt.path))
    x = torch.randn(3, 3, 16, 16)
    sigma = torch.tensor([0.05, 1.0, 20.0])
    # EDM's VPPrecond by hand on the original network
    beta_d, beta_min, M = 19.9, 0.1, 1000
    s = sigma.reshape(-1, 1, 1, 1)
    c_in, c_out = 1 / (s**2 + 1).sqrt(), -s
    t_inv = ((beta_min**2 + 2 * beta_d * (1 + sigma**2).log()).sqrt() - beta_min) / beta_d
    with torch.no_grad():
        expected = x + c_out * net(c_in * x, (M - 1) * t_inv)
        got = model.net.denoise(x, sigma)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_ve_ncsnpp_round_trip(tmp_path):
    net = _small(NCSNPP)
    path = _write(tmp_path, "edm-tiny-16x16-uncond-ve.pkl", _edm_pickle(
        FakeEDM(), net, "VEPrecond", 16, 0, NCSNPP, sigma_min=0.02, sigma_max=100))
    ckpt = import_edm_pickle(path)
    assert ckpt.path is None
    u = ckpt.preset.net.unet
    assert (u.embedding_type, u.encoder_type, u.decoder_type) == ("fourier", "residual", "skip")
    assert (u.channel_mult_noise, u.resample_filter) == (2, [1, 3, 3, 1])
    d = ckpt.preset.diffusion
    assert d.precond == "ve" and (d.sigma_min, d.sigma_max) == (0.02, 80.0)
    assert ckpt.meta["precond_sigma_range"] == [0.02, 100.0]
    for k, v in net.state_dict().items():
        assert torch.equal(ckpt.state("ema")[f"net.{k}"], v), k
    model = model_from_checkpoint(ckpt)
    x, sigma = torch.randn(2, 3, 16, 16), torch.tensor([0.1, 30.0])
    with torch.no_grad():
        expected = x + sigma.reshape(-1, 1, 1, 1) * net(x, (0.5 * sigma).log())
        torch.testing.assert_close(model.net.denoise(x, sigma), expected, rtol=1e-5, atol=1e-5)


def test_edm_conditional_round_trip(tmp_path):
    kw = dict(DDPMPP, augment_dim=0, attn_resolutions=[16])
    net = _small(kw, label_dim=4)
    path = _write(tmp_path, "edm-tiny-16x16-cond-edm.pkl", _edm_pickle(
        FakeEDM(), net, "EDMPrecond", 16, 4, kw, sigma_min=0, sigma_max=math.inf, sigma_data=0.5))
    ckpt = import_edm_pickle(path)
    assert ckpt.preset.net.label_dim == 4 and ckpt.preset.diffusion.precond == "edm"
    assert ckpt.meta["precond_sigma_range"] == [0.0, "inf"]
    model = model_from_checkpoint(ckpt)
    x, sigma, labels = torch.randn(2, 3, 16, 16), torch.tensor([0.3, 5.0]), torch.tensor([1, 3])
    s = sigma.reshape(-1, 1, 1, 1)
    with torch.no_grad():
        f = net(x / (0.25 + s**2).sqrt(), sigma.log() / 4, labels=labels)
        expected = 0.25 / (s**2 + 0.25) * x + s * 0.5 / (s**2 + 0.25).sqrt() * f
        torch.testing.assert_close(model.net.denoise(x, sigma, labels), expected, rtol=1e-5, atol=1e-5)

    # a CTM student (EDM coefficients, as this teacher) built from the imported weights starts as the teacher
    student = student_from_teacher(ckpt.state("ema"), ckpt.preset, ckpt.data_shape).eval()
    with torch.no_grad():
        assert torch.equal(student.g(x, sigma, sigma / 3, labels), model.net.denoise(x, sigma, labels))


# --------------------------------------------------------------------------------------------------
# Refusals


class _Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _EvilEval:
    def __reduce__(self):
        return (eval, ("__import__('os').getcwd()",))


@pytest.mark.parametrize("evil", ["os.system", "eval"])
def test_malicious_pickle_refused_without_running(tmp_path, evil):
    marker = tmp_path / "pwned"
    payload = _Evil(marker) if evil == "os.system" else _EvilEval()
    path = _write(tmp_path, "evil.pkl", pickle.dumps({"ema": payload}))
    with pytest.raises(UserError, match="refusing") as err:
        import_edm_pickle(path)
    assert evil.split(".")[-1] in str(err.value)
    assert not marker.exists()


def test_persistent_source_is_never_executed(tmp_path):
    """A persistent object pointing at code or an unknown callable stays an inert record."""
    fake = FakeEDM()
    ema = fake.persistent("VPPrecond", _module_state(img_resolution=16, img_channels=3))
    path = _write(tmp_path, "trap.pkl", fake.dumps({"ema": ema}))
    with pytest.raises(UserError, match="no 'model' network"):
        import_edm_pickle(path)  # TRAP_SRC would raise SystemExit if run


def test_unknown_callable_is_inert(tmp_path):
    mod = types.ModuleType("evil_pkg")

    def boom(*args):
        raise SystemExit("unknown callable was run")

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


def test_unsupported_classes(tmp_path):
    net = _small(DDPMPP)
    adm = _edm_pickle(FakeEDM(), net, "EDMPrecond", 16, 0, DDPMPP, model_class="DhariwalUNet")
    with pytest.raises(UserError, match="DhariwalUNet"):
        import_edm_pickle(_write(tmp_path, "adm.pkl", adm))
    iddpm = _edm_pickle(FakeEDM(), net, "iDDPMPrecond", 16, 0, DDPMPP)
    with pytest.raises(UserError, match="iDDPMPrecond"):
        import_edm_pickle(_write(tmp_path, "iddpm.pkl", iddpm))


def test_weights_not_fitting(tmp_path):
    net = _small(DDPMPP)
    lying = dict(DDPMPP, model_channels=32)  # the recorded kwargs disagree with the stored weights
    path = _write(tmp_path, "lie.pkl", _edm_pickle(FakeEDM(), net, "VPPrecond", 16, 0, lying))
    with pytest.raises(UserError, match="does not fit"):
        import_edm_pickle(path)


def test_cyclic_module_tree_refused(tmp_path):
    net = _small(DDPMPP)
    fake = FakeEDM()
    loop = nn.ModuleDict()
    loop._modules["again"] = loop  # a tree that refers to itself (only possible through BUILD state)
    model = fake.convert(net, dict(img_resolution=16, in_channels=3, out_channels=3, **DDPMPP))
    model.__dict__["_modules"]["enc"] = loop
    st = _module_state(img_resolution=16, img_channels=3)
    st["_modules"] = OrderedDict(model=model)
    path = _write(tmp_path, "loop.pkl", fake.dumps({"ema": fake.persistent("VPPrecond", st)}))
    with pytest.raises(UserError, match="loops back"):
        import_edm_pickle(path)
