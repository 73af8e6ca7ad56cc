"""Data-parallel training and sampling on 2 gloo ranks equal the single-process run with the same global
batch."""

import os
import socket

import pytest
import torch
import torch.distributed as dist

from ctmtool.cli.common import Reporter
from ctmtool.config import load_preset
from ctmtool.core import distributed as ddp
from ctmtool.core.models import Model, analytic_model
from ctmtool.core.sampling import distributed_generate
from ctmtool.data import load_dataset
from ctmtool.jobs.plan import plan_explicit
from ctmtool.train.loop import fit
from ctmtool.train.teacher_objective import TeacherObjective
from ctmtool.train.trajectory import ctm_objective

TINY = ["net.mlp.hidden=16", "net.mlp.depth=1", "net.mlp.emb=8", "data.n=512"]
TEACHER = TINY + ["teacher.batch=32", "teacher.micro_batch=16", "teacher.kimg=0.096", "teacher.lr_decay=none"]
CTM = TINY + ["distill.batch=16", "distill.micro_batch=8", "distill.kimg=0.048", "ctm.grid=6",
              "ctm.max_steps=3", "ctm.dsm_weight=adaptive"]

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()), reason="needs gloo")


def _train(kind: str, run_dir):
    """Train the tiny teacher or CTM in this process (distributed if a group is up); return the weights."""
    dev = torch.device("cpu")
    if kind == "teacher":
        preset = load_preset("toy", TEACHER)
        data = load_dataset(preset.data)
        obj, cfg = TeacherObjective(preset, data.shape, dev), preset.teacher
    else:
        preset = load_preset("toy", CTM)
        data = load_dataset(preset.data)
        obj, cfg = ctm_objective(preset, data.shape, dev, analytic_model(preset).net), preset.distill
    res = fit(obj, data, cfg, run_dir, Reporter(quiet=True), device=dev)
    return obj, res


def _sample(obj):
    model = Model("teacher", obj.ema, obj.preset, obj.data_shape)
    return distributed_generate(model, 7, plan_explicit(model, solver="heun", steps=4, batch=3), seed=3)


def _worker(r: int, world: int, port: int, out: str):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(r),
                      LOCAL_RANK=str(r), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    ddp.setup(torch.device("cpu"))
    t_obj, t_res = _train("teacher", os.path.join(out, "teacher"))
    c_obj, c_res = _train("ctm", os.path.join(out, "ctm"))
    xs = _sample(t_obj)
    if r == 0:
        torch.save({"teacher": t_obj.net.state_dict(), "ctm": c_obj.net.state_dict(), "samples": xs,
                    "steps": (t_res.steps, c_res.steps), "loss": t_res.last["loss"]},
                   os.path.join(out, "rank0.pt"))
    ddp.teardown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _close(a: dict, b: dict):
    for (name, p), q in zip(a.items(), b.values(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)


def test_two_gloo_ranks_equal_one_process(tmp_path):
    torch.multiprocessing.spawn(_worker, args=(2, _free_port(), str(tmp_path / "ddp")), nprocs=2, join=True)
    got = torch.load(tmp_path / "ddp" / "rank0.pt")
    t_obj, t_res = _train("teacher", tmp_path / "one" / "teacher")
    c_obj, c_res = _train("ctm", tmp_path / "one" / "ctm")
    assert got["steps"] == (t_res.steps, c_res.steps) == (3, 3)
    assert got["loss"] == pytest.approx(t_res.last["loss"], rel=1e-5)
    _close(got["teacher"], t_obj.net.state_dict())
    _close(got["ctm"], c_obj.net.state_dict())
    torch.testing.assert_close(got["samples"], _sample(t_obj), rtol=1e-5, atol=1e-6)
    assert (tmp_path / "ddp" / "teacher" / "ckpt-00000003.safetensors").exists()


def test_rows_cover_the_batch_once():
    for n, w in ((7, 2), (16, 3), (5, 5)):
        parts = [ddp.rows(n, r, w) for r in range(w)]
        assert parts[0][0] == 0 and parts[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(parts, parts[1:], strict=False))
