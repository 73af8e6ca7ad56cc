"""Classifier-rejection sampling: the keep rule on a hand-made example, and `ctmtool sample --reject-with`
keeping exactly the best-scored of the samples the same seeds give without rejection."""

from __future__ import annotations

import json
import warnings

import numpy as np
import torch
from typer.testing import CliRunner

from ctmtool.cli.app import app
from ctmtool.jobs.rejection import classifier_scores, draw_count, keep_best


class _Bright(torch.nn.Module):
    """forward: (B, 1) mean brightness; classify: 2 logits, class 1 = bright."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.float().mean((1, 2, 3))[:, None]

    @torch.jit.export
    def classify(self, x: torch.Tensor) -> torch.Tensor:
        m = x.float().mean((1, 2, 3)) / 255 - 0.5
        return torch.stack([-8 * m, 8 * m], 1)


def test_keep_best_per_class_then_overall():
    scores = torch.tensor([-0.1, -2.0, -0.5, -0.3, -3.0, -0.2])
    classes = torch.tensor([0, 0, 0, 1, 1, 1])
    # ratio 1: each class keeps ceil(3 / 2) = 2 (class 0: items 0, 2; class 1: items 5, 3); then the best 3
    assert keep_best(scores, classes, 1.0, 3).tolist() == [0, 3, 5]
    assert keep_best(scores, classes, 0.0, 6).tolist() == [0, 1, 2, 3, 4, 5]
    assert draw_count(50, 0.2) == 60
    logp, cls = classifier_scores(torch.zeros(2, 3, 4, 4), torch.tensor([0, 1]),
                                  lambda x: torch.tensor([[0.0, 1.0], [2.0, 0.0]]).expand(len(x), 2))
    assert torch.allclose(logp, torch.log_softmax(torch.tensor([[0.0, 1.0], [2.0, 0.0]]), 1)[[0, 1], [0, 1]])


def test_cli_keeps_the_best_of_the_same_draws(tmp_path, make_checkpoint, tiny_preset):
    ckpt = make_checkpoint(tmp_path / "c.safetensors", "ctm", (3, 8, 8), tiny_preset("digits", net="unet"),
                           scale=0.3)
    clf = tmp_path / "clf.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(_Bright()), str(clf))

    def run(*args):
        return CliRunner().invoke(app,
                                  ["sample", "--ckpt", str(ckpt), "--device", "cpu", "--seed", "3", "--json",
                                        *args])

    r = run("--n", "6", "--reject-with", str(clf), "--rejection-ratio", "1", "-o", str(tmp_path / "kept.npz"))
    assert r.exit_code == 0, r.stderr
    res = json.loads(r.stdout)
    assert (res["n"], res["drawn"]) == (6, 12) and res["mean_logp_kept"] >= res["mean_logp_drawn"]
    assert run("--n", "12", "-o", str(tmp_path / "all.npz")).exit_code == 0
    drawn = torch.from_numpy(np.load(tmp_path / "all.npz")["samples"]).permute(0, 3, 1, 2)
    scores, classes = classifier_scores(drawn.float() / 127.5 - 1, None, torch.jit.load(str(clf)).classify)
    expect = drawn[keep_best(scores, classes, 1.0, 6)].permute(0, 2, 3, 1).numpy()
    assert np.array_equal(np.load(tmp_path / "kept.npz")["samples"], expect)
    bad = run("--n", "4", "--reject-with", str(ckpt), "-o", str(tmp_path / "x.npz"))
    assert bad.exit_code == 2 and "TorchScript" in bad.stderr
