"""Presets: every shipped preset validates, overrides apply or are refused with a useful message,
and a resolved preset survives its own TOML rendering."""

from __future__ import annotations

import math
import tomllib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ctmtool.config import (
    DiffusionConfig,
    Preset,
    apply_overrides,
    list_presets,
    load_preset,
    override_preset,
    parse_override,
    preset_from_dict,
    preset_to_toml,
)
from ctmtool.errors import UserError

SHIPPED = list_presets()
TOY = load_preset("toy")


def test_presets_are_found():
    assert SHIPPED, "no presets/*.toml found"
    assert list_presets() == SHIPPED
    for name in ("toy", "digits", "cifar10", "imagenet64", "toy-translate"):
        assert name in SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
def test_every_preset_validates(name):
    p = load_preset(name)
    assert isinstance(p, Preset)
    assert p.name == name
    assert p.description, f"preset {name} has no description"
    d = p.diffusion
    assert 0 < d.sigma_min < d.sigma_max
    assert p.ctm.max_steps <= p.ctm.grid - 1


def test_paper_defaults():
    """Karras et al. 2022 and Kim et al. 2024: EDM noise range, rho 7, sigma_data 0.5, N = 18 / K = 17 for
    CIFAR-10, N = 40 for ImageNet-64."""
    d = DiffusionConfig()
    assert (d.sigma_min, d.sigma_max, d.rho, d.sigma_data) == (0.002, 80.0, 7.0, 0.5)
    assert (d.p_mean, d.p_std) == (-1.2, 1.2)
    c = load_preset("cifar10")
    assert (c.ctm.grid, c.ctm.max_steps) == (18, 17)
    assert load_preset("imagenet64").ctm.grid == 40


@pytest.mark.parametrize("name", SHIPPED)
def test_preset_round_trips_through_toml(name):
    p = load_preset(name)
    text = preset_to_toml(p)
    back = preset_from_dict(tomllib.loads(text))
    assert back == p
    assert back.model_dump() == p.model_dump()


def test_preset_round_trip_after_overrides():
    p = load_preset("toy", ["teacher.lr=1e-05", "teacher.grad_clip=1e9", "sample.sigmas=[80, 2.5, 0.002]",
                            "description=\"tab\\t and quote \\\" and backslash \\\\ inside\""])
    assert p.description == 'tab\t and quote " and backslash \\ inside'
    assert preset_from_dict(tomllib.loads(preset_to_toml(p))) == p


def test_preset_round_trip_multiline_string():
    p = load_preset("toy", ['description="line one\\nline two"'])
    assert p.description == "line one\nline two"
    assert preset_from_dict(tomllib.loads(preset_to_toml(p))) == p


# --------------------------------------------------------------------------------------------------
# Good overrides


def test_override_scalar(toy_preset):
    p = load_preset("toy", ["teacher.batch=64"])
    assert p.teacher.batch == 64
    assert p.distill.batch == toy_preset.distill.batch  # nothing else moves
    assert p.model_dump(exclude={"teacher"}) == toy_preset.model_dump(exclude={"teacher"})


def test_override_list_bool_nested_string():
    p = load_preset("toy", ["net.unet.channel_mult=[1, 2, 4]", "gan.enabled=true", "data.gmm.std=0.1",
                            "ctm.eval_emas=[0.99,0.999]", "sample.sigmas=[80,2.515,0.002]"])
    assert p.net.unet.channel_mult == [1, 2, 4]
    assert p.gan.enabled is True
    assert p.data.gmm.std == 0.1
    assert p.ctm.eval_emas == [0.99, 0.999]
    assert p.sample.sigmas == [80, 2.515, 0.002]


def test_override_bare_and_quoted_strings():
    p = load_preset("toy", ["data.path=/tmp/some dir/x.npz", 'fid.ref="cifar10-train"', "data.toy=moons"])
    assert p.data.path == "/tmp/some dir/x.npz"
    assert p.fid.ref == "cifar10-train"
    assert p.data.toy == "moons"


def test_override_whitespace_and_later_wins():
    p = load_preset("toy", [" teacher.batch = 32 ", "teacher.batch=16"])
    assert p.teacher.batch == 16


def test_override_dsm_weight_number_or_adaptive():
    assert load_preset("toy", ["ctm.dsm_weight=0.5"]).ctm.dsm_weight == 0.5
    assert load_preset("toy", ["ctm.dsm_weight=adaptive"]).ctm.dsm_weight == "adaptive"


def test_override_micro_batch_dividing_batch():
    p = load_preset("toy", ["teacher.batch=64", "teacher.micro_batch=16"])
    assert (p.teacher.batch, p.teacher.micro_batch) == (64, 16)


def test_override_preset_on_resolved(toy_preset):
    p = override_preset(toy_preset, ["sample.nfe=4", "sample.gamma=0.5"])
    assert (p.sample.nfe, p.sample.gamma) == (4, 0.5)
    assert override_preset(toy_preset, []) is toy_preset
    with pytest.raises(UserError, match="sample.gamma"):
        override_preset(toy_preset, ["sample.gamma=1.5"])


def test_preset_from_path(tmp_path):
    f = tmp_path / "mine.toml"
    f.write_text('description = "mine"\n[data]\nsource = "digits"\n[teacher]\nbatch = 8\n')
    p = load_preset(str(f))
    assert (p.name, p.description, p.teacher.batch) == ("mine", "mine", 8)


# --------------------------------------------------------------------------------------------------
# Bad overrides: one UserError naming the key, the value and what is allowed


def _refused(overrides: list[str]) -> str:
    with pytest.raises(UserError) as info:
        load_preset("toy", overrides)
    return str(info.value)


def test_refuse_out_of_range_batch():
    msg = _refused(["teacher.batch=0"])
    assert "teacher.batch" in msg and "0" in msg
    assert "greater than or equal to 1" in msg


def test_refuse_gamma_above_one():
    msg = _refused(["sample.gamma=2"])
    assert "sample.gamma" in msg and "2" in msg
    assert "less than or equal to 1" in msg


def test_refuse_wrong_type():
    msg = _refused(["teacher.batch=abc"])
    assert "teacher.batch" in msg and "'abc'" in msg and "integer" in msg
    msg = _refused(["gan.enabled=[1]"])
    assert "gan.enabled" in msg and "bool" in msg


def test_refuse_bad_literal_lists_choices():
    msg = _refused(["net.kind=transformer"])
    assert "net.kind" in msg and "transformer" in msg
    assert "mlp" in msg and "unet" in msg


def test_refuse_unknown_key():
    msg = _refused(["teacher.bacth=64"])
    assert "teacher.bacth" in msg and "64" in msg and "unknown key" in msg


def test_refuse_unknown_key_says_what_is_allowed():
    msg = _refused(["teacher.bacth=64"])
    assert "micro_batch" in msg or "did you mean" in msg.lower()


def test_refuse_unknown_section():
    msg = _refused(["tracher.batch=64"])
    assert "tracher" in msg and "unknown key" in msg


def test_refuse_sigma_order():
    msg = _refused(["diffusion.sigma_min=100"])
    assert "sigma_min" in msg and "sigma_max" in msg and "100" in msg and "2.0" in msg  # the toy's sigma_max
    msg = _refused(["diffusion.sigma_min=2"])  # equal is refused too
    assert "sigma_min" in msg


def test_refuse_micro_batch_not_dividing():
    msg = _refused(["teacher.batch=64", "teacher.micro_batch=3"])
    assert "micro_batch" in msg and "64" in msg and "3" in msg and "multiple" in msg


def test_refuse_max_steps_beyond_grid():
    msg = _refused(["ctm.grid=10", "ctm.max_steps=10"])
    assert "max_steps" in msg and "10" in msg


def test_refuse_bad_gmm():
    msg = _refused(["data.gmm.weights=[1, 1]"])
    assert "weights" in msg and "means" in msg
    msg = _refused(["data.gmm.std=0"])
    assert "data.gmm.std" in msg


@pytest.mark.parametrize("item", ["teacher.batch", "teacher.batch 64", ""])
def test_refuse_malformed_override(item):
    with pytest.raises(UserError, match="no '='") as info:
        parse_override(item)
    assert repr(item) in str(info.value)


@pytest.mark.parametrize("item", ["=64", " =64", "teacher..batch=64", ".batch=1", "teacher.=1"])
def test_refuse_empty_key(item):
    with pytest.raises(UserError, match="empty key"):
        parse_override(item)


def test_refuse_override_into_a_value():
    with pytest.raises(UserError, match="teacher.batch"):
        load_preset("toy", ["teacher.batch.x=1"])


def test_refuse_unknown_preset():
    with pytest.raises(UserError) as info:
        load_preset("no-such-preset")
    msg = str(info.value)
    assert "no-such-preset" in msg and "toy" in msg and "cifar10" in msg


def test_refuse_missing_or_broken_file(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_preset(str(tmp_path / "missing.toml"))
    bad = tmp_path / "bad.toml"
    bad.write_text("[teacher\nbatch = 1\n")
    with pytest.raises(UserError, match="not valid TOML"):
        load_preset(str(bad))


# --------------------------------------------------------------------------------------------------
# Property: any value written as TOML by an override comes back equal


def _toml_str(s: str) -> str:
    """A TOML basic string, escaping quote, backslash and every control character."""
    out = []
    for ch in s:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return _toml_str(v)
    return "[" + ", ".join(_toml_value(x) for x in v) + "]"


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    if isinstance(a, list):
        return (isinstance(b, list) and len(a) == len(b)
                and all(_same(x, y) for x, y in zip(a, b, strict=True)))
    return type(a) is type(b) and a == b


scalars = (st.booleans() | st.integers(min_value=-(2**63), max_value=2**63 - 1)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=30))
values = scalars | st.lists(st.integers(-1000, 1000), max_size=5) | st.lists(st.floats(allow_nan=False),
                                                                             max_size=5)
keys = st.lists(st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=6), min_size=1,
                max_size=4)


@settings(max_examples=300, deadline=None)
@given(path=keys, value=values)
def test_override_value_round_trip(path, value):
    item = ".".join(path) + "=" + _toml_value(value)
    got_path, got = parse_override(item)
    assert got_path == path
    assert _same(value, got)
    raw = apply_overrides({}, [item])
    node = raw
    for part in path[:-1]:
        node = node[part]
    assert _same(value, node[path[-1]])


@settings(max_examples=100, deadline=None)
@given(batch=st.integers(1, 10**6), lr=st.floats(1e-8, 1.0), gamma=st.floats(0.0, 1.0), flip=st.booleans(),
       mult=st.lists(st.integers(1, 8), min_size=1, max_size=4))
def test_preset_override_property(batch, lr, gamma, flip, mult):
    """Valid settings written as overrides land in the validated preset unchanged, and survive TOML
    rendering."""
    items = [f"teacher.batch={batch}", f"distill.lr={lr!r}", f"sample.gamma={gamma!r}",
             f"data.xflip={'true' if flip else 'false'}", f"net.unet.channel_mult={mult}"]
    p = override_preset(TOY, items)
    assert (p.teacher.batch, p.distill.lr, p.sample.gamma, p.data.xflip, p.net.unet.channel_mult) == \
        (batch, lr, gamma, flip, mult)
    assert preset_from_dict(tomllib.loads(preset_to_toml(p))) == p


def test_cifar10_presets_hold_the_papers_recipe():
    """ctm-cifar10's commands and defaults (script_util.py, commands/*GAN*): phase 1 and phase 2."""
    p1, p2 = load_preset("cifar10"), load_preset("cifar10-gan")
    for p in (p1, p2):
        c, g = p.ctm, p.gan
        assert (c.grid, c.max_steps, c.distance, c.dsm_sampler, c.dropout, c.student_precond) == \
            (18, 17, "lpips_piq", "halflognormal", "official", "edm")
        assert (p.distill.optimizer, p.distill.lr, tuple(p.distill.betas)) == ("radam", 4e-4, (0.9, 0.999))
        assert (g.discriminator, g.lr, tuple(g.betas), g.cutout,
                g.g_period) == ("projected", 2e-3, (0.5, 0.9), 0.2, 2)
        assert g.augment == ["color", "translation", "cutout"] and g.weight == "adaptive"
    assert (p1.distill.batch, p1.ctm.target_ema, p1.gan.enabled) == (256, 0.999, False)
    assert (p2.distill.batch, p2.ctm.target_ema, p2.gan.enabled,
            p2.gan.start_kimg) == (528, 0.9999, True, 0.0)
