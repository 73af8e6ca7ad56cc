"""The paper's LPIPS (piq, average pooling, 224): offline errors, and the value against a hand-written
formula."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ctmtool.config import load_preset
from ctmtool.errors import UserError
from ctmtool.losses.distances import make_distance
from ctmtool.losses.lpips import LPIPS_FILE, VGG16_FILE, VGG16_URL, PaperLPIPS, lpips_url

CHANNELS = (64, 128, 256, 512, 512)
TAPS = (3, 8, 15, 22, 29)  # relu1_2 .. relu5_3 in VGG16 `features`


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory):
    """Random weights in the two files' formats: torchvision's VGG16 state dict and piq's list of 5
    tensors."""
    from torchvision.models.vgg import cfgs, make_layers

    d = tmp_path_factory.mktemp("hub")
    # the `features.*` tensors of torchvision's VGG16 (the classifier is not read; left out)
    torch.manual_seed(0)
    torch.save({f"features.{k}": v for k, v in make_layers(cfgs["D"]).state_dict().items()}, d / VGG16_FILE)
    g = torch.Generator().manual_seed(1)
    torch.save([torch.rand(1, c, 1, 1, generator=g) for c in CHANNELS], d / LPIPS_FILE)
    return d


def test_missing_files_are_named_with_place_and_source(tmp_path):
    with pytest.raises(UserError) as err:
        PaperLPIPS.from_files(tmp_path)
    msg = str(err.value)
    for part in (str(tmp_path / VGG16_FILE), VGG16_URL, str(tmp_path / LPIPS_FILE), lpips_url()):
        assert part in msg
    (tmp_path / VGG16_FILE).write_bytes(b"x")
    with pytest.raises(UserError, match=LPIPS_FILE) as err:
        PaperLPIPS.from_files(tmp_path)
    assert VGG16_FILE not in str(err.value)


def test_default_place_is_the_torch_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hubdir"))
    with pytest.raises(UserError, match=str(tmp_path / "hubdir" / "checkpoints" / VGG16_FILE)):
        PaperLPIPS.from_files()


def _by_hand(x, y, vgg_file, lin_file, size):
    """LPIPS of Zhang et al. 2018 Eq. 1 with average pooling, written out from the formula."""
    from torchvision.models.vgg import cfgs, make_layers

    features = make_layers(cfgs["D"])
    features.load_state_dict({k[len("features."):]: v
                              for k, v in torch.load(vgg_file, weights_only=True).items()})
    layers = [nn.AvgPool2d(2, 2) if isinstance(m, nn.MaxPool2d) else m for m in features]
    w = torch.load(lin_file, weights_only=True)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

    def feats(z):
        z = ((F.interpolate(z, size=size, mode="bilinear") + 1) / 2 - mean) / std
        out = []
        for i, m in enumerate(layers[: TAPS[-1] + 1]):
            z = m(z)
            if i in TAPS:
                out.append(z / (z.square().sum(1, keepdim=True).sqrt() + 1e-10))
        return out

    return sum(((a - b).square() * wk).mean(dim=(2, 3)).sum(1)
               for a, b, wk in zip(feats(x), feats(y), w, strict=True))


def test_value_matches_the_formula_with_average_pooling(weights_dir):
    d = PaperLPIPS.from_files(weights_dir, resize=48)  # 48 px keeps the CPU test fast; the preset uses 224
    assert not any(isinstance(m, nn.MaxPool2d) for m in d.modules())
    assert sum(isinstance(m, nn.AvgPool2d) for m in d.modules()) == 5
    g = torch.Generator().manual_seed(2)
    x, y = torch.rand(3, 3, 16, 16, generator=g) * 2 - 1, torch.rand(3, 3, 16, 16, generator=g) * 2 - 1
    got = d(x, y)
    assert got.shape == (3,)
    want = _by_hand(x, y, weights_dir / VGG16_FILE, weights_dir / LPIPS_FILE, 48)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-7), (got, want)
    assert torch.all(d(x, x) == 0)
    xr = x.clone().requires_grad_(True)
    d(xr, y).sum().backward()
    assert xr.grad is not None and torch.isfinite(xr.grad).all()
    assert not any(p.requires_grad for p in d.parameters())


def test_inputs_reach_the_network_at_224(weights_dir):
    d = PaperLPIPS.from_files(weights_dir)
    seen = []

    class Stop(Exception):
        pass

    def hook(module, args):
        seen.append(tuple(args[0].shape))
        raise Stop

    first_conv = next(m for m in d.modules() if isinstance(m, nn.Conv2d))
    first_conv.register_forward_pre_hook(hook)
    with pytest.raises(Stop):
        d(torch.zeros(1, 3, 32, 32), torch.zeros(1, 3, 32, 32))
    assert seen == [(1, 3, 224, 224)]


def test_cifar10_preset_uses_it_and_make_distance_builds_it(weights_dir, tmp_path):
    p = load_preset("cifar10")
    assert p.ctm.distance == "lpips_piq"
    assert isinstance(make_distance(p.ctm.model_copy(update={"lpips_weights": str(weights_dir)}), 3072),
                      PaperLPIPS)
    with pytest.raises(UserError, match="missing"):
        make_distance(p.ctm.model_copy(update={"lpips_weights": str(tmp_path)}), 3072)
