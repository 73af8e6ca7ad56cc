"""Latent manipulation figures for a digits GCTM of coupling `latent` (docs/gctm.md, latent manipulation).

    python bench/latent_manipulation.py --ckpt runs/digits-latent [--encode-steps 18] [--nfe 1]

A logistic-regression classifier (scikit-learn, fitted on the 1,437 training digits' pixels) reads the
outputs. On the 360 held-out test digits:
- the classifier's accuracy on the real test digits (its own error: the ceiling of every figure below);
- round trip: encode (`ctmtool.core.translate.encode`) and decode unmoved: the share still read as their
  class, and the RMSE to the input (images in [-1, 1]);
- manipulation: every test digit moved to each of the 9 other classes (3,240 moves): the share read as the
  target class (chance: 10 %);
- class-conditional draws: x1 ~ N(mu_c, diag s_c^2) decoded in one jump, 36 per class: the share read as c.
With --grid FILE.png: the first test digit of each class (rows), then its decoded latent moved to classes
0..9 (columns). Prints JSON. Measures only; asserts nothing. Not for CI.
"""

from __future__ import annotations

import argparse
import json

import torch

from ctmtool.core.models import load_model
from ctmtool.core.translate import encode, translate
from ctmtool.data.digits import load_digits
from ctmtool.jobs.plan import plan_translation


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--encode-steps", type=int, default=18)
    ap.add_argument("--nfe", type=int, default=1)
    ap.add_argument("--grid", default=None)
    args = ap.parse_args()
    from sklearn.linear_model import LogisticRegression

    torch.set_grad_enabled(False)
    train, test = load_digits("train"), load_digits("test")
    xtr, ytr = train.get(torch.arange(len(train)))
    xte, yte = test.get(torch.arange(len(test)))
    clf = LogisticRegression(max_iter=5000).fit(xtr.flatten(1).numpy(), ytr.numpy())

    def read(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(clf.predict(x.clamp(-1, 1).flatten(1).numpy()))

    model = load_model(args.ckpt)
    plan = plan_translation(model, nfe=args.nfe, batch=4096)
    k = model.net.source_classes
    x1 = encode(model, xte, args.encode_steps)
    back = translate(model, x1, plan)
    res = {"checkpoint": str(model.path), "encode_steps": args.encode_steps, "nfe": args.nfe, "n": len(xte),
           "classifier_accuracy_real": float((read(xte) == yte).float().mean()),
           "round_trip_accuracy": float((read(back) == yte).float().mean()),
           "round_trip_rmse": float((back - xte).flatten(1).square().mean(1).sqrt().mean())}
    hits, moves = 0, 0
    for shift in range(1, k):
        b = (yte + shift) % k
        out = translate(model, model.net.move_latent(x1, yte, b), plan)
        hits, moves = hits + int((read(out) == b).sum()), moves + len(b)
    res.update(moves=moves, moved_read_as_target=hits / moves)
    g = torch.Generator().manual_seed(0)
    c = torch.arange(k).repeat_interleave(36)
    z = torch.randn(len(c), *model.data_shape, generator=g)
    draws = translate(model, model.net.source_means[c] + model.net.source_stds[c] * z, plan)
    res["class_draws_read_as_class"] = float((read(draws) == c).float().mean())
    if args.grid:
        from ctmtool.jobs.plots import save_samples_png

        first = torch.stack([(yte == c).nonzero()[0, 0] for c in range(k)])
        rows = [torch.cat([xte[i:i + 1], translate(model, model.net.move_latent(
            x1[i:i + 1].expand(k, *x1.shape[1:]), yte[i].expand(k), torch.arange(k)), plan)]) for i in first]
        res["grid"] = str(save_samples_png(torch.cat(rows), args.grid, True, nrow=k + 1))
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
