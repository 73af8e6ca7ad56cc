"""The training loop: exact resume, checkpoint rotation, non-finite steps, run-directory lock, durations."""

import pytest
import torch

from ctmtool.checkpoint import load_checkpoint
from ctmtool.cli.common import Reporter
from ctmtool.config import load_preset
from ctmtool.data import load_dataset
from ctmtool.errors import UserError
from ctmtool.train.loop import RunLock, fit
from ctmtool.train.objectives import TeacherObjective

TINY = ["net.mlp.hidden=16", "net.mlp.depth=1", "net.mlp.emb=8", "data.n=512"]


def _teacher_preset(**kw):
    over = TINY + ["teacher.batch=32", "teacher.lr_decay=none", "teacher.ckpt_every_kimg=0.064",
                   "teacher.keep_checkpoints=2", "teacher.log_every_kimg=1"]
    return load_preset("toy", over + [f"teacher.{k}={v}" for k, v in kw.items()])


def _fit(preset, run_dir, resume=None, obj=None):
    data = load_dataset(preset.data)
    obj = obj or TeacherObjective(preset, data.shape, torch.device("cpu"))
    return obj, fit(obj, data, preset.teacher, run_dir, Reporter(quiet=True), device=torch.device("cpu"), resume=resume)


def test_resumed_run_ends_with_identical_weights(tmp_path):
    full = _teacher_preset(kimg=0.32)
    obj_a, res_a = _fit(full, tmp_path / "a")
    half = _teacher_preset(kimg=0.16)
    _fit(half, tmp_path / "b")
    ckpt = load_checkpoint(sorted((tmp_path / "b").glob("ckpt-*.safetensors"))[-1])
    assert ckpt.meta["step"] == 5
    obj_b, res_b = _fit(full, tmp_path / "b", resume=ckpt)
    assert res_a.steps == res_b.steps == 10
    for (name, p), q in zip(obj_a.net.state_dict().items(), obj_b.net.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    for p, q in zip(obj_a.ema.state_dict().values(), obj_b.ema.state_dict().values(), strict=True):
        assert torch.equal(p, q)


def test_checkpoint_rotation_keeps_the_newest(tmp_path):
    _fit(_teacher_preset(kimg=0.32), tmp_path)
    files = sorted(p.name for p in tmp_path.glob("ckpt-*.safetensors"))
    assert files == ["ckpt-00000008.safetensors", "ckpt-00000010.safetensors"]  # saved every 2 steps, 2 kept


def test_non_finite_losses_are_skipped_then_stop_with_a_clear_error(tmp_path):
    preset = _teacher_preset(kimg=0.32)
    data = load_dataset(preset.data)
    obj = TeacherObjective(preset, data.shape, torch.device("cpu"))
    calls = {"n": 0}
    real_step = obj.step

    def flaky(batches, kimg):
        calls["n"] += 1
        if calls["n"] in (2, 3):
            return {"finite": False}
        return real_step(batches, kimg)

    obj.step = flaky
    res = fit(obj, data, preset.teacher, tmp_path / "ok", Reporter(quiet=True), device=torch.device("cpu"))
    assert res.skipped_steps == 2 and res.steps == 10

    obj.step = lambda batches, kimg: {"finite": False}
    with pytest.raises(UserError, match="non-finite losses in a row"):
        fit(obj, data, preset.teacher, tmp_path / "bad", Reporter(quiet=True), device=torch.device("cpu"), max_bad_steps=3)


def test_run_directory_is_locked_against_a_second_writer(tmp_path):
    with RunLock(tmp_path):
        with pytest.raises(UserError, match="in use by process"):
            with RunLock(tmp_path):
                pass
    with RunLock(tmp_path):  # released
        pass
