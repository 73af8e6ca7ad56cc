"""The README's main job (`presets/toy.toml`) is set in images, so its result does not depend on the machine."""

import math

from ctmtool.config import load_preset


def test_toy_training_length_is_in_images_not_minutes():
    p = load_preset("toy")
    for section in (p.teacher, p.distill):
        assert section.minutes is None  # a time limit would make the result depend on the machine's load
    # the steps quoted in docs/results.md (the loop stops at the first step that reaches kimg)
    assert math.ceil(p.teacher.kimg * 1000 / p.teacher.batch - 1e-9) == 5000
    assert math.ceil(p.distill.kimg * 1000 / p.distill.batch - 1e-9) == 10000


def test_toy_time_limit_stays_a_user_option():
    p = load_preset("toy", ["distill.minutes=3"])
    assert p.distill.minutes == 3 and p.distill.kimg == load_preset("toy").distill.kimg
