"""Adversarial terms of CTM (CTM paper, Kim et al. 2024): hinge losses and the adaptive weight."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

Logits = torch.Tensor | Sequence[torch.Tensor]


def _heads(logits: Logits) -> list[torch.Tensor]:
    heads = [logits] if isinstance(logits, torch.Tensor) else list(logits)
    if not heads:
        raise ValueError("no logits given (the discriminator returned an empty list)")
    return heads


def d_hinge_loss(real_logits: Logits, fake_logits: Logits) -> torch.Tensor:
    """Discriminator hinge loss E[relu(1 - D(real))] + E[relu(1 + D(fake))], averaged over heads (Lim & Ye
    2017)."""
    real, fake = _heads(real_logits), _heads(fake_logits)
    if len(real) != len(fake):
        raise ValueError(f"{len(real)} real heads but {len(fake)} fake heads")
    terms = [torch.relu(1 - r).mean() + torch.relu(1 + f).mean() for r, f in zip(real, fake, strict=True)]
    return torch.stack(terms).mean()


def g_hinge_loss(fake_logits: Logits) -> torch.Tensor:
    """Generator hinge loss -E[D(fake)], averaged over heads (Lim & Ye 2017; CTM's L_GAN for the
    generator)."""
    return -torch.stack([f.mean() for f in _heads(fake_logits)]).mean()


def _grad_norm(loss: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
    """||d loss / d params|| over all params together; a loss that does not reach them has gradient 0."""
    if loss.dim() != 0:
        raise ValueError(f"adaptive_weight needs scalar losses, got shape {tuple(loss.shape)}")
    if not loss.requires_grad:
        return params[0].new_zeros(())
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    sq = [g.float().square().sum() for g in grads if g is not None]
    return torch.stack(sq).sum().sqrt() if sq else params[0].new_zeros(())


def adaptive_weight(loss_main: torch.Tensor, loss_other: torch.Tensor,
                    last_layer: torch.Tensor | nn.Module | Sequence[torch.Tensor],
                    lo: float, hi: float) -> torch.Tensor:
    """lambda = ||grad_last L_main|| / (||grad_last L_other|| + 1e-4), detached, clamped to [lo, hi] (CTM
    paper, Kim et al. 2024).

    `last_layer` is the weight tensor of the network's last layer (or a module: all its parameters, or a list
    of tensors). Both graphs are kept (retain_graph), so the losses can still be back-propagated afterwards.
    A loss that does not reach `last_layer` counts as a zero gradient, so the formula itself decides: an
    unreachable (or constant) L_other gives ||g_main|| / 1e-4, clamped to `hi` (its weight is irrelevant then:
    it adds no gradient there); an unreachable L_main gives 0, clamped to `lo`. A NaN ratio (a NaN gradient)
    gives `lo`, so a broken term is never amplified. CTM uses [0, 1e4] for lambda_DSM and [0.01, 10] for
    lambda_GAN.
    """
    if isinstance(last_layer, nn.Module):
        params = [p for p in last_layer.parameters() if p.requires_grad]
    elif isinstance(last_layer, torch.Tensor):
        params = [last_layer]
    else:
        params = list(last_layer)
    if not params:
        raise ValueError("adaptive_weight: last_layer has no trainable parameters")
    ratio = _grad_norm(loss_main, params) / (_grad_norm(loss_other, params) + 1e-4)
    return torch.nan_to_num(ratio, nan=lo).clamp(lo, hi).detach()


class Alternation:
    """Which networks step at optimiser step k of the GAN phase (ctm-cifar10 train_util.py run_step).

    With period p = `g_learning_period` > 1, step k is a generator step when k % p == 0 (the CTM, DSM and
    GAN terms update the student, then the EMAs and the target follow) and a discriminator step otherwise
    (only D is updated; no EMA or target update). p = 1 steps both every iteration (ctmtool's default: G,
    the EMAs, then D on the same batch). Steps are counted over G and D steps together."""

    def __init__(self, period: int = 1):
        if period < 1:
            raise ValueError(f"g_learning_period must be at least 1, got {period}")
        self.period = period

    def generator(self, k: int) -> bool:
        """Whether step k updates the student (and then its EMAs and the target)."""
        return self.period == 1 or k % self.period == 0

    def discriminator(self, k: int) -> bool:
        """Whether step k updates the discriminator."""
        return self.period == 1 or k % self.period != 0

    def step_of(self, g_steps: int, d_steps: int) -> int:
        """The index of the next step from the G and D steps taken so far (so a resumed run continues in
        phase)."""
        return g_steps if self.period == 1 else g_steps + d_steps
