"""The training loop: exact resume, checkpoint rotation, non-finite steps, run-directory lock, durations."""

import json
import math
from contextlib import contextmanager

import pytest
import torch

from ctmtool.checkpoint import load_checkpoint
from ctmtool.cli.common import Reporter
from ctmtool.config import load_preset
from ctmtool.data import load_dataset
from ctmtool.errors import UserError
from ctmtool.train.loop import RunLock, fit
from ctmtool.train.teacher_objective import TeacherObjective

TINY = ["net.mlp.hidden=16", "net.mlp.depth=1", "net.mlp.emb=8", "data.n=512"]


def _teacher_preset(**kw):
    over = TINY + ["teacher.batch=32", "teacher.lr_decay=none", "teacher.ckpt_every_kimg=0.064",
                   "teacher.minutes=1e9", "teacher.keep_checkpoints=2", "teacher.log_every_kimg=1"]
    return load_preset("toy", over + [f"teacher.{k}={v}" for k, v in kw.items()])


def _fit(preset, run_dir, resume=None, obj=None):
    data = load_dataset(preset.data)
    obj = obj or TeacherObjective(preset, data.shape, torch.device("cpu"))
    return (obj, fit(obj, data, preset.teacher, run_dir, Reporter(quiet=True), device=torch.device("cpu"),
                     resume=resume))


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
        fit(obj, data, preset.teacher, tmp_path / "bad", Reporter(quiet=True), device=torch.device("cpu"),
            max_bad_steps=3)


def test_run_directory_is_locked_against_a_second_writer(tmp_path):
    with RunLock(tmp_path):
        with pytest.raises(UserError, match="in use by process"):
            with RunLock(tmp_path):
                pass
    with RunLock(tmp_path):  # released
        pass


class _Recorder:
    """A reporter that keeps (time on the loop's clock, line) for every line; not a terminal unless `tty`."""

    def __init__(self, clock, tty=False):
        self.clock, self.tty, self.lines = clock, tty, []

    def log(self, msg):
        self.lines.append((self.clock(), msg))

    warn = log

    @contextmanager
    def progress(self, total, description, unit=""):
        yield lambda n=1, status="": None


def _weights(obj):
    return {**{f"net.{k}": v for k, v in obj.net.state_dict().items()},
            **{f"ema.{k}": v for k, v in obj.ema.state_dict().items()}}


def _same(a, b):
    wa, wb = _weights(a), _weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_a_line_at_least_every_10_seconds_when_not_a_terminal(tmp_path, capsys):
    preset = _teacher_preset(kimg=0.96, log_every_kimg=100)  # 30 steps, no periodic log line before the end
    data = load_dataset(preset.data)
    obj = TeacherObjective(preset, data.shape, torch.device("cpu"))
    clock = lambda: 3.0 * obj.steps  # noqa: E731  (each step takes 3 s)
    rep = _Recorder(clock)
    fit(obj, data, preset.teacher, tmp_path / "a", rep, device=torch.device("cpu"), clock=clock)
    times = [0.0] + [t for t, _ in rep.lines]
    # late by a step at most
    assert len(rep.lines) >= 8 and max(b - a for a, b in zip(times, times[1:], strict=False)) <= 10 + 3
    assert any("s trained" in m for _, m in rep.lines)

    tty = _Recorder(clock, tty=True)  # a terminal has its live bar: no heartbeat lines
    fit(TeacherObjective(preset, data.shape, torch.device("cpu")), data, preset.teacher, tmp_path / "b", tty,
        device=torch.device("cpu"), clock=clock)
    assert not any("s trained" in m for _, m in tty.lines)

    capsys.readouterr()  # the command line's reporter prints them on stderr as plain lines
    obj = TeacherObjective(preset, data.shape, torch.device("cpu"))
    fit(obj, data, preset.teacher, tmp_path / "c", Reporter(), device=torch.device("cpu"),
        clock=lambda: 3.0 * obj.steps)
    err = capsys.readouterr().err
    assert err.count("s trained") >= 7 and "min left" not in err  # no time limit: none shown


def test_checkpoints_by_training_time_leave_the_result_unchanged(tmp_path):
    preset = _teacher_preset(kimg=0.32, ckpt_every_kimg=1000, keep_checkpoints=20, ckpt_every_minutes=1)
    data = load_dataset(preset.data)
    obj = TeacherObjective(preset, data.shape, torch.device("cpu"))
    fit(obj, data, preset.teacher, tmp_path / "a", Reporter(quiet=True), device=torch.device("cpu"),
        clock=lambda: 30.0 * obj.steps)  # 30 s a step: a checkpoint every other step
    steps = [load_checkpoint(p).meta["step"] for p in sorted((tmp_path / "a").glob("ckpt-*.safetensors"))]
    assert steps == [3, 5, 7, 9, 10]  # decided on the time read at the start of a step
    plain, _ = _fit(_teacher_preset(kimg=0.32, ckpt_every_kimg=1000, ckpt_every_minutes=1e9), tmp_path / "b")
    assert len(list((tmp_path / "b").glob("ckpt-*.safetensors"))) == 1 and _same(obj, plain)


def test_time_limit_stops_inside_a_long_step_and_the_run_resumes_exactly(tmp_path):
    full = _teacher_preset(kimg=0.32, micro_batch=8)  # 10 steps of 4 micro-batches
    straight, _ = _fit(full, tmp_path / "a")

    limited = _teacher_preset(kimg=0.32, micro_batch=8, minutes=13.5 / 60)
    data = load_dataset(limited.data)
    draws = [0]
    real_get = data.get

    def counted(*args, **kwargs):
        draws[0] += 1
        return real_get(*args, **kwargs)

    data.get = counted
    clock = lambda: float(draws[0])  # noqa: E731  (each micro-batch takes 1 s)
    rep = _Recorder(clock)
    obj = TeacherObjective(limited, data.shape, torch.device("cpu"))
    res = fit(obj, data, limited.teacher, tmp_path / "b", rep, device=torch.device("cpu"), clock=clock)
    assert res.stopped_by == "minutes" and res.steps == 3  # the 4th step was abandoned after 2 micro-batches
    assert 13.5 <= res.total_seconds <= 13.5 + 1  # over the budget by less than one micro-batch
    assert any("(micro-batch 3 of 4)" in m for _, m in rep.lines)  # the heartbeat also runs inside a step
    ckpt = load_checkpoint(res.checkpoint)
    assert ckpt.meta["step"] == 3 and ckpt.meta["train_seconds"] == 14.0
    resumed, res2 = _fit(full, tmp_path / "b", resume=ckpt)  # the abandoned step's random draws were undone
    assert res2.steps == 10 and _same(straight, resumed)


def test_time_limited_run_stopped_by_a_signal_resumes_its_schedule_exactly(tmp_path):
    import os
    import signal

    # 30 steps of 1 s
    preset = _teacher_preset(kimg=1000, minutes=0.5, lr_decay="cosine", lr_rampup_kimg=0.05)
    data = load_dataset(preset.data)
    straight = TeacherObjective(preset, data.shape, torch.device("cpu"))
    res_a = fit(straight, data, preset.teacher, tmp_path / "a", Reporter(quiet=True),
                device=torch.device("cpu"), clock=lambda: float(straight.steps))
    assert res_a.stopped_by == "minutes" and res_a.steps == 30

    first = TeacherObjective(preset, data.shape, torch.device("cpu"))
    real_step = first.step

    def interrupted(batches, kimg):
        out = real_step(batches, kimg)
        if first.steps == 12:
            os.kill(os.getpid(), signal.SIGINT)
        return out

    first.step = interrupted
    res_b = fit(first, data, preset.teacher, tmp_path / "b", Reporter(quiet=True), device=torch.device("cpu"),
                clock=lambda: float(first.steps))
    assert res_b.stopped_by == "signal SIGINT" and res_b.signum == signal.SIGINT and res_b.steps == 12
    ckpt = load_checkpoint(res_b.checkpoint)
    assert ckpt.meta["train_seconds"] == 12.0 and ckpt.meta["progress"] == pytest.approx(11 / 30)
    lr_at_stop = ckpt.meta["optim_net"]
    second = TeacherObjective(preset, data.shape, torch.device("cpu"))
    res_c = fit(second, data, preset.teacher, tmp_path / "b", Reporter(quiet=True),
                device=torch.device("cpu"), resume=ckpt, clock=lambda: float(second.steps))
    assert res_c.stopped_by == "minutes" and res_c.steps == 30 and res_c.total_seconds == 30.0
    assert _same(straight, second)  # same learning rates step by step: the cosine schedule did not restart
    # the learning rate of step 12 (its progress 11/30 read at the step's start) is the cosine schedule's
    lr_at_stop = json.loads(lr_at_stop)["param_groups"][0]["lr"]
    assert lr_at_stop == pytest.approx(preset.teacher.lr * 0.5 * (1 + math.cos(math.pi * 11 / 30)), rel=1e-12)
    assert _lr(second) == _lr(straight) == pytest.approx(preset.teacher.lr * 0.5
                                                         * (1 + math.cos(math.pi * 29 / 30)))


def _lr(obj):
    return obj.optimizers["net"].param_groups[0]["lr"]


def test_train_stopped_by_a_signal_saves_and_raises_interrupted(tmp_path, monkeypatch):
    import os
    import signal

    from ctmtool.errors import Interrupted
    from ctmtool.train.run import train

    real_step = TeacherObjective.step

    def step(self, batches, kimg):
        out = real_step(self, batches, kimg)
        if self.steps == 4:
            os.kill(os.getpid(), signal.SIGINT)
        return out

    monkeypatch.setattr(TeacherObjective, "step", step)
    with pytest.raises(Interrupted) as err:
        train(_teacher_preset(kimg=0.32, ckpt_every_kimg=1000), "teacher", tmp_path, torch.device("cpu"),
              Reporter(quiet=True))
    assert err.value.exit_code == 130 and "\n" not in str(err.value) and "SIGINT" in str(err.value)
    assert "`resume`" in str(err.value)
    assert load_checkpoint(sorted(tmp_path.glob("ckpt-*.safetensors"))[-1]).meta["step"] == 4
    assert not (tmp_path / ".lock").exists()


def test_non_finite_training_data_is_named(tmp_path):
    from ctmtool.data.base import Dataset

    values = torch.randn(64, 2)
    values[7, 1] = float("nan")
    values[9, 0] = float("inf")
    data = Dataset(values, name="points.npz", items=[f"row {i}" for i in range(64)])
    preset = _teacher_preset(kimg=0.32)
    obj = TeacherObjective(preset, data.shape, torch.device("cpu"))
    with pytest.raises(UserError) as err:
        fit(obj, data, preset.teacher, tmp_path, Reporter(quiet=True), device=torch.device("cpu"))
    msg = str(err.value)
    assert "\n" not in msg and "the training data is at fault" in msg and "points.npz" in msg
    assert "2 of 64 items" in msg and "row 7" in msg
    assert not list(tmp_path.glob("ckpt-*"))


def test_leftovers_of_a_killed_writer_are_removed_and_damaged_progress_refused(tmp_path):
    tmp = tmp_path / ".ckpt-00000004.safetensors.abc123.tmp"
    tmp_path.mkdir(exist_ok=True)
    tmp.write_bytes(b"half a checkpoint")
    _, res = _fit(_teacher_preset(kimg=0.064), tmp_path)
    assert not tmp.exists() and res.steps == 2
    ckpt = load_checkpoint(res.checkpoint)
    del ckpt.meta["step"]
    with pytest.raises(UserError, match="damaged training position"):
        _fit(_teacher_preset(kimg=0.128), tmp_path / "again", resume=ckpt)
