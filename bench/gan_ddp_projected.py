"""The GAN phase with the paper's Projected-GAN discriminator on 2 gloo ranks against one process (CPU, by
hand).

The CI test (tests/train/test_distributed_gan.py) uses two `SingleDisc` heads on raw pixels; this runs the
whole `ProjectedDiscriminator` (random timm weights: EfficientNet-lite0 and, for CPU time, DeiT-tiny in place
of DeiT-base, the same code path; 224-pixel features; eight heads with batch norm) in
`TrajectoryObjective.step` for G, D, G, D steps of 2 micro-batches, and prints the largest difference per
network and the step times.

    python bench/gan_ddp_projected.py [--steps 4] [--micro 4] [--double] [--mlp] [--plain-bn]
"""

from __future__ import annotations

import argparse
import os
import socket
import tempfile
import time
from pathlib import Path

import torch

SHAPE = (3, 16, 16)
PRESET = ["net.kind=unet", "net.unet.model_channels=8", "net.unet.channel_mult=[1]", "net.unet.num_blocks=1",
          "net.unet.attn_resolutions=[]", "ctm.grid=4", "ctm.max_steps=3", "ctm.eval_emas=[0.9]",
          "gan.enabled=true", "gan.g_period=2", "gan.cutout=0.2", "gan.betas=[0.5, 0.9]", "gan.lr=2e-3"]


# runs in float64 (the U-Net does not)
MLP = ["net.kind=mlp", "net.mlp.hidden=32", "net.mlp.depth=1", "net.mlp.emb=16"]


def _objective(micro: int, mlp: bool):
    import timm

    from ctmtool.config import load_preset
    from ctmtool.core.models import build_precond
    from ctmtool.nets.projected_gan import ProjectedDiscriminator
    from ctmtool.train.trajectory import ctm_objective

    preset = load_preset("digits", [*PRESET, *(MLP if mlp else []), f"distill.batch={2 * micro}",
                                    f"distill.micro_batch={micro}"])
    torch.manual_seed(0)
    teacher = build_precond("teacher", preset, SHAPE).eval().requires_grad_(False)
    disc = ProjectedDiscriminator({
        "deit_base_distilled_patch16_224": timm.create_model("deit_tiny_distilled_patch16_224",
                                                             pretrained=False),
        "tf_efficientnet_lite0": timm.create_model("tf_efficientnet_lite0", pretrained=False)})
    if torch.get_default_dtype() == torch.float64:  # the objective hands D float32 fakes on D steps
        disc.register_forward_pre_hook(lambda m, args: (args[0].double(), *args[1:]))
    return ctm_objective(preset, SHAPE, torch.device("cpu"), teacher, teacher.state_dict(),
                         discriminator=disc)


def _run(steps: int, micro: int, double: bool = False,
         mlp: bool = False) -> tuple[dict, list[float], tuple[int, int]]:
    if double:  # float64 throughout: what remains of a difference is not float32 round-off
        torch.set_default_dtype(torch.float64)
        # the objective's explicit casts (distance, D-step fakes) too
        torch.Tensor.float = torch.Tensor.double
    obj = _objective(micro, mlp or double)
    init = _state(obj)
    g = torch.Generator().manual_seed(1)
    times = []
    for _ in range(steps):
        batches = [(torch.rand(micro, *SHAPE, generator=g) * 2 - 1, None) for _ in range(2)]
        t0 = time.perf_counter()
        obj.step(batches, 0.0)
        times.append(time.perf_counter() - t0)
    state = _state(obj)
    return {"final": state, "init": init}, times, (obj.steps, obj.d_steps)


def _state(obj) -> dict[str, torch.Tensor]:
    return {f"{name}.{k}": v.clone() for name, m in (("net", obj.net), ("target", obj.target),
                                                     ("ema", obj.emas[0.9]), ("disc", obj.disc))
            for k, v in m.state_dict().items()}


def _worker(r: int, port: int, out: str, steps: int, micro: int, double: bool, mlp: bool, plain_bn: bool):
    from ctmtool.core import distributed as ddp

    if plain_bn:  # what the official DDP does: each rank's batch norm sees only its rows
        import ctmtool.train.trajectory as trajectory

        trajectory.global_batch_norm = lambda module: module

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(r),
                      LOCAL_RANK=str(r))
    torch.set_num_threads(1)
    ddp.setup(torch.device("cpu"))
    state, times, counts = _run(steps, micro, double, mlp)
    if r == 0:
        torch.save({"state": state, "times": times, "counts": counts}, out)
    ddp.teardown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--micro", type=int, default=4, help="rows per micro-batch (2 micro-batches per step)")
    ap.add_argument("--double", action="store_true", help="run both sides in float64 (with the MLP student)")
    ap.add_argument("--mlp", action="store_true", help="a small MLP student instead of the U-Net")
    ap.add_argument("--plain-bn", action="store_true",
                    help="ranks keep per-rank batch norm (the official DDP's), "
                    "to see the size of a real difference")
    args = ap.parse_args()
    torch.set_num_threads(1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = Path(tempfile.mkdtemp()) / "rank0.pt"
    torch.multiprocessing.spawn(_worker, args=(port, str(out), args.steps, args.micro, args.double, args.mlp,
                                                            args.plain_bn), nprocs=2, join=True)
    got = torch.load(out)
    one, times, counts = _run(args.steps, args.micro, args.double, args.mlp)
    print(f"steps (G, D): 2 ranks {got['counts']}, one process {counts}")
    print("seconds per step, 2 ranks:", " ".join(f"{t:.2f}" for t in got["times"]),
          "| one process:", " ".join(f"{t:.2f}" for t in times), f"| load average {os.getloadavg()[0]:.1f}")
    worst: dict[str, tuple[float, float, str]] = {}
    norms: dict[str, list[float]] = {}
    for name, p in one["final"].items():
        q, p0 = got["state"]["final"][name], one["init"][name]
        if not p.is_floating_point():
            assert torch.equal(p, q), name
            continue
        a = float((q - p).abs().max())
        rel = a / max(float(p.abs().max()), 1e-30)
        group = name.split(".")[0]
        if rel >= worst.get(group, (0.0, -1.0, ""))[1]:
            worst[group] = (a, rel, name)
        n = norms.setdefault(group, [0.0, 0.0, 0.0])
        n[0] += float((q.double() - p.double()).square().sum())
        n[1] += float(p.double().square().sum())
        n[2] += float((p.double() - p0.double()).square().sum())
    for group, (a, rel, name) in worst.items():
        d, w, u = (v ** 0.5 for v in norms[group])
        print(f"{group:7s} ||diff|| / ||weights|| {d / max(w, 1e-300):.3g}, / ||update|| "
              f"{d / max(u, 1e-300):.3g}; worst tensor: max |diff| {a:.3g}, {rel:.3g} of its largest value "
              f"({name})")


if __name__ == "__main__":
    main()
