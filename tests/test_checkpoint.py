"""Checkpoints: round trip, atomic writes, and one clear UserError for every kind of bad file."""

from __future__ import annotations

import json
import re

import pytest
import torch
from safetensors.torch import save_file

import ctmtool.checkpoint as ckpt_mod
from ctmtool.checkpoint import (
    Checkpoint,
    atomic_write,
    load_checkpoint,
    load_state,
    read_header,
    save_checkpoint,
)
from ctmtool.errors import UserError


def _groups():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(4, 3, generator=g)
    return {
        "net": {"layer.weight": w, "layer.bias": torch.randn(4, generator=g), "step": torch.tensor(7)},
        "ema": {"layer.weight": w.clone() * 0.5, "layer.bias": torch.zeros(4), "step": torch.tensor(7)},
        "optim": {"m": torch.randn(2, 2, dtype=torch.float64, generator=g),
                  "mask": torch.tensor([True, False])},
    }


def _ckpt(toy_preset, **kw) -> Checkpoint:
    return Checkpoint(kind=kw.get("kind", "ctm"), preset=toy_preset, data_shape=(2,), groups=_groups(),
                      meta={"kimg": 12.5, "ema_rates": [0.999], "nested": {"a": "b"}})


def _tmp_leftovers(folder):
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_round_trip(tmp_path, toy_preset):
    path = tmp_path / "run" / "a.safetensors"  # parent folders are created
    c = _ckpt(toy_preset)
    assert save_checkpoint(path, c) == path
    back = load_checkpoint(path)
    assert back.kind == "ctm" and back.data_shape == (2,) and back.path == path
    assert back.preset == toy_preset
    assert back.meta == {"kimg": 12.5, "ema_rates": [0.999], "nested": {"a": "b"}}
    assert set(back.groups) == {"net", "ema", "optim"}
    for g, state in c.groups.items():
        assert set(back.groups[g]) == set(state)
        for k, t in state.items():
            assert back.groups[g][k].dtype == t.dtype and torch.equal(back.groups[g][k], t)
    assert _tmp_leftovers(path.parent) == []


def test_round_trip_subset_of_groups_and_shared_memory(tmp_path, toy_preset):
    c = _ckpt(toy_preset)
    c.groups["target"] = {"layer.weight": c.groups["net"]["layer.weight"]}  # shares storage with net
    path = save_checkpoint(tmp_path / "b.safetensors", c)
    back = load_checkpoint(path, groups=["ema"])
    assert set(back.groups) == {"ema"}
    full = load_checkpoint(path)
    assert torch.equal(full.groups["target"]["layer.weight"], c.groups["net"]["layer.weight"])


def test_header_fields(tmp_path, toy_preset):
    path = save_checkpoint(tmp_path / "c.safetensors", _ckpt(toy_preset, kind="teacher"))
    h = read_header(path)
    assert h["format"] == "ctmtool" and h["kind"] == "teacher"
    assert json.loads(h["data_shape"]) == [2]
    assert json.loads(h["preset"])["data"]["gmm"]["std"] == 0.05


def test_refuses_bad_kind_and_group_names(tmp_path, toy_preset):
    with pytest.raises(ValueError):
        save_checkpoint(tmp_path / "x.safetensors", _ckpt(toy_preset, kind="student"))
    c = _ckpt(toy_preset)
    c.groups["a/b"] = {"w": torch.zeros(1)}
    with pytest.raises(ValueError):
        save_checkpoint(tmp_path / "x.safetensors", c)


# --------------------------------------------------------------------------------------------------
# Atomic writes


def test_atomic_write_failure_keeps_old_file(tmp_path):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old contents")

    def writer(tmp):
        with open(tmp, "wb") as f:
            f.write(b"half of the new")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        atomic_write(path, writer)
    assert path.read_bytes() == b"old contents"
    assert _tmp_leftovers(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_atomic_write_interrupt_keeps_old_file(tmp_path):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")

    def writer(tmp):
        open(tmp, "wb").write(b"x")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, writer)
    assert path.read_bytes() == b"old" and _tmp_leftovers(tmp_path) == []


def test_atomic_write_success_replaces(tmp_path):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")
    atomic_write(path, lambda tmp: open(tmp, "wb").write(b"new"))
    assert path.read_bytes() == b"new" and _tmp_leftovers(tmp_path) == []


def test_save_checkpoint_failure_keeps_old_checkpoint(tmp_path, toy_preset, monkeypatch):
    path = save_checkpoint(tmp_path / "d.safetensors", _ckpt(toy_preset))
    before = path.read_bytes()

    def failing_save_file(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"\x00" * 100)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt_mod, "save_file", failing_save_file)
    c = _ckpt(toy_preset)
    c.meta = {"kimg": 99}
    with pytest.raises(UserError) as info:
        save_checkpoint(path, c)
    assert "No space left" in str(info.value) and str(path) in str(info.value)
    assert path.read_bytes() == before
    assert _tmp_leftovers(tmp_path) == []
    assert load_checkpoint(path).meta["kimg"] == 12.5


# --------------------------------------------------------------------------------------------------
# Refusals: one UserError each


def _one_line_user_error(fn, *words, path=None):
    """The UserError's message: one line, naming `path`, and holding `words` outside of any file path
    (pytest's tmp_path contains the test's name)."""
    with pytest.raises(UserError) as info:
        fn()
    msg = str(info.value)
    assert "\n" not in msg
    if path is not None:
        assert str(path) in msg, msg
    bare = re.sub(r"/\S+", "PATH", msg)
    for w in words:
        assert w in bare, msg
    return bare


def test_refuses_missing_file(tmp_path):
    _one_line_user_error(lambda: load_checkpoint(tmp_path / "nope.safetensors"), "does not exist")


def test_refuses_non_safetensors(tmp_path):
    p = tmp_path / "model.pkl"
    p.write_bytes(b"\x80\x04\x95 this is a pickle, not safetensors" * 10)
    _one_line_user_error(lambda: load_checkpoint(p), "not a ctmtool checkpoint", path=p)
    q = tmp_path / "empty.safetensors"
    q.write_bytes(b"")
    _one_line_user_error(lambda: load_checkpoint(q), path=q)


def test_refuses_truncated(tmp_path, toy_preset):
    c = _ckpt(toy_preset)
    c.groups["big"] = {"w": torch.randn(64, 64)}
    path = save_checkpoint(tmp_path / "e.safetensors", c)
    data = path.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    _one_line_user_error(lambda: load_checkpoint(cut), path=cut)
    # cut inside the JSON header too
    cut.write_bytes(data[:40])
    _one_line_user_error(lambda: load_checkpoint(cut), path=cut)


def test_refuses_foreign_safetensors(tmp_path):
    p = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(p), metadata={"format": "pt"})
    _one_line_user_error(lambda: load_checkpoint(p), "not a ctmtool checkpoint", "teacher import", path=p)
    q = tmp_path / "bare.safetensors"
    save_file({"w": torch.zeros(2)}, str(q))
    _one_line_user_error(lambda: load_checkpoint(q), "not a ctmtool checkpoint")


def test_refuses_other_version_and_damaged_header(tmp_path, toy_preset):
    p = tmp_path / "v9.safetensors"
    save_file({"net/w": torch.zeros(2)}, str(p), metadata={"format": "ctmtool", "format_version": "9"})
    _one_line_user_error(lambda: load_checkpoint(p), "version")
    q = tmp_path / "damaged.safetensors"
    save_file({"net/w": torch.zeros(2)}, str(q), metadata={"format": "ctmtool", "format_version": "1",
                                                           "kind": "ctm", "preset": "{not json"})
    _one_line_user_error(lambda: load_checkpoint(q), "damaged")


def test_refuses_missing_group(tmp_path, toy_preset):
    back = load_checkpoint(save_checkpoint(tmp_path / "f.safetensors", _ckpt(toy_preset)))
    msg = _one_line_user_error(lambda: back.state("ema_0.9999"), "ema_0.9999")
    assert "ema" in msg and "net" in msg  # says what it has
    assert back.state("ema") is back.groups["ema"]


def test_load_state_refuses_mismatch():
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    good = {k: v.clone() for k, v in net.state_dict().items()}
    wrong = dict(good, **{"0.weight": torch.zeros(5, 3)})
    msg = _one_line_user_error(lambda: load_state(net, wrong, source="ckpt.safetensors [ema]"),
                               "ckpt.safetensors [ema]", "0.weight", "(5, 3)", "(4, 3)", "shape")
    assert "preset" in msg
    missing = {k: v for k, v in good.items() if k != "1.bias"}
    _one_line_user_error(lambda: load_state(net, missing), "missing", "1.bias")
    extra = dict(good, **{"map_s.weight": torch.zeros(1)})
    _one_line_user_error(lambda: load_state(net, extra), "unexpected", "map_s.weight")


def test_load_state_loads_and_allows_fresh_layers():
    torch.manual_seed(0)
    src = torch.nn.Sequential(torch.nn.Linear(3, 4))
    dst = torch.nn.ModuleDict({"body": torch.nn.Sequential(torch.nn.Linear(3, 4)),
                               "map_s": torch.nn.Linear(2, 2)})
    state = {f"body.{k}": v for k, v in src.state_dict().items()}
    fresh_before = dst["map_s"].weight.detach().clone()
    fresh = load_state(dst, state, allow_missing=("map_s",))
    assert sorted(fresh) == ["map_s.bias", "map_s.weight"]
    assert torch.equal(dst["body"][0].weight, src[0].weight)
    assert torch.equal(dst["map_s"].weight, fresh_before)


def test_truncated_checkpoint_is_called_truncated(tmp_path, toy_preset):
    path = save_checkpoint(tmp_path / "g.safetensors", _ckpt(toy_preset))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 16])
    _one_line_user_error(lambda: load_checkpoint(path), "truncated", path=path)


def _edited(tmp_path, toy_preset, name, **header):
    """A valid checkpoint whose string header entries are replaced by `header` (as a user editing the file
    would)."""
    good = save_checkpoint(tmp_path / "good.safetensors", _ckpt(toy_preset))
    from safetensors import safe_open

    with safe_open(str(good), framework="pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if header.get("preset", "").startswith("EDIT "):  # one field of the stored preset changed
        section, rest = header["preset"][5:].split(".", 1)
        key, value = rest.split("=")
        raw = json.loads(meta["preset"])
        raw[section][key] = value
        header["preset"] = json.dumps(raw)
    out = tmp_path / f"{name}.safetensors"
    save_file(tensors, str(out), metadata={**meta, **header})
    return out


@pytest.mark.parametrize("name,header,words", [
    ("preset_json", {"preset": '{"name": "toy", '}, ["damaged", "does not parse"]),
    ("preset_invalid", {"preset": "EDIT net.kind=nope"}, ["damaged", "net.kind = 'nope'"]),
    ("preset_not_object", {"preset": "[1, 2]"}, ["damaged", "preset is list"]),
    ("kind", {"kind": "student"}, ["damaged", "'student'"]),
    ("shape_json", {"data_shape": "[2,"}, ["damaged", "does not parse"]),
    ("shape_value", {"data_shape": "[0]"}, ["damaged", "data_shape [0]"]),
    ("shape_type", {"data_shape": '"2"'}, ["damaged", "data_shape"]),
    ("meta", {"meta": "[1]"}, ["damaged", "meta is list"]),
])
def test_edited_header_is_one_line_error(tmp_path, toy_preset, name, header, words):
    _one_line_user_error(lambda: load_checkpoint(_edited(tmp_path, toy_preset, name, **header)), *words)


def test_missing_header_entry_is_one_line_error(tmp_path, toy_preset):
    good = save_checkpoint(tmp_path / "good.safetensors", _ckpt(toy_preset))
    from safetensors import safe_open

    with safe_open(str(good), framework="pt") as f:
        meta = {k: v for k, v in f.metadata().items() if k != "data_shape"}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    save_file(tensors, str(tmp_path / "cut.safetensors"), metadata=meta)
    _one_line_user_error(lambda: load_checkpoint(tmp_path / "cut.safetensors"), "damaged", "'data_shape'")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_tensors_are_refused(tmp_path, toy_preset, bad):
    c = _ckpt(toy_preset)
    c.groups["ema"]["layer.weight"][1, 2] = bad
    path = save_checkpoint(tmp_path / "diverged.safetensors", c)
    _one_line_user_error(lambda: load_checkpoint(path), "NaN or infinite", "earlier checkpoint")
    for groups in (None, ["ema"]):
        with pytest.raises(UserError) as err:
            load_checkpoint(path, groups=groups)
        assert "values in ema/layer.weight; the run" in str(err.value)  # names the tensor, and only that one
    assert set(load_checkpoint(path, groups=["net"]).groups) == {"net"}  # the other groups are fine
    assert (torch.isnan(load_checkpoint(path, check_finite=False).groups["ema"]["layer.weight"]).any()
            == (bad != bad))
