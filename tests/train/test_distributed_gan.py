"""The GAN phase on 2 gloo ranks equals one process with the same global batch
(`ctmtool.train.distributed_gan`)."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
from torch import nn

import ctmtool.losses.ctm as ctm_losses
from ctmtool.cli.common import Reporter
from ctmtool.config import load_preset
from ctmtool.core import distributed as ddp
from ctmtool.core.models import build_precond
from ctmtool.data import load_dataset
from ctmtool.nets.projected_gan import SingleDisc
from ctmtool.train.distributed_gan import GlobalBatchNorm, d_hinge_share, g_hinge_share, global_batch_norm
from ctmtool.train.loop import fit
from ctmtool.train.trajectory import ctm_objective

# 8x8 digits, a tiny U-Net; 4 steps of 2 micro-batches of 4: G, D, G, D (the paper's g_period 2), adaptive
# weights,
# the paper's DiffAugment (colour, translation, cutout 0.2)
GAN = ["net.kind=unet", "net.unet.model_channels=8", "net.unet.channel_mult=[1]", "net.unet.num_blocks=1",
       "net.unet.attn_resolutions=[]", "distill.batch=8", "distill.micro_batch=4", "distill.kimg=0.032",
       "ctm.grid=4", "ctm.max_steps=3", "ctm.eval_emas=[0.9]", "distill.ckpt_every_kimg=1000",
       "distill.log_every_kimg=1000", "gan.enabled=true", "gan.g_period=2", "gan.cutout=0.2"]

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()), reason="needs gloo")


class BatchNormDisc(nn.Module):
    """Two Projected-GAN heads on the raw 8x8 images: `SingleDisc` (spectral norm, batch norm, LeakyReLU) at
    8x8 and at 4x4 (average-pooled): the batch-coupled layer and the per-forward power iteration of the
    paper's heads."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(5)
        self.heads = nn.ModuleList([SingleDisc(1, 8, 4), SingleDisc(1, 4, 4)])

    def forward(self, x):
        return [self.heads[0](x).flatten(1), self.heads[1](nn.functional.avg_pool2d(x, 2)).flatten(1)]


def _train(run_dir):
    """The GAN-phase run in this process (distributed if a group is up): objective, result, the k of every CTM
    call."""
    preset = load_preset("digits", GAN)
    data = load_dataset(preset.data)
    torch.manual_seed(0)
    teacher = build_precond("teacher", preset, data.shape).eval().requires_grad_(False)
    obj = ctm_objective(preset, data.shape, torch.device("cpu"), teacher, teacher.state_dict(),
                        discriminator=BatchNormDisc())
    ks, draw = [], ctm_losses.sample_ctm_indices

    def recording(*args, **kwargs):
        out = draw(*args, **kwargs)
        ks.append(out[3])
        return out

    ctm_losses.sample_ctm_indices = recording
    try:
        res = fit(obj, data, preset.distill, run_dir, Reporter(quiet=True), device=torch.device("cpu"))
    finally:
        ctm_losses.sample_ctm_indices = draw
    return obj, res, ks


def _state(obj) -> dict:
    """Every trained tensor: network, target, EMA, discriminator (with its batch-norm and power-iteration
    buffers)."""
    return {f"{name}.{k}": v for name, m in (("net", obj.net), ("target", obj.target), ("ema", obj.emas[0.9]),
                                             ("disc", obj.disc)) for k, v in m.state_dict().items()}


def _worker(r: int, world: int, port: int, out: str):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(r),
                      LOCAL_RANK=str(r), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    ddp.setup(torch.device("cpu"))
    obj, res, ks = _train(os.path.join(out, "run"))
    torch.save({"state": _state(obj), "steps": (obj.steps, obj.d_steps), "ks": ks, "last": res.last,
                "bn": sum(isinstance(m, GlobalBatchNorm) for m in obj.disc.modules())},
               os.path.join(out, f"rank{r}.pt"))
    ddp.teardown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_gan_phase_on_two_gloo_ranks_equals_one_process(tmp_path):
    torch.multiprocessing.spawn(_worker, args=(2, _free_port(), str(tmp_path / "ddp")), nprocs=2, join=True)
    got = [torch.load(tmp_path / "ddp" / f"rank{r}.pt") for r in range(2)]
    obj, res, ks = _train(tmp_path / "one")
    assert (obj.steps, obj.d_steps) == got[0]["steps"] == got[1]["steps"] == (2, 2)  # G, D, G, D
    # k: one draw per optimiser step, shared by its two micro-batches (G: the CTM loss; D: the estimate),
    # every rank
    assert len(ks) == 8 and all(ks[i] == ks[i + 1] for i in range(0, 8, 2)) and len(set(ks)) > 1
    assert got[0]["ks"] == got[1]["ks"] == ks
    one = _state(obj)
    assert set(one) == set(got[0]["state"]) and any(k.endswith("running_var") for k in one)
    for r in range(2):
        for name, p in one.items():
            q = got[r]["state"][name]
            if p.is_floating_point():
                torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6, msg=f"rank {r}: {name}")
            else:
                assert torch.equal(q, p), name
    for key in ("gan", "disc", "ctm", "dsm"):  # logged global means
        assert got[0]["last"][key] == pytest.approx(res.last[key], rel=1e-5, abs=1e-7), key
    assert got[0]["bn"] == 1 and not any(isinstance(m, GlobalBatchNorm) for m in obj.disc.modules())


def _bn_case():
    """A 5-row batch (rows 0-1 on rank 0, 2-4 on rank 1), output weights and a batch norm with random
    affine."""
    g = torch.Generator().manual_seed(9)
    x, w = torch.randn(5, 3, 4, 4, generator=g), torch.randn(5, 3, 4, 4, generator=g)
    bn = nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.weight.copy_(torch.rand(3, generator=g) + 0.5)
        bn.bias.copy_(torch.randn(3, generator=g))
    return x, w, bn


def _bn_worker(r: int, world: int, port: int, out: str):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(r),
                      LOCAL_RANK=str(r), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    ddp.setup(torch.device("cpu"))
    x, w, bn = _bn_case()
    bn = global_batch_norm(nn.Sequential(bn))[0]
    lo, hi = ddp.rows(5)
    xr = x[lo:hi].clone().requires_grad_()
    for _ in range(2):  # two calls: running statistics after two updates
        y = bn(xr)
    (y * w[lo:hi]).sum().backward()
    torch.save({"y": y.detach(), "dx": xr.grad, "dw": bn.weight.grad, "db": bn.bias.grad,
                "buffers": {k: v.clone() for k, v in bn.named_buffers()}}, os.path.join(out, f"bn{r}.pt"))
    ddp.teardown()


def test_global_batch_norm_on_uneven_ranks_equals_batch_norm_of_the_whole_batch(tmp_path):
    """Outputs, input gradients, summed parameter gradients and running statistics of 2 + 3 rows on 2 gloo
    ranks."""
    torch.multiprocessing.spawn(_bn_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    got = [torch.load(tmp_path / f"bn{r}.pt") for r in range(2)]
    x, w, bn = _bn_case()
    x.requires_grad_()
    for _ in range(2):
        y = bn(x)
    (y * w).sum().backward()
    torch.testing.assert_close(torch.cat([g["y"] for g in got]), y.detach())
    torch.testing.assert_close(torch.cat([g["dx"] for g in got]), x.grad)
    torch.testing.assert_close(got[0]["dw"] + got[1]["dw"], bn.weight.grad)
    torch.testing.assert_close(got[0]["db"] + got[1]["db"], bn.bias.grad)
    for g in got:
        for k, v in bn.named_buffers():
            torch.testing.assert_close(g["buffers"][k], v, msg=k)


def test_hinge_shares_sum_to_the_losses():
    from ctmtool.losses.gan import d_hinge_loss, g_hinge_loss

    g = torch.Generator().manual_seed(0)
    real = [torch.randn(7, 5, generator=g), torch.randn(7, 1, 3, 3, generator=g)]
    fake = [torch.randn(7, 5, generator=g), torch.randn(7, 1, 3, 3, generator=g)]
    parts = [ddp.rows(7, r, 3) for r in range(3)]
    g_sum = sum(g_hinge_share([f[lo:hi] for f in fake], 7) for lo, hi in parts)
    d_sum = sum(d_hinge_share([x[lo:hi] for x in real], [f[lo:hi] for f in fake], 7) for lo, hi in parts)
    torch.testing.assert_close(g_sum, g_hinge_loss(fake))
    torch.testing.assert_close(d_sum, d_hinge_loss(real, fake))


def test_global_batch_norm_keeps_tensors_and_is_plain_batch_norm_in_one_process():
    torch.manual_seed(0)
    disc = BatchNormDisc()
    ref = BatchNormDisc()
    ref.load_state_dict(disc.state_dict())
    before = {k: v for k, v in disc.named_parameters()}
    global_batch_norm(disc)
    assert sum(isinstance(m, GlobalBatchNorm) for m in disc.modules()) == 1
    # an optimiser built before still sees them
    assert all(p is before[k] for k, p in disc.named_parameters())
    x = torch.randn(6, 1, 8, 8)
    for a, b in zip(disc(x), ref(x), strict=True):
        torch.testing.assert_close(a, b)
    assert set(disc.state_dict()) == set(ref.state_dict())
    torch.testing.assert_close(disc.state_dict(), ref.state_dict())
