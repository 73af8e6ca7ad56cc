"""The Projected-GAN discriminator (random weights of timm's networks): shapes, frozen parts, offline
errors."""

from __future__ import annotations

import pytest
import torch

from ctmtool.errors import UserError
from ctmtool.nets.projected_gan import BACKBONES, HF_REPOS, ProjectedDiscriminator, weight_file

timm = pytest.importorskip("timm")


@pytest.fixture(scope="module")
def disc():
    """The real EfficientNet-lite0 and, to keep the CPU test fast, DeiT-tiny in place of DeiT-base (same code
    path)."""
    torch.manual_seed(0)
    return ProjectedDiscriminator({
        "deit_base_distilled_patch16_224": timm.create_model("deit_tiny_distilled_patch16_224",
                                                             pretrained=False),
        "tf_efficientnet_lite0": timm.create_model("tf_efficientnet_lite0", pretrained=False)})


def test_logits_per_feature_network_and_map_sizes(disc):
    seen = {}
    def keep(name):
        def hook(module, args, out):
            seen[name] = [o.shape[1:] for o in out]
        return hook

    hooks = [disc.features[n].register_forward_hook(keep(n)) for n in disc.names]
    logits = disc(torch.rand(2, 3, 32, 32) * 2 - 1)
    for h in hooks:
        h.remove()
    # four heads per network, each a 4x4 logit map: 112 -> 56 -> 28 -> 14 -> 7 -> 4 for the first head
    assert [tuple(l.shape) for l in logits] == [(2, 64), (2, 64)]
    for name in disc.names:  # after CCM (64..512 channels) and CSM (x2 upsampling, halving channels)
        assert ([tuple(s) for s in seen[name]]
                == [(64, 112, 112), (64, 56, 56), (128, 28, 28), (256, 14, 14)]), name


def test_labels_are_ignored_and_features_frozen(disc):
    disc.eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    a, b = disc(x), disc(x, torch.tensor([3, 5]))
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    disc.train()
    assert not disc.features.training and all(not m.training for m in disc._pretrained)
    assert all(h.training for h in disc.heads.values())
    trainable = {n for n, p in disc.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("heads.") for n in trainable)
    # the pretrained networks are not in the state dict; the random projections and the heads are
    keys = list(disc.state_dict())
    assert (any(".ccm." in k for k in keys) and any(".csm." in k for k in keys)
            and any(".post." in k for k in keys))
    assert not any("blocks" in k or "patch_embed" in k or "conv_stem" in k for k in keys)
    loss = sum(l.mean() for l in disc(x))
    loss.backward()
    assert all(p.grad is not None for n, p in disc.named_parameters() if p.requires_grad)


def test_grey_images_are_repeated_to_rgb(disc):
    disc.eval()
    g = torch.rand(2, 1, 16, 16) * 2 - 1
    assert all(torch.equal(u, v) for u, v in zip(disc(g), disc(g.expand(-1, 3, -1, -1)), strict=True))


def test_offline_error_names_the_file_and_its_source(tmp_path, monkeypatch):
    for name in BACKBONES:
        with pytest.raises(UserError) as err:
            weight_file(name, tmp_path)
        assert str(tmp_path / f"{name}.safetensors") in str(err.value) and HF_REPOS[name] in str(err.value)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="not in the Hugging Face cache"):
        weight_file(BACKBONES[1])


def test_weights_are_read_from_a_folder(tmp_path):
    from safetensors.torch import save_file

    from ctmtool.nets.projected_gan import _read, create_backbone

    src = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    save_file({k: v.contiguous() for k, v in src.state_dict().items()},
              str(tmp_path / "tf_efficientnet_lite0.safetensors"))
    path = weight_file("tf_efficientnet_lite0", tmp_path)
    model = create_backbone("tf_efficientnet_lite0", _read(path))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in src.state_dict().items())
    assert not model.training and not any(p.requires_grad for p in model.parameters())
