"""Optimisers, EMA updates, and optimiser state as flat tensors for safetensors checkpoints."""

from __future__ import annotations

import json
import math

import torch
from torch import nn

from ctmtool.config import TrainConfig


def make_optimizer(params, cfg: TrainConfig, device: torch.device, lr: float | None = None) -> torch.optim.Optimizer:
    """Adam or RAdam (the CTM paper's choice), fused/foreach on CUDA."""
    kw = dict(lr=lr or cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.AdamW(params, fused=device.type == "cuda", **kw) if cfg.weight_decay else \
            torch.optim.Adam(params, fused=device.type == "cuda", **kw)
    return torch.optim.RAdam(params, foreach=device.type == "cuda", decoupled_weight_decay=bool(cfg.weight_decay), **kw)


def set_lr(opt: torch.optim.Optimizer, base_lr: float, kimg: float, rampup_kimg: float,
           decay: str = "none", progress: float = 0.0) -> None:
    """Linear warm-up over the first `rampup_kimg` thousand images (EDM), then optional cosine decay
    to 0 as `progress` (the done fraction of the run, by images or by minutes) goes from 0 to 1."""
    lr = base_lr * min(kimg / rampup_kimg, 1.0) if rampup_kimg > 0 else base_lr
    if decay == "cosine":
        lr *= 0.5 * (1 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))
    for g in opt.param_groups:
        g["lr"] = lr


def warmup_rate(rate: float, step: int) -> float:
    """EMA rate with warm-up, min(rate, (1 + step) / (10 + step)): early averages follow the weights instead
    of remembering the initialisation (the convention of TensorFlow's ExponentialMovingAverage)."""
    return min(rate, (1 + step) / (10 + step))


@torch.no_grad()
def ema_update(ema: nn.Module, net: nn.Module, rate: float) -> None:
    """ema <- rate * ema + (1 - rate) * net, parameters and floating buffers."""
    e = [p for p in ema.parameters()]
    n = [p.detach() for p in net.parameters()]
    torch._foreach_lerp_(e, n, 1.0 - rate)
    for be, bn in zip(ema.buffers(), net.buffers(), strict=True):
        be.copy_(bn)


def optimizer_to_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], str]:
    """Flatten an optimiser state dict: per-parameter tensors by name, the rest as JSON."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for key, val in st.items():
            if torch.is_tensor(val):
                tensors[f"{idx}.{key}"] = val
            else:
                scalars[f"{idx}.{key}"] = val
    return tensors, json.dumps({"param_groups": sd["param_groups"], "scalars": scalars})


def optimizer_from_tensors(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], info: str) -> None:
    meta = json.loads(info)
    state: dict[int, dict] = {}
    for name, t in tensors.items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = t
    for name, v in meta["scalars"].items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
