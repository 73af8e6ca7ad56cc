"""The GAN phase of CTM distillation: discriminator and generator alternate, and phase 2 resumes a CTM+DSM
run."""

import torch

from ctmtool.checkpoint import load_checkpoint
from ctmtool.cli.common import Reporter
from ctmtool.config import load_preset
from ctmtool.core.models import build_precond
from ctmtool.data import load_dataset
from ctmtool.nets.discriminator import Discriminator
from ctmtool.train.loop import fit
from ctmtool.train.trajectory import ctm_objective

TINY_UNET = ["net.kind=unet", "net.unet.model_channels=8", "net.unet.channel_mult=[1]",
             "net.unet.num_blocks=1", "net.unet.attn_resolutions=[]", "distill.batch=8", "ctm.grid=4",
             "ctm.max_steps=2", "ctm.eval_emas=[0.9]", "distill.ckpt_every_kimg=1000",
             "distill.log_every_kimg=1000"]


def _objective(preset, data, teacher):
    disc = Discriminator(1, 8, channels=8) if preset.gan.enabled else None
    return ctm_objective(preset, data.shape, torch.device("cpu"), teacher, teacher.state_dict(),
                         discriminator=disc)


def test_gan_phase_updates_both_networks_and_resumes_from_a_ctm_run(tmp_path):
    phase1 = load_preset("digits", TINY_UNET + ["distill.kimg=0.016"])
    data = load_dataset(phase1.data)
    teacher = build_precond("teacher", phase1, data.shape).eval().requires_grad_(False)
    obj1 = _objective(phase1, data, teacher)
    res1 = fit(obj1, data, phase1.distill, tmp_path, Reporter(quiet=True), device=torch.device("cpu"))
    assert "disc" not in load_checkpoint(res1.checkpoint).groups

    phase2 = load_preset("digits", TINY_UNET + ["distill.kimg=0.032", "gan.enabled=true"])
    obj2 = _objective(phase2, data, teacher)
    d_before = [p.clone() for p in obj2.disc.parameters()]
    res2 = fit(obj2, data, phase2.distill, tmp_path, Reporter(quiet=True), device=torch.device("cpu"),
               resume=load_checkpoint(res1.checkpoint))
    assert res2.steps == 4 and {"gan", "disc"} <= set(res2.last)
    assert any(not torch.equal(a, b) for a, b in zip(d_before, obj2.disc.parameters(), strict=True))
    ckpt = load_checkpoint(res2.checkpoint)
    assert "disc" in ckpt.groups and "optim_disc" in ckpt.groups


def test_gan_term_on_vector_data_trains_a_vector_discriminator(tmp_path):
    from ctmtool.train.run import train

    preset = load_preset("toy", ["data.n=256", "net.mlp.hidden=16", "net.mlp.depth=1", "distill.batch=32",
                                 "distill.kimg=0.128", "ctm.grid=6", "ctm.max_steps=3", "ctm.eval_emas=[0.9]",
                                 "distill.ckpt_every_kimg=1000", "distill.log_every_kimg=1000",
                                 "gan.enabled=true"])
    res = train(preset, "distill", tmp_path / "run", torch.device("cpu"), Reporter(quiet=True))
    assert res.steps == 4 and {"gan", "disc"} <= set(res.last)
    ckpt = load_checkpoint(res.checkpoint)
    assert "disc" in ckpt.groups and any(k.startswith("net.") for k in ckpt.groups["disc"])


def test_alternating_gan_steps_update_ema_and_target_on_generator_steps_only(tmp_path):
    """g_period 2 (the paper's g_learning_period): G steps move net, target and EMAs; D steps move only D."""
    p = load_preset("digits", TINY_UNET + ["gan.enabled=true", "gan.g_period=2", "gan.betas=[0.5, 0.9]",
                                           "gan.cutout=0.2"])
    data = load_dataset(p.data)
    teacher = build_precond("teacher", p, data.shape).eval().requires_grad_(False)
    obj = _objective(p, data, teacher)
    assert obj.optimizers["disc"].param_groups[0]["betas"] == (0.5, 0.9)
    g = torch.Generator().manual_seed(0)

    def batch():
        idx = torch.randint(0, len(data), (8,), generator=g)
        return [data.get(idx)]

    def snap():
        return [torch.cat([p.detach().flatten() for p in m.parameters()]).clone()
                for m in (obj.net, obj.target, next(iter(obj.emas.values())), obj.disc)]

    for k in range(4):
        before = snap()
        logs = obj.step(batch(), kimg=0.0)
        after = snap()
        moved = [not torch.equal(a, b) for a, b in zip(before, after, strict=True)]
        if k % 2 == 0:
            assert moved == [True, True, True, False] and "ctm" in logs, k
        else:
            assert moved == [False, False, False, True] and set(logs) == {"disc"}, k
    assert (obj.steps, obj.d_steps) == (2, 2)
    ckpt = obj.checkpoint({})
    assert ckpt.meta["d_steps"] == 2
