"""Distances d(x, y): pseudo-Huber closed form and limits, squared L2, LPIPS loading and properties,
make_distance."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from torch import nn

from ctmtool.config import CTMConfig
from ctmtool.errors import UserError
from ctmtool.losses.distances import (
    LPIPS,
    FeatureDistance,
    PseudoHuber,
    SquaredL2,
    default_huber_c,
    make_distance,
    pseudo_huber,
    squared_l2,
)


def test_default_huber_c():
    assert default_huber_c(3 * 32 * 32) == pytest.approx(0.00054 * math.sqrt(3072))


def test_pseudo_huber_closed_form():
    x = torch.tensor([[3.0, 4.0], [1.0, 1.0]])
    y = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    d = pseudo_huber(x, y, c=1.0)
    assert d.shape == (2,)
    torch.testing.assert_close(d, torch.tensor([math.sqrt(26.0) - 1.0, math.sqrt(2.0) - 1.0]))


def test_pseudo_huber_per_sample_over_image_dims():
    x = torch.zeros(2, 3, 4, 4)
    y = torch.full((2, 3, 4, 4), 0.5)
    d = pseudo_huber(x, y, c=0.1)
    norm = math.sqrt(48 * 0.25)
    torch.testing.assert_close(d, torch.full((2,), math.sqrt(norm**2 + 0.01) - 0.1))


def test_pseudo_huber_limits_and_zero():
    x = torch.randn(4, 10, dtype=torch.float64)
    c = 1.0
    small = 1e-4 * torch.randn(4, 10, dtype=torch.float64)
    sq = small.square().sum(1)
    torch.testing.assert_close(pseudo_huber(x + small, x, c), sq / (2 * c), rtol=1e-6, atol=0)
    large = 1e4 * torch.randn(4, 10, dtype=torch.float64)
    torch.testing.assert_close(pseudo_huber(x + large, x, c), large.norm(dim=1), rtol=1e-3, atol=0)
    assert torch.equal(pseudo_huber(x, x.clone(), c), torch.zeros(4, dtype=torch.float64))


def test_squared_l2():
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    y = torch.tensor([[1.0, 0.0, 3.0, 0.0]])
    torch.testing.assert_close(squared_l2(x, y), torch.tensor([(4.0 + 16.0) / 4]))
    assert squared_l2(torch.ones(3, 2, 2, 2), torch.ones(3, 2, 2, 2)).shape == (3,)


# ------------------------------------------------------------------------------------------------
# LPIPS

# The lpips package's VGG16 layout, written out independently of the module under test:
# slice k holds torchvision `features` indices; convolutions (index: in, out channels).
_CONVS = {
    1: {0: (3, 64), 2: (64, 64)},
    2: {5: (64, 128), 7: (128, 128)},
    3: {10: (128, 256), 12: (256, 256), 14: (256, 256)},
    4: {17: (256, 512), 19: (512, 512), 21: (512, 512)},
    5: {24: (512, 512), 26: (512, 512), 28: (512, 512)},
}
_LIN = [64, 128, 256, 512, 512]


def _lpips_state_dict() -> dict[str, torch.Tensor]:
    """A fresh dict (safe to edit) of the cached random weights."""
    return dict(_random_lpips_weights())


@functools.cache
def _random_lpips_weights() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    sd = {}
    for k, convs in _CONVS.items():
        for i, (cin, cout) in convs.items():
            sd[f"net.slice{k}.{i}.weight"] = (torch.randn(cout, cin, 3, 3, generator=g)
                                              * math.sqrt(2 / (9 * cin)))
            sd[f"net.slice{k}.{i}.bias"] = 0.01 * torch.randn(cout, generator=g)
    for k, c in enumerate(_LIN):
        w = torch.rand(1, c, 1, 1, generator=g)
        sd[f"lin{k}.model.1.weight"] = w
        sd[f"lins.{k}.model.1.weight"] = w  # the lpips package stores the lin layers twice
    sd["scaling_layer.shift"] = torch.tensor([-0.030, -0.088, -0.188])[None, :, None, None]
    sd["scaling_layer.scale"] = torch.tensor([0.458, 0.448, 0.450])[None, :, None, None]
    return sd


@pytest.fixture(scope="module")
def lpips_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("lpips") / "lpips_vgg.pt"
    torch.save(_lpips_state_dict(), path)
    return path


@pytest.fixture(scope="module")
def lpips_net(lpips_file):
    return LPIPS(lpips_file, resize=None)  # 16x16 inputs keep the CPU test fast


def test_lpips_missing_file(tmp_path):
    with pytest.raises(UserError, match=r"nope\.pt does not exist.*lpips\.LPIPS\(net='vgg'\)"):
        LPIPS(tmp_path / "nope.pt")


def test_lpips_missing_keys(tmp_path):
    sd = _lpips_state_dict()
    del sd["lin3.model.1.weight"], sd["net.slice2.5.bias"]
    path = tmp_path / "partial.pt"
    torch.save(sd, path)
    with pytest.raises(UserError, match=r"partial\.pt lack 2 .*net\.slice2\.5\.bias.*lin3\.model\.1\.weight"):
        LPIPS(path)


def test_lpips_lin_only_file_is_refused(tmp_path):
    """The lpips package's own vgg.pth holds only lin*; the error must say the backbone is missing."""
    sd = {k: v for k, v in _lpips_state_dict().items() if k.startswith("lin")}
    path = tmp_path / "vgg.pth"
    torch.save(sd, path)
    with pytest.raises(UserError, match=r"lack 26 .*net\.slice1\.0\.weight"):
        LPIPS(path)


def test_lpips_wrong_shape(tmp_path):
    sd = _lpips_state_dict()
    sd["lin0.model.1.weight"] = torch.rand(1, 32, 1, 1)
    path = tmp_path / "bad.pt"
    torch.save(sd, path)
    with pytest.raises(UserError, match=r"lin0\.model\.1\.weight has shape \(1, 32, 1, 1\)"):
        LPIPS(path)


def test_lpips_unreadable_file(tmp_path):
    path = tmp_path / "junk.pt"
    path.write_text("not a checkpoint")
    with pytest.raises(UserError, match=r"cannot read LPIPS weights .*junk\.pt"):
        LPIPS(path)


def test_lpips_loads_and_is_frozen(lpips_net, lpips_file):
    sd = _lpips_state_dict()
    torch.testing.assert_close(lpips_net.features[26].weight, sd["net.slice5.26.weight"])
    torch.testing.assert_close(lpips_net.lins[2].weight, sd["lin2.model.1.weight"])
    assert not any(p.requires_grad for p in lpips_net.parameters())
    lpips_net.train()
    assert not lpips_net.training


def test_lpips_safetensors(tmp_path, lpips_net):
    from safetensors.torch import save_file

    sd = {k: v for k, v in _lpips_state_dict().items() if not k.startswith("lins.")}  # no shared tensors
    path = tmp_path / "lpips_vgg.safetensors"
    save_file(sd, str(path))
    net = LPIPS(path, resize=None)
    x, y = torch.rand(2, 3, 16, 16) * 2 - 1, torch.rand(2, 3, 16, 16) * 2 - 1
    torch.testing.assert_close(net(x, y), lpips_net(x, y))


def test_lpips_properties(lpips_net):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 16, 16, generator=g) * 2 - 1
    y = torch.rand(2, 3, 16, 16, generator=g) * 2 - 1
    with torch.no_grad():
        dxy, dyx, dxx = lpips_net(x, y), lpips_net(y, x), lpips_net(x, x.clone())
    assert dxy.shape == (2,)
    assert torch.equal(dxx, torch.zeros(2))
    assert (dxy > 0).all()
    torch.testing.assert_close(dxy, dyx)


def test_lpips_matches_formula_on_one_layer(lpips_net):
    """Recompute LPIPS by hand (scaling, VGG taps, unit-normalise, lin, spatial mean, sum)."""
    x, y = torch.rand(2, 3, 16, 16) * 2 - 1, torch.rand(2, 3, 16, 16) * 2 - 1
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
    total = torch.zeros(2)
    hx, hy = (x - shift) / scale, (y - shift) / scale
    for i, layer in enumerate(lpips_net.features):
        hx, hy = layer(hx), layer(hy)
        if i in (3, 8, 15, 22, 29):
            k = (3, 8, 15, 22, 29).index(i)
            nx = hx / (hx.norm(dim=1, keepdim=True) + 1e-10)
            ny = hy / (hy.norm(dim=1, keepdim=True) + 1e-10)
            w = lpips_net.lins[k].weight.view(1, -1, 1, 1)
            total += ((nx - ny) ** 2 * w).sum(1).mean(dim=(1, 2))
    with torch.no_grad():
        torch.testing.assert_close(lpips_net(x, y), total, rtol=1e-4, atol=1e-6)


def test_lpips_gradient_reaches_input(lpips_net):
    x = (torch.rand(1, 3, 16, 16) * 2 - 1).requires_grad_(True)
    y = torch.rand(1, 3, 16, 16) * 2 - 1
    lpips_net(x, y).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------------------
# FeatureDistance and make_distance


class _Feat(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        f = self.conv(x)
        return [f, f.mean(dim=(2, 3))]


def test_feature_distance():
    torch.manual_seed(0)
    d = FeatureDistance(_Feat())
    x, y = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    assert d(x, y).shape == (2,)
    assert torch.equal(d(x, x.clone()), torch.zeros(2))
    assert (d(x, y) > 0).all()
    assert not any(p.requires_grad for p in d.parameters())


def test_feature_distance_vector_closed_form():
    d = FeatureDistance(nn.Flatten())
    x = torch.tensor([[[[1.0, 0.0]]]])  # (1, 1, 1, 2) -> feature (1, 0)
    y = torch.tensor([[[[0.0, 2.0]]]])  # -> (0, 2), unit (0, 1)
    torch.testing.assert_close(d(x, y), torch.tensor([2.0]))


def test_feature_distance_input_range():
    seen = {}

    class Spy(nn.Module):
        def forward(self, x):
            seen["x"] = x
            return x.flatten(1)

    FeatureDistance(Spy(), input_range="[0,255]")(-torch.ones(1, 1, 2, 2), torch.ones(1, 1, 2, 2))
    assert torch.equal(seen["x"], torch.full((1, 1, 2, 2), 255.0))
    with pytest.raises(ValueError, match="input_range"):
        FeatureDistance(Spy(), input_range="[0,1]")


def test_make_distance(lpips_file):
    assert isinstance(make_distance(CTMConfig(distance="l2"), dim=4), SquaredL2)
    ph = make_distance(CTMConfig(distance="pseudo_huber"), dim=3072)
    assert isinstance(ph, PseudoHuber) and ph.c == pytest.approx(default_huber_c(3072))
    assert make_distance(CTMConfig(distance="pseudo_huber", huber_c=0.3), dim=3072).c == 0.3
    x, y = torch.randn(5, 2), torch.randn(5, 2)
    torch.testing.assert_close(ph(x, y), pseudo_huber(x, y, default_huber_c(3072)))
    lp = make_distance(CTMConfig(distance="lpips", lpips_weights=str(lpips_file)), dim=3072)
    assert isinstance(lp, LPIPS) and lp.resize == 224  # the CTM reference upsamples to 224
    assert isinstance(make_distance(CTMConfig(distance="feature"), dim=3, feature_net=nn.Flatten()),
                      FeatureDistance)


def test_make_distance_errors(tmp_path):
    with pytest.raises(UserError, match="ctm.lpips_weights"):
        make_distance(CTMConfig(distance="lpips"), dim=3072)
    with pytest.raises(UserError, match="missing.pt does not exist"):
        make_distance(CTMConfig(distance="lpips", lpips_weights=str(tmp_path / "missing.pt")), dim=3072)
    with pytest.raises(UserError, match="feature network"):
        make_distance(CTMConfig(distance="feature"), dim=3072)
