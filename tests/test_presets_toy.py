"""The README's main job (`presets/toy.toml`) is set in images, so its result does not depend on the
machine."""

from ctmtool.config import load_preset


def _loop_steps(kimg: float, batch: int) -> int:
    """Optimiser steps of `loop.fit` for a length of `kimg` (its own float accumulation)."""
    steps, done = 0, 0.0
    while done < kimg:
        steps, done = steps + 1, done + batch / 1000
    return steps


def test_toy_training_length_is_in_images_not_minutes():
    p = load_preset("toy")
    for section in (p.teacher, p.distill):
        assert section.minutes is None  # a time limit would make the result depend on the machine's load
    # the steps quoted in docs/results.md: the loop adds batch / 1000 per step until it reaches kimg
    assert _loop_steps(p.teacher.kimg, p.teacher.batch) == 5000
    # float sums: 14,000 steps fall just short of 3,584
    assert _loop_steps(p.distill.kimg, p.distill.batch) == 14001


def test_toy_time_limit_stays_a_user_option():
    p = load_preset("toy", ["distill.minutes=3"])
    assert p.distill.minutes == 3 and p.distill.kimg == load_preset("toy").distill.kimg
