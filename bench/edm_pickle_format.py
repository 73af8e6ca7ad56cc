"""Check tests/importers/test_edm_pickle.py's stand-in EDM pickles against NVIDIA's real code, and the
importer on real ones.

    git --git-dir=/work/.mirror/NVlabs+edm/repo archive HEAD | tar -x -C /tmp/edm   # a checkout of NVlabs/edm
    python bench/edm_pickle_format.py --edm /tmp/edm

For three tiny configurations (VP + DDPM++, VE + NCSN++, EDM + DDPM++ class-conditional) this builds the
network twice from the same arguments: with EDM's own `training/networks.py` (its persistence decorator
pickles it) and with the test file's stand-in classes. It prints
- whether the two have the same parameter/buffer names, shapes and dtypes, the same recorded constructor
  arguments, and pickles naming the same globals;
- for EDM's real pickle run through `ctmtool.importers.edm_pickle`: whether every tensor arrives unchanged,
  and the largest difference between EDM's own forward `net(x, sigma, labels)` and ctmtool's imported
  teacher's `denoise(x, sigma, labels)` on the same inputs (float32, CPU).
Not part of CI (it needs the EDM checkout); it asserts nothing, it prints what it finds.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import pickle
import sys
import types
from pathlib import Path

import torch

from ctmtool.core.models import model_from_checkpoint
from ctmtool.importers.edm_pickle import SafeUnpickler, import_edm_pickle

ROOT = Path(__file__).resolve().parents[1]


def _shim_missing_modules() -> None:
    """dnnlib/util.py imports `distutils.util.strtobool` (gone in Python 3.12) and `requests`; neither is used
    here."""
    if importlib.util.find_spec("distutils") is None:
        util = types.ModuleType("distutils.util")
        util.strtobool = lambda v: v.lower() in ("y", "yes", "t", "true", "on", "1")
        pkg = types.ModuleType("distutils")
        pkg.util = util
        sys.modules.update({"distutils": pkg, "distutils.util": util})
    if importlib.util.find_spec("requests") is None:
        sys.modules["requests"] = types.ModuleType("requests")


def _plain(v):
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_plain(x) for x in v]
    if hasattr(v, "item") and not isinstance(v, torch.Tensor):
        return v.item()
    return v


def _globals(data: bytes) -> set:
    seen = set()

    class Recording(SafeUnpickler):
        def find_class(self, module, name):
            seen.add((module.replace("numpy._core", "numpy.core"), name))
            return super().find_class(module, name)

    Recording(io.BytesIO(data)).load()
    return seen


def compare(name: str, real_cls, stand_cls, test, label_dim: int, kwargs: dict, tmp: Path) -> None:
    torch.manual_seed(0)
    real = real_cls(img_resolution=16, img_channels=3, label_dim=label_dim,
                    **kwargs).eval().requires_grad_(False)
    g = torch.Generator().manual_seed(2)
    # EDM starts its output layers at 1e-5: move them so the network's part matters
    for p in real.parameters():
        p.add_(0.05 * torch.randn(p.shape, generator=g))
    stand = test.build(stand_cls, label_dim=label_dim, **kwargs)
    rs, ss = real.model.state_dict(), stand.model.state_dict()
    same_layout = list(rs) == list(ss) and all(rs[k].shape == ss[k].shape and rs[k].dtype == ss[k].dtype
                                               for k in rs)
    print(f"{name}: {len(rs)} tensors in EDM's network, {len(ss)} in the stand-in; names, order, shapes, "
          f"dtypes {'identical' if same_layout else 'DIFFER'}")
    if not same_layout:
        print("  only in EDM:", sorted(set(rs) - set(ss))[:8], " only in the stand-in:",
              sorted(set(ss) - set(rs))[:8])
    for what, a, b in (("precond", real, stand), ("network", real.model, stand.model)):
        ka, kb = _plain(a._init_kwargs), _plain(b._init_kwargs)
        print(f"  recorded kwargs of the {what}: {'identical' if ka == kb else f'DIFFER: {ka} vs {kb}'}")
    real_bytes = pickle.dumps(dict(ema=real))
    stand_bytes = test.edm_dumps(tmp / "sentinel", ema=stand)
    ga, gb = _globals(real_bytes), _globals(stand_bytes)
    print("  globals named by the pickles: "
          f"{'identical' if ga == gb else f'DIFFER: EDM only {ga - gb}, stand-in only {gb - ga}'}")

    path = tmp / f"{name}.pkl"
    path.write_bytes(real_bytes)
    ckpt = import_edm_pickle(path)
    state = ckpt.state("ema")
    unchanged = set(state) == {f"net.{k}" for k in rs} and all(torch.equal(state[f"net.{k}"], v)
                                                               for k, v in rs.items())
    model = model_from_checkpoint(ckpt)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, 16, 16, generator=g)
    sigma = torch.tensor([0.01, 0.5, 3.0, 60.0])
    labels = torch.nn.functional.one_hot(torch.tensor([0, 1, 2, 3]) % max(label_dim, 1),
                                         max(label_dim, 1)).float() \
        if label_dim else None
    with torch.no_grad():
        want = real(x, sigma, labels).float()
        got = model.net.denoise(x, sigma, labels.argmax(1) if labels is not None else None)
        c_skip = model.net.coefficients(sigma.double().reshape(-1, 1, 1, 1))[0].float()
    diff, net_part = float((want - got).abs().max()), float((want - c_skip * x).abs().max())
    print(f"  EDM's real pickle through ctmtool: every tensor unchanged: {unchanged}; max |EDM forward - "
          f"ctmtool denoise| = {diff:.3g} (the network's part c_out F reaches {net_part:.3g})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--edm", type=Path, required=True, help="a checkout of github.com/NVlabs/edm")
    ap.add_argument("--tmp", type=Path, default=Path("/tmp/edm-pickle-format"))
    args = ap.parse_args()
    _shim_missing_modules()
    sys.path.insert(0, str(args.edm))
    from training import networks  # NVIDIA's code, from the checkout given

    spec = importlib.util.spec_from_file_location("edm_import_test", ROOT / "tests" / "test_edm_import.py")
    test = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(test)
    args.tmp.mkdir(parents=True, exist_ok=True)
    compare("vp-ddpmpp", networks.VPPrecond, test.VPPrecond, test, 0, test.DDPMPP, args.tmp)
    compare("ve-ncsnpp", networks.VEPrecond, test.VEPrecond, test, 0, test.NCSNPP, args.tmp)
    compare("edm-ddpmpp-cond", networks.EDMPrecond, test.EDMPrecond, test, 4,
            dict(test.DDPMPP, augment_dim=0, attn_resolutions=[16]), args.tmp)


if __name__ == "__main__":
    main()
