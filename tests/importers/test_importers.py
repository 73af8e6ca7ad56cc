"""`ctmtool import`: files built in each published format (random weights) convert exactly; hostile files are
refused."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
import test_edm_pickle as edm_t  # the EDM-pickle writer of the EDM importer's tests (same folder)
import torch
from typer.testing import CliRunner

from ctmtool.cli.app import app
from ctmtool.config import load_preset
from ctmtool.core.models import build_precond, load_model
from ctmtool.errors import UserError
from ctmtool.importers import ImportResult, detect, formats, import_file, load_foreign
from ctmtool.importers.ctm_cifar10 import RENAMES

UNET = dict(model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[8], dropout=0.13)


def _perturbed(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(0.2 * torch.randn(p.shape, generator=g))
    return module.eval()


def _preset(label_dim=0, **unet):
    sets = ["data.source=folder", "data.resolution=16", "net.kind=unet", f"net.label_dim={label_dim}"]
    sets += [f"net.unet.{k}={json.dumps(v)}" for k, v in {**UNET, **unet}.items()]
    return load_preset("cifar10", sets)


def _shared_storage(state: dict) -> dict:
    """Every tensor a view into one flat storage, as the fp16-trained official checkpoints are written."""
    flat = torch.cat([v.reshape(-1).float() for v in state.values()])
    out, i = {}, 0
    for k, v in state.items():
        out[k] = flat[i:i + v.numel()].view(v.shape)
        i += v.numel()
    return out


def _official_ctm_names(state: dict) -> dict:
    inverse = {new: old for old, new in RENAMES}
    out = {}
    for k, v in state.items():
        rest = k[len("net."):]
        for new, old in inverse.items():
            if rest.startswith(new):
                rest = old + rest[len(new):]
        out["model." + rest] = v
    return out


@pytest.mark.parametrize("label_dim,kw", [(0, {}), (10, dict(embedding_type="fourier", channel_mult_noise=2,
                                                             encoder_type="residual", decoder_type="skip",
                                                             resample_filter=[1, 3, 3, 1]))])
def test_ctm_cifar10_checkpoint_round_trip(tmp_path, label_dim, kw):
    """An EDMPrecond_CTM state dict (model. prefix, map_layer*_s, shared storage) becomes the same CTM
    exactly."""
    p = _preset(label_dim, **kw)
    src = _perturbed(build_precond("ctm", p, (3, 16, 16)))
    f = tmp_path / "ema_0.999_000100.pt"
    torch.save(_shared_storage(_official_ctm_names(src.state_dict())), f)
    res, out = import_file(f, tmp_path / "ctm.safetensors")
    assert res.kind == "ctm" and res.data_shape == (3, 16, 16) and res.preset.net.label_dim == label_dim
    for k, v in {**UNET, **kw}.items():
        assert getattr(res.preset.net.unet, k) == v, k
    assert res.meta["weights"] == "ema 0.999" and res.meta["step"] == 100
    m = load_model(out)
    g = torch.Generator().manual_seed(3)
    x = 80 * torch.randn(2, 3, 16, 16, generator=g)
    labels = torch.tensor([1, 7]) if label_dim else None
    with torch.no_grad():
        for t, s in ((80.0, 0.002), (5.0, 1.0), (0.5, 0.5)):
            assert torch.equal(m.net.jump(x, t, s, labels), src.jump(x, t, s, labels)), (t, s)


def _gctm_official(state: dict, rng: torch.Generator) -> dict:
    out = {}
    for k, v in state.items():
        k = k[len("net."):]
        if k.startswith("map_s_layer"):
            continue
        if k.startswith("map_layer"):
            out["t_" + k] = v
            out["s_" + k] = torch.randn(v.shape, generator=rng)  # unused by the official network
            continue
        out[k.replace(".affine_s.", ".s_affine.").replace(".affine.", ".t_affine.")] = v
    return out


def test_gctm_checkpoint_round_trip_and_options(tmp_path):
    p = _preset()
    src = _perturbed(build_precond("gctm", p, (3, 16, 16)))
    with torch.no_grad():  # the official s-embedding runs through the t-MLP
        src.net.map_s_layer0.load_state_dict(src.net.map_layer0.state_dict())
        src.net.map_s_layer1.load_state_dict(src.net.map_layer1.state_dict())
    src.var0, src.var1, src.cov01, src.label_range = 0.23, 0.01 + 0.25**2, 0.0, (0.002, 80.0)
    rng = torch.Generator().manual_seed(1)
    net = _gctm_official(src.state_dict(), rng)
    ckpt = {"X0_eval": torch.zeros(2, 3, 16, 16), "X1_eval": torch.zeros(2, 3, 16, 16), "net": net,
            "net_ema": net, "opt_CTM": {"state": {}, "param_groups": []},
            "avgmeter": {"losses": {"ctm": [np.float64(0.5)]}, "idx": 3}, "best_FID": np.inf}
    f = tmp_path / "idx_0_best.pt"
    torch.save(ckpt, f)
    with pytest.raises(UserError, match="`var0`, `var1`, `cov01`"):
        import_file(f, tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()
    res, out = import_file(f, tmp_path / "g.safetensors", var0=0.23, var1=0.01 + 0.25**2, cov01=0.0)
    assert res.kind == "gctm" and res.meta["moments"]["label_range"] == [0.002, 80.0]
    m = load_model(out)
    x = torch.randn(2, 3, 16, 16, generator=rng)
    with torch.no_grad():
        for t, s in ((1.0, 0.0), (0.7, 0.2), (0.4, 0.4)):
            assert torch.equal(m.net.jump(x, t, s), src.jump(x, t, s)), (t, s)
    # the label at the ends is ln(smax)/4 and ln(smin)/4, as the official network's
    noise = m.net.coefficients(torch.tensor([1.0, 0.0, 0.5]))[3]
    assert torch.allclose(noise, torch.tensor([float(np.log(80.0)) / 4, float(np.log(0.002)) / 4, 0.0]),
                          atol=1e-6)


def test_edm_pickle_through_the_registry(tmp_path):
    """An EDM network-snapshot pickle in NVIDIA's format (the stand-ins of tests/importers/test_edm_pickle.py)
    goes through `ctmtool import`'s registry: detected, converted, every tensor unchanged, nothing run."""
    sentinel = tmp_path / "code-was-run"
    ema = edm_t.build(edm_t.VPPrecond, **edm_t.DDPMPP)
    f, tensors = edm_t.edm_snapshot(tmp_path, "edm-tiny-16x16-uncond-vp.pkl", ema, sentinel)
    obj = load_foreign(f)
    assert detect(obj, f).NAME == "edm-pickle"
    res, out = import_file(f, tmp_path / "t.safetensors")
    assert isinstance(res, ImportResult) and res.kind == "teacher" and res.preset.diffusion.precond == "vp"
    got = load_model(out).net.state_dict()
    assert all(torch.equal(got[k], v) for k, v in tensors.items())
    assert not sentinel.exists()


def test_contract_of_every_format_module():
    for module in formats():
        assert isinstance(module.NAME, str) and callable(module.sniff) and callable(module.convert)
        assert module.sniff({"unrelated": 1}) is False


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("container", ["torch-zip", "pickle"])
def test_hostile_file_refused_without_running(tmp_path, container):
    marker = tmp_path / "pwned"
    f = tmp_path / "evil.pt"
    payload = {"model.map_layer0_s.weight": torch.zeros(1), "x": _Evil(marker)}
    if container == "torch-zip":
        torch.save(payload, f)
    else:
        f.write_bytes(pickle.dumps(payload))
    with pytest.raises(UserError, match="refusing|nothing was run"):
        import_file(f, tmp_path / "out.safetensors")
    assert not marker.exists() and not (tmp_path / "out.safetensors").exists()


def test_unknown_and_missing_files(tmp_path):
    f = tmp_path / "other.pt"
    torch.save({"weight": torch.zeros(2)}, f)
    with pytest.raises(UserError, match="unrecognised checkpoint format"):
        import_file(f, tmp_path / "o.safetensors")
    with pytest.raises(UserError, match="does not exist"):
        load_foreign(tmp_path / "nope.pt")
    (tmp_path / "t.txt").write_text("hello")
    with pytest.raises(UserError, match="neither a torch file nor a pickle"):
        load_foreign(tmp_path / "t.txt")


def test_cli_import(tmp_path):
    p = _preset()
    src = _perturbed(build_precond("ctm", p, (3, 16, 16)))
    f = tmp_path / "model000200.pt"
    torch.save(_official_ctm_names(src.state_dict()), f)
    out = tmp_path / "c.safetensors"
    r = CliRunner().invoke(app, ["import", str(f), "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["kind"] == "ctm" and out.is_file()
    r = CliRunner().invoke(app, ["import", str(f), "--out", str(out)])
    assert r.exit_code != 0 and "--force" in r.output
