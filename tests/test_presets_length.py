"""Every shipped preset sets its training length in images, never by the clock (issue 16, item 1); a time
limit stays a user option (`--minutes`)."""

import tomllib
from pathlib import Path

import pytest

from ctmtool.cli.teacher import training_overrides
from ctmtool.config import TrainConfig, list_presets, load_preset, resolve_preset_path

DOCS = Path(__file__).resolve().parents[1] / "docs"
# Presets allowed to stop on the clock by default, with the reason. None: a result must not depend on the
# load.
TIME_LIMITED: dict[str, str] = {}


def _loop_steps(kimg: float, batch: int) -> int:
    """Optimiser steps of `loop.fit` for a length of `kimg` (it adds batch / 1000 per step until it reaches
    kimg)."""
    steps, done = 0, 0.0
    while done < kimg:
        steps, done = steps + 1, done + batch / 1000
    return steps


def _training_sections(p) -> dict[str, TrainConfig]:
    return {name: getattr(p, name) for name in type(p).model_fields
            if isinstance(getattr(p, name), TrainConfig)}


@pytest.mark.parametrize("name", list_presets())
def test_no_preset_stops_on_the_clock(name):
    raw = tomllib.loads(resolve_preset_path(name).read_text(encoding="utf-8"))
    timed = sorted(k for k, v in raw.items() if isinstance(v, dict) and "minutes" in v)
    p = load_preset(name)
    sections = _training_sections(p)
    assert {"teacher", "distill"} <= set(sections)
    if name in TIME_LIMITED:
        return
    assert timed == [], f"{name}: {timed} set minutes; give the length in kimg (a time limit is --minutes)"
    for section, cfg in sections.items():
        assert cfg.minutes is None, f"{name}.{section}"
        if section in raw:  # a section the file trains gives its own length
            assert "kimg" in raw[section], f"{name}.{section} gives no kimg"


@pytest.mark.parametrize("name, section, steps, quoted", [
    ("digits", "teacher", 11196, ("results.md", "11,196 steps of 256")),
    ("digits", "distill", 8235, ("results.md", "8,235 steps of 128")),
    ("toy-translate", "distill", 480, ("gctm.md", "480 optimiser steps")),
])
def test_cpu_presets_train_the_documented_steps(name, section, steps, quoted):
    cfg = getattr(load_preset(name), section)
    assert _loop_steps(cfg.kimg, cfg.batch) == steps
    doc, text = quoted
    assert text in (DOCS / doc).read_text(), f"docs/{doc} no longer quotes the run the {name} preset repeats"


def test_a_time_limit_stays_a_user_option():
    base = load_preset("digits").distill
    timed = load_preset("digits", training_overrides("distill", None, 2.5, None)).distill  # --minutes 2.5
    # the user asked for a length in minutes: the clock decides
    assert timed.minutes == 2.5 and timed.kimg >= 1e9
    # --set: a time limit on top of the length
    capped = load_preset("digits", ["distill.minutes=2.5"]).distill
    assert capped.minutes == 2.5 and capped.kimg == base.kimg
    longer = load_preset("digits", training_overrides("distill", 1979.1, None, None)).distill  # --kimg 1979.1
    # the 60-minute run's steps
    assert longer.kimg == 1979.1 and _loop_steps(longer.kimg, longer.batch) == 15462
