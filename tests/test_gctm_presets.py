"""The GCTM presets validate against the schema and name couplings and settings ctmtool.gctm understands."""

from __future__ import annotations

import pytest
import torch

from ctmtool.config import list_presets, load_preset
from ctmtool.gctm import make_coupling
from ctmtool.gctm.couplings import item_shape

GCTM_PRESETS = ["toy-translate", "cifar10-sr4", "cifar10-inpaint", "cifar10-edges", "edges2shoes", "facades",
                "night2day"]
PIX2PIX = ["edges2shoes", "facades", "night2day"]


def test_every_gctm_preset_is_listed():
    assert set(GCTM_PRESETS) <= set(list_presets())
    assert {p for p in list_presets() if load_preset(p).gctm is not None} >= set(GCTM_PRESETS)


@pytest.mark.parametrize("name", GCTM_PRESETS)
def test_gctm_preset_validates_and_builds_its_coupling(name):
    p = load_preset(name)
    assert p.gctm is not None
    g = p.gctm
    assert 1 <= g.max_steps <= g.grid - 1
    cp = make_coupling(g.coupling, g.source_noise, g.sinkhorn_reg, gmm=p.data.gmm)
    assert cp.source_noise == g.source_noise
    assert p.distill.optimizer == "adam" and p.distill.ema == 0.999  # GCTM: Adam, EMA 0.999
    assert p.ctm.teacher == "self"  # GCTM has no teacher


@pytest.mark.parametrize("name", GCTM_PRESETS)
def test_gctm_preset_coupling_runs_on_data_of_its_shape(name):
    p = load_preset(name)
    if p.data.source == "toy":
        stored = (2,)
    else:
        side = p.data.resolution or 64
        stored = (3, side, 2 * side) if p.gctm.coupling.startswith("paired") else (3, side, side)
    x = torch.rand(4, *stored, generator=torch.Generator().manual_seed(0)) * 2 - 1
    x0, x1 = make_coupling(p.gctm.coupling, p.gctm.source_noise, gmm=p.data.gmm).pair(
        x, generator=torch.Generator().manual_seed(1))
    assert x0.shape == x1.shape == (4, *item_shape(p.gctm.coupling, stored))


@pytest.mark.parametrize("name", PIX2PIX)
def test_pix2pix_presets_follow_the_reference(name):
    p = load_preset(name)
    assert p.gctm.coupling.startswith("paired") and p.gctm.source_noise == 0.05
    assert (p.net.kind == "unet" and p.net.unet.model_channels == 128
            and p.net.unet.channel_mult == [1, 2, 2, 2])
    assert (p.distill.batch, p.distill.lr) == (64, 1e-4)
    assert (p.gctm.grid, p.gctm.max_steps) == (5, 4)  # GCTM's 4-step image-to-image grid


def test_facades_translates_labels_to_photos():
    assert load_preset("facades").gctm.coupling == "paired:right"  # pix2pix facades: photo left, labels right
    assert load_preset("edges2shoes").gctm.coupling == "paired"  # edges on the left


def test_toy_translate_maps_moons_to_the_gmm_with_ot():
    p = load_preset("toy-translate")
    assert p.gctm.coupling == "toy-ot:moons" and p.data.toy == "gmm" and len(p.data.gmm.means) == 8


@pytest.mark.parametrize("name", ["cifar10-sr4", "cifar10-inpaint", "cifar10-edges"])
def test_cifar_restoration_presets_use_the_fast_network_and_a_folder(name):
    p = load_preset(name)
    fast = load_preset("cifar10-fast").net.unet
    assert p.net.unet.model_channels == fast.model_channels and p.net.unet.channel_mult == fast.channel_mult
    assert p.data.source == "folder" and p.data.resolution == 32 and p.gctm.coupling.startswith("corrupt:")


def test_pix2pix_presets_train_at_the_papers_64_pixels():
    """GCTM's pix2pix runs resize to 64 (--size 64); edges2shoes draws DSM times from beta_3_1."""
    from ctmtool.config import load_preset

    for name in ("edges2shoes", "facades", "night2day"):
        assert load_preset(name).gctm.paired_size == 64, name
    assert load_preset("edges2shoes").gctm.dsm_times == "beta_3_1"
