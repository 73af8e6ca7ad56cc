"""Serving fixtures: small random-weight checkpoints and a live server in a thread."""

from __future__ import annotations

import pytest

SMALL_MLP = ["net.mlp.hidden=64", "net.mlp.depth=2", "net.mlp.emb=32"]


@pytest.fixture(scope="session")
def digits_ckpt(tmp_path_factory):
    """A digits-shaped (1x8x8) CTM with random weights (a small MLP: the page's behaviour, not its
    quality)."""
    from ctmtool.jobs.export import random_checkpoint

    return random_checkpoint(tmp_path_factory.mktemp("ck") / "digits.safetensors", "digits", "ctm",
                             overrides=SMALL_MLP)


@pytest.fixture(scope="session")
def digits_engine(digits_ckpt):
    from ctmtool.core.models import load_model
    from ctmtool.serve.engine import Engine

    return Engine(load_model(digits_ckpt), backend="torch")


@pytest.fixture(scope="module")
def server(digits_engine):
    """The app on a free localhost port, at most 3 pages at once and 20 kB uploads."""
    from ctmtool.serve import BackgroundServer
    from ctmtool.serve.app import create_app

    srv = BackgroundServer(create_app(digits_engine, max_clients=3, max_upload=20_000), max_message=200_000)
    yield srv
    srv.stop()
