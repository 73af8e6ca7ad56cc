"""The trajectory objective (`ctmtool.train.trajectory`, Kim et al. 2024, Eq. 11): the EMAs it keeps, what its
checkpoints hold, an exact resume, skipped non-finite steps, and the CTM factory's refusals."""

from __future__ import annotations

import pytest
import torch

from ctmtool.checkpoint import load_checkpoint
from ctmtool.cli.common import Reporter
from ctmtool.core.models import analytic_model
from ctmtool.data import load_dataset
from ctmtool.train.loop import fit
from ctmtool.train.trajectory import ctm_objective, ema_group

RUN = ("data.n=512", "distill.batch=32", "ctm.grid=6", "ctm.max_steps=3", "ctm.eval_emas=[0.9, 0.99]")


@pytest.fixture
def preset(tiny_preset):
    return tiny_preset("toy", *RUN)


def _objective(preset):
    return ctm_objective(preset, (2,), torch.device("cpu"), analytic_model(preset).net)


def _batch(seed: int):
    return [(torch.randn(32, 2, generator=torch.Generator().manual_seed(seed)), None)]


def _params(module):
    return [p.detach().clone() for p in module.parameters()]


def test_ctm_objective_trains_and_checkpoints_all_emas(tmp_path, preset):
    preset = preset.model_copy(update={"distill": preset.distill.model_copy(update={"kimg": 0.096})})
    data = load_dataset(preset.data)
    obj = ctm_objective(preset, data.shape, torch.device("cpu"), analytic_model(preset).net)
    before = [p.clone() for p in obj.net.parameters()]
    res = fit(obj, data, preset.distill, tmp_path, Reporter(quiet=True), device=torch.device("cpu"))
    assert res.steps == 3 and {"ctm", "dsm", "w_dsm"} <= set(res.last)
    assert any(not torch.equal(a, b) for a, b in zip(before, obj.net.parameters(), strict=True))
    ckpt = load_checkpoint(res.checkpoint)
    assert {"net", "target", "ema", "ema_0.99", "optim_net", "rng"} <= set(ckpt.groups)
    assert ckpt.kind == "ctm" and ckpt.meta["eval_emas"] == {"ema": 0.9, "ema_0.99": 0.99}
    assert ema_group(0.99) == "ema_0.99"


def test_one_step_moves_the_emas_by_their_rates(preset):
    """target <- mu x target + (1 - mu) x net with mu = ctm.target_ema (no warm-up); an evaluation EMA with
    rate r after step 1 uses min(r, 2/11) (TensorFlow's warm-up): checked parameter by parameter."""
    obj = _objective(preset)
    target0, ema0 = _params(obj.target), {r: _params(m) for r, m in obj.emas.items()}
    logs = obj.step(_batch(0), 0.0)
    assert all(torch.isfinite(v) for v in logs.values()) and obj.steps == 1
    net1 = _params(obj.net)
    mu = preset.ctm.target_ema
    for t0, t1, n1 in zip(target0, obj.target.parameters(), net1, strict=True):
        torch.testing.assert_close(t1, mu * t0 + (1 - mu) * n1)
    for rate, ema in obj.emas.items():
        r = min(rate, 2 / 11)
        for e0, e1, n1 in zip(ema0[rate], ema.parameters(), net1, strict=True):
            torch.testing.assert_close(e1, r * e0 + (1 - r) * n1)


def test_restore_then_step_equals_stepping_through(preset):
    """Two steps in one go, or one step, a checkpoint, a fresh objective restored from it and one more step:
    the same weights, target and EMAs bit for bit (optimiser state and every random stream are in the
    checkpoint)."""
    through = _objective(preset)
    for k in range(2):
        through.step(_batch(k), 0.032 * k)
    first = _objective(preset)
    first.step(_batch(0), 0.0)
    ckpt = first.checkpoint({"step": first.steps, "kimg": 0.032})
    resumed = _objective(preset)
    resumed.restore(ckpt)
    resumed.step(_batch(1), 0.032)
    assert resumed.steps == through.steps == 2
    for a, b in ((resumed.net, through.net), (resumed.target, through.target),
                 *((resumed.emas[r], through.emas[r]) for r in through.emas)):
        assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))


def test_a_non_finite_loss_changes_nothing(preset):
    obj = _objective(preset)
    before, target = _params(obj.net), _params(obj.target)
    assert obj.step([(torch.full((32, 2), float("nan")), None)], 0.0) == {"finite": False}
    assert obj.steps == 0
    assert all(torch.equal(a, b) for a, b in zip(before, obj.net.parameters(), strict=True))
    assert all(torch.equal(a, b) for a, b in zip(target, obj.target.parameters(), strict=True))


def test_ctm_objective_needs_a_teacher_unless_self(preset, tiny_preset):
    with pytest.raises(ValueError, match="teacher"):
        ctm_objective(preset, (2,), torch.device("cpu"), None)
    selfish = tiny_preset("toy", *RUN, 'ctm.teacher="self"')
    obj = ctm_objective(selfish, (2,), torch.device("cpu"), None)
    assert obj.teacher is obj.target  # the model's own target EMA solves t -> u
    assert obj.terms.ctm_loss.self_jump  # with one jump G_target(x_t, t, u), the official self_learn
    heun = ctm_objective(tiny_preset("toy", *RUN, 'ctm.teacher="self"', 'ctm.self_solver="heun"'), (2,),
                         torch.device("cpu"), None)
    assert not heun.terms.ctm_loss.self_jump


def test_self_learn_target_is_the_targets_own_jump(preset, tiny_preset):
    """ctm.teacher = self (ctm-cifar10 karras_diffusion.py 184-193, self_learn): x_u = G_target(x_t, t, u)."""
    from ctmtool.losses.ctm import CTMLoss

    obj = ctm_objective(tiny_preset("toy", *RUN, 'ctm.teacher="self"'), (2,), torch.device("cpu"), None)
    loss = obj.terms.ctm_loss
    calls = []

    class Spy:
        def jump(self, x, t, s, labels=None):
            calls.append((t.clone(), s.clone()))
            return obj.target.jump(x, t, s, labels)

        def denoise(self, *a, **k):
            raise AssertionError("no Heun solve without a teacher in self_learn mode")

    x0 = torch.randn(16, 2)
    g = torch.Generator().manual_seed(0)
    l, _ = loss(obj.net, obj.target, Spy(), x0, None, g, torch.Generator().manual_seed(1), None, k=2)
    assert len(calls) == 1 and torch.isfinite(l).all()
    t, u = calls[0]
    assert isinstance(loss, CTMLoss) and (u < t).all()


def test_k_is_drawn_once_per_optimiser_step(preset, monkeypatch):
    """The teacher steps k: one draw per optimiser step, the step's first index draw, shared by its
    micro-batches (as ctm-cifar10 cm/train_util.py forward_backward); drawn per micro-batch, 10 steps of 3
    would differ."""
    import ctmtool.losses.ctm as ctm_losses
    from ctmtool.core.schedules import sample_teacher_steps

    ks, draw = [], ctm_losses.sample_ctm_indices

    def recording(*args, **kwargs):
        out = draw(*args, **kwargs)
        ks.append(out[3])
        return out

    monkeypatch.setattr(ctm_losses, "sample_ctm_indices", recording)
    obj = _objective(preset)
    for step in range(10):
        obj.step([_batch(3 * step + i)[0] for i in range(3)], 0.0)
    per_step = [ks[3 * i: 3 * i + 3] for i in range(10)]
    assert len(ks) == 30 and all(len(set(s)) == 1 for s in per_step) and len({s[0] for s in per_step}) > 1
    assert per_step[0][0] == sample_teacher_steps(3, torch.Generator().manual_seed(preset.distill.seed + 2))
