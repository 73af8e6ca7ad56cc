"""OpenAI ADM teacher and Sony CTM imports: layout inference, round-trip outputs, refusals (hostile files
included)."""

from __future__ import annotations

import math
import os

import pytest
import torch

from ctmtool.checkpoint import load_checkpoint
from ctmtool.core.models import load_model
from ctmtool.errors import UserError
from ctmtool.importers import convert_file, import_file, openai_adm, sony_ctm
from ctmtool.nets.adm import ADMUNet

LAYOUT = dict(model_channels=32, channel_mult=(1, 2, 3), num_res_blocks=2, attn_resolutions=(8,),
              head_channels=16)


def _official_state(use_s: bool, seed: int = 0, label_dim: int = 7, **kw) -> dict[str, torch.Tensor]:
    """A state dict in the official naming (ADMUNet's names are the official ones) with every tensor
    random."""
    torch.manual_seed(seed)
    net = ADMUNet(32, 3, 3, label_dim=label_dim, use_s=use_s, **{**LAYOUT, **kw})
    g = torch.Generator().manual_seed(seed + 1)
    return {k: torch.randn(v.shape, generator=g) * 0.2 for k, v in net.state_dict().items()}


def _edm_by_hand(sd: dict, x, sigma, y, s=None, **kw):
    """c_skip x + c_out F(c_in x, 250 ln sigma [, 250 ln s], y), EDM coefficients, sigma_data 0.5, from the
    raw net."""
    net = ADMUNet(32, 3, 3, label_dim=7, use_s=s is not None, **{**LAYOUT, **kw}).eval()
    net.load_state_dict(sd)
    sd2 = 0.25
    c_skip, c_out, c_in = (sd2 / (sigma**2 + sd2), sigma * 0.5 / math.sqrt(sigma**2 + sd2),
                           1 / math.sqrt(sigma**2 + sd2))
    t = torch.full((x.shape[0],), math.log(sigma) / 4)
    s_lab = None if s is None else torch.full((x.shape[0],), math.log(s) / 4)
    with torch.no_grad():
        return c_skip * x + c_out * net(c_in * x, t, s_lab, labels=y)


def test_openai_teacher_round_trip(tmp_path):
    sd = _official_state(use_s=False)
    torch.save(sd, tmp_path / "edm_tiny_ema.pt")
    import_file(tmp_path / "edm_tiny_ema.pt", tmp_path / "t.safetensors", resolution=32, head_channels=16)
    ckpt = load_checkpoint(tmp_path / "t.safetensors")
    assert ckpt.kind == "teacher" and ckpt.preset.net.kind == "adm" and ckpt.preset.net.label_dim == 7
    a = ckpt.preset.net.adm
    assert (a.model_channels, a.channel_mult, a.num_res_blocks, a.attn_resolutions) == (32, [1, 2, 3], 2, [8])
    assert a.scale_shift and a.resblock_updown and ckpt.data_shape == (3, 32, 32)
    on_disk = load_checkpoint(tmp_path / "t.safetensors")
    assert all(v.dtype == torch.float32 for v in on_disk.state("ema").values())
    model = load_model(tmp_path / "t.safetensors")
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([0, 6])
    for sigma in (0.01, 1.0, 40.0):
        with torch.no_grad():
            out = model.net.denoise(x * sigma, torch.full((2,), sigma), labels=y)
        torch.testing.assert_close(out, _edm_by_hand(sd, x * sigma, sigma, y), rtol=1e-5, atol=1e-5)


def test_sony_ctm_round_trip(tmp_path):
    # a DDP prefix is stripped
    sd = {f"module.{k}": v for k, v in _official_state(use_s=True, seed=3).items()}
    torch.save(sd, tmp_path / "ema_0.999_000001.pt")
    import_file(tmp_path / "ema_0.999_000001.pt", tmp_path / "c.safetensors", resolution=32, head_channels=16)
    ckpt = load_checkpoint(tmp_path / "c.safetensors")
    assert ckpt.kind == "ctm" and ckpt.meta["format"] == sony_ctm.NAME
    model = load_model(tmp_path / "c.safetensors")
    plain = {k[len("module."):]: v for k, v in sd.items()}
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([1, 2])
    for t, s in ((80.0, 0.002), (2.0, 0.5)):
        with torch.no_grad():
            g = model.net.g(x * t, torch.full((2,), t), torch.full((2,), s), labels=y)
            jump = model.net.jump(x * t, torch.full((2,), t), torch.full((2,), s), labels=y)
        ref = _edm_by_hand(plain, x * t, t, y, s=s)
        torch.testing.assert_close(g, ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(jump, s / t * x * t + (1 - s / t) * ref, rtol=1e-5, atol=1e-5)


def test_layout_inference_other_variants(tmp_path):
    kw = dict(resblock_updown=False, channel_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(32, 8))
    sd = _official_state(use_s=False, **kw)
    torch.save(sd, tmp_path / "v.pt")
    res, _ = convert_file(tmp_path / "v.pt", resolution=32, head_channels=16)
    a = res.preset.net.adm
    assert (a.channel_mult, a.num_res_blocks, a.attn_resolutions,
            a.resblock_updown) == ([1, 2, 2], 1, [32, 8], False)
    import_file(tmp_path / "v.pt", tmp_path / "v.safetensors", resolution=32, head_channels=16)  # strict load


def test_sniffing():
    teacher, student = _official_state(use_s=False), _official_state(use_s=True)
    assert openai_adm.sniff(teacher) and not openai_adm.sniff(student)
    assert sony_ctm.sniff(student) and not sony_ctm.sniff(teacher)
    assert not openai_adm.sniff({"weight": torch.zeros(1)}) and not openai_adm.sniff([torch.zeros(1)])


def test_hostile_file_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    sd = _official_state(use_s=False)
    sd["payload"] = Evil()
    torch.save(sd, tmp_path / "evil.pt")
    with pytest.raises(UserError, match="refusing to load"):
        import_file(tmp_path / "evil.pt", tmp_path / "out.safetensors")
    assert not marker.exists() and not (tmp_path / "out.safetensors").exists()


def test_unknown_and_unsupported_files(tmp_path):
    torch.save({"weight": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="unrecognised checkpoint format"):
        convert_file(tmp_path / "other.pt")
    sd = _official_state(use_s=False)
    sd["out.2.weight"], sd["out.2.bias"] = torch.zeros(6, 32, 3, 3), torch.zeros(6)  # learned variance
    torch.save(sd, tmp_path / "sigma.pt")
    with pytest.raises(UserError, match="learned variance"):
        convert_file(tmp_path / "sigma.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError):
        convert_file(tmp_path / "junk.pt")
    with pytest.raises(UserError, match="does not exist"):
        convert_file(tmp_path / "missing.pt")
