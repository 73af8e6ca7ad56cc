"""Shared test set-up: one CPU thread per test process, tiny presets and one tiny-checkpoint factory.

Fixtures (use these rather than building presets and checkpoints by hand in a test file):
- `toy_preset`: presets/toy.toml, fully resolved (8-component 2-D Gaussian mixture).
- `tiny_preset(name="toy", *overrides, net="mlp")`: a preset with a tiny network (`SMALL_MLP` or
  `SMALL_UNET`) and any further `key=value` overrides.

The sampling, schedule and CLI tests are written against EDM's noise range 0.002..80 (the CTM reference
code's default schedules, the CIFAR-10 presets); the toy preset itself trains on 0.002..2 (docs/results.md),
so tiny toy presets and checkpoints get `EDM_RANGE` unless a test overrides it; `toy_preset` is the real
preset.
- `make_model(kind="ctm", shape=(2,), preset=None, meta=None, scale=None, seed=0)`: a freshly built tiny
  model of that kind as a `ctmtool.core.models.Model` (eval mode, no gradients); `scale` perturbs every
  weight.
- `make_checkpoint(path, kind, shape, preset, meta, scale, seed)`: the same model saved as a ctmtool
  checkpoint; returns the path.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

# a 1-layer MLP: fast, and still a real network with s-layers and a zero-initialised output layer
SMALL_MLP = ("net.mlp.hidden=32", "net.mlp.depth=1", "net.mlp.emb=16")
# a one-level 16-channel SongUNet without attention or dropout (images of any square size)
SMALL_UNET = ("net.kind=unet", "net.unet.model_channels=16", "net.unet.channel_mult=[1]",
              "net.unet.num_blocks=1", "net.unet.attn_resolutions=[]", "net.unet.dropout=0.0")


# EDM's sampling range, which the toy preset (0.002..2) replaces: see the module docstring
EDM_RANGE = ("diffusion.sigma_max=80",)


def tiny_preset(name: str = "toy", *overrides: str, net: str = "mlp"):
    """Preset `name` with a tiny network (net "mlp" or "unet") and further `key=value` overrides."""
    from ctmtool.config import load_preset

    small = {"mlp": SMALL_MLP, "unet": SMALL_UNET}[net]
    return load_preset(name, [*(EDM_RANGE if name == "toy" else ()), *small, *overrides])


def build_model(
    kind: str = "ctm",                  # teacher | ctm | gctm
    shape: Sequence[int] = (2,),        # data shape: (D,) vectors, (C, H, W) images
    preset=None,                        # a Preset; default tiny_preset("toy"), or "toy-translate" for a gctm
    meta: dict | None = None,           # checkpoint meta (a GCTM's "moments")
    scale: float | None = None,         # add scale * N(0, 1) to every parameter (None: keep the
                                        # initialisation)
    seed: int = 0,                      # initialisation and perturbation seed
):
    """(preset, a freshly built tiny preconditioned network of `kind`); seeded, global RNG untouched."""
    from ctmtool.core.models import build_precond

    if preset is None:
        preset = tiny_preset("toy-translate" if kind == "gctm" else "toy")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = build_precond(kind, preset, tuple(shape), meta)
    if scale is not None:  # the output layer starts at zero: this makes F non-trivial
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in net.parameters():
                p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return preset, net


def write_checkpoint(path: str | Path, kind: str = "ctm", shape: Sequence[int] = (2,), preset=None,
                     meta: dict | None = None, scale: float | None = None, seed: int = 0,
                     group: str = "ema") -> Path:
    """`build_model(...)` saved as a ctmtool checkpoint at `path` (weights in `group`); returns the path."""
    from ctmtool.checkpoint import Checkpoint, save_checkpoint

    preset, net = build_model(kind, shape, preset, meta, scale, seed)
    return save_checkpoint(Path(path),
                           Checkpoint(kind, preset, tuple(shape), {group: net.state_dict()}, meta or {}))


def load_tiny_model(kind: str = "ctm", shape: Sequence[int] = (2,), preset=None, meta: dict | None = None,
                    scale: float | None = None, seed: int = 0):
    """`build_model(...)` as an in-memory `ctmtool.core.models.Model` in eval mode without gradients."""
    from ctmtool.core.models import Model

    preset, net = build_model(kind, shape, preset, meta, scale, seed)
    return Model(kind, net.eval().requires_grad_(False), preset, tuple(shape))


@pytest.fixture(scope="session", autouse=True)
def program_cache(tmp_path_factory):
    """Traced sampling programs go to a folder of this test session, never to the user's cache
    (`ctmtool.core.fastpath.program_cache_dir`; CLI subprocesses inherit the variable)."""
    import os

    folder = tmp_path_factory.mktemp("program-cache")
    old = os.environ.get("CTMTOOL_PROGRAM_CACHE")
    os.environ["CTMTOOL_PROGRAM_CACHE"] = str(folder)
    yield folder
    if old is None:
        os.environ.pop("CTMTOOL_PROGRAM_CACHE", None)
    else:
        os.environ["CTMTOOL_PROGRAM_CACHE"] = old


@pytest.fixture
def toy_preset():
    """presets/toy.toml, fully resolved (8-component 2-D Gaussian mixture)."""
    from ctmtool.config import load_preset

    return load_preset("toy")


@pytest.fixture(name="tiny_preset", scope="session")
def tiny_preset_fixture():
    """`tiny_preset(name="toy", *overrides, net="mlp")`: a preset with a tiny MLP or U-Net."""
    return tiny_preset


@pytest.fixture(scope="session")
def make_model():
    """`load_tiny_model(kind="ctm", shape=(2,), preset=None, meta=None, scale=None, seed=0)` -> Model."""
    return load_tiny_model


@pytest.fixture(scope="session")
def make_checkpoint():
    """`write_checkpoint(path, kind="ctm", shape=(2,), preset=None, meta=None, scale=None, seed=0)` ->
    path."""
    return write_checkpoint


def plan_and_generate(model, n, seed=0, batch=256, device="cpu", progress=None, **settings):
    """`ctmtool.core.sampling.generate` with a plan from explicit settings
    (`ctmtool.jobs.plan.plan_explicit`): the keyword form the sampler tests use."""
    from ctmtool.core.sampling import generate
    from ctmtool.jobs.plan import plan_explicit

    return generate(model, n, plan_explicit(model, batch=batch, **settings), seed=seed, device=device,
                    progress=progress)
