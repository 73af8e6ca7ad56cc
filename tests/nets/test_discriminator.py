"""Discriminator: head shapes with and without a backbone, frozen backbone, gradients, load_backbone."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ctmtool.errors import UserError
from ctmtool.nets.discriminator import Discriminator, load_backbone

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")


class Pyramid(nn.Module):
    """A tiny feature network returning two maps: (B, 4, H/2, W/2) and (B, 8, H/4, W/4)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.b = nn.Conv2d(4, 8, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        f1 = torch.relu(self.a(x))
        return [f1, torch.relu(self.b(f1))]


class Single(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Vector(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x.mean(dim=(2, 3)))


@pytest.fixture
def scripted_backbone(tmp_path):
    path = tmp_path / "backbone.pt"
    torch.jit.save(torch.jit.script(Pyramid()), str(path))
    return path


def test_from_scratch_shapes():
    d = Discriminator(3, 32, channels=8)
    out = d(torch.randn(2, 3, 32, 32))
    assert [tuple(o.shape) for o in out] == [(2, 1, 16, 16), (2, 1, 8, 8), (2, 1, 4, 4)]
    d4 = Discriminator(1, 16, channels=8, num_scales=4)
    assert [tuple(o.shape) for o in d4(torch.randn(2, 1, 16, 16))] == [(2, 1, s, s) for s in (8, 4, 2, 1)]
    assert all(p.requires_grad for p in d.parameters())


def test_from_scratch_all_parameters_train():
    d = Discriminator(3, 16, channels=8, spectral_norm=False)
    sum(o.mean() for o in d(torch.randn(2, 3, 16, 16))).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in d.parameters())


def test_bad_num_scales():
    with pytest.raises(ValueError, match="num_scales"):
        Discriminator(3, 8, num_scales=4)


def test_scripted_backbone_list(scripted_backbone):
    bb = load_backbone(scripted_backbone)
    d = Discriminator(3, 16, backbone=bb, channels=8)
    x = torch.randn(2, 3, 16, 16, requires_grad=True)
    out = d(x)
    assert [tuple(o.shape) for o in out] == [(2, 1, 8, 8), (2, 1, 4, 4)]
    sum(o.square().mean() for o in out).backward()
    assert all(p.grad is None and not p.requires_grad for p in bb.parameters())
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in d.parameters())
    deepest = Discriminator(3, 16, backbone=load_backbone(scripted_backbone), channels=8, num_scales=1)
    assert [tuple(o.shape) for o in deepest(x)] == [(2, 1, 4, 4)]


def test_backbone_not_in_state_dict_and_stays_eval(scripted_backbone):
    bb = load_backbone(scripted_backbone)
    d = Discriminator(3, 16, backbone=bb, channels=8)
    assert d.backbone is bb
    assert not any(k.startswith("backbone") or k.startswith("_backbone") for k in d.state_dict())
    n_bb = sum(p.numel() for p in bb.parameters())
    assert n_bb > 0 and all(p.requires_grad for p in d.parameters())
    d.train()
    assert d.training and not bb.training
    d2 = Discriminator(3, 16, backbone=load_backbone(scripted_backbone), channels=8)
    d2.load_state_dict(d.state_dict())  # strict: the heads alone are the whole state


def test_to_moves_backbone(scripted_backbone):
    bb = Single()
    d = Discriminator(3, 8, backbone=bb, channels=8).double()
    assert bb.conv.weight.dtype == torch.float64
    assert d(torch.randn(1, 3, 8, 8, dtype=torch.float64))[0].dtype == torch.float64
    sb = load_backbone(scripted_backbone)
    ds = Discriminator(3, 16, backbone=sb, channels=8).double()
    assert all(p.dtype == torch.float64 for p in sb.parameters())
    assert ds(torch.randn(1, 3, 16, 16, dtype=torch.float64))[0].dtype == torch.float64


def test_single_map_backbone_pools():
    d = Discriminator(3, 16, backbone=Single(), channels=8)
    assert [tuple(o.shape) for o in d(torch.randn(2, 3, 16, 16))] == [(2, 1, 8, 8), (2, 1, 4, 4),
                                                                      (2, 1, 2, 2)]
    d2 = Discriminator(3, 16, backbone=Single(), channels=8, num_scales=1)
    assert len(d2(torch.randn(2, 3, 16, 16))) == 1


def test_vector_backbone_and_resize():
    seen = {}

    class Spy(Vector):
        def forward(self, x):
            seen["shape"] = tuple(x.shape)
            return super().forward(x)

    d = Discriminator(3, 8, backbone=Spy(), channels=8, backbone_resize=12)
    out = d(torch.randn(2, 3, 8, 8))
    assert [tuple(o.shape) for o in out] == [(2, 1, 1, 1)]
    assert seen["shape"] == (2, 3, 12, 12)


def test_load_backbone_errors(tmp_path):
    with pytest.raises(UserError, match=r"missing\.pt does not exist"):
        load_backbone(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    torch.save({"w": torch.zeros(1)}, bad)  # a state dict, not TorchScript
    with pytest.raises(UserError, match=r"cannot load discriminator backbone .*bad\.pt as TorchScript"):
        load_backbone(bad)


def test_vector_discriminator_gives_one_logit_per_item_and_passes_gradients():
    from ctmtool.nets.discriminator import VectorDiscriminator

    d = VectorDiscriminator(2, hidden=16, depth=2)
    x = torch.randn(5, 2, requires_grad=True)
    (logits,) = d(x)
    assert logits.shape == (5, 1)
    logits.sum().backward()
    assert x.grad is not None and bool(x.grad.abs().sum() > 0)
    assert all(p.grad is not None for p in d.parameters() if p.requires_grad)
