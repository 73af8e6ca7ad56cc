"""GCTM checkpoints of the official code (1202kbs/GCTM): dicts with `net` and `net_ema` state dicts.

`train_gctm.py` saves `{X0_eval, X1_eval, net, net_ema, opt_CTM, avgmeter, best_FID}`; the network is
its SongUNet with `param = 'LIN'` (x_t = (1 - t) x0 + t x1). The file does not hold the moments, the
label range, the grid or the source noise: give them as options (`var0`, `var1`, `cov01` as on its command
line `--vars`; `x1_eps_std` its `--X1_eps_std`, whose square is added to var1 as `train_gctm.py` line 47
does; `smin`, `smax`, `grid`). The source noise is stored as the preset's `gctm.source_noise`, so
`ctmtool translate` evaluates G(x1 + x1_eps_std * eps, 1, 0) as the official `eval_FID` (utils.py 61-75 on
`Sampler.sample_X1`, data.py 44) does.
Names map to ctmtool's as `t_map_layer{0,1}` -> `map_layer{0,1}` and also -> `map_s_layer{0,1}` (the
official s-embedding goes through the t-MLP; its `s_map_layer*` are unused and dropped), `t_affine` ->
`affine`, `s_affine` -> `affine_s`. The noise label is ln(t/(1-t))/4 with t = 0 -> smin and t = 1 -> smax.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ctmtool.errors import UserError
from ctmtool.importers.base import ImportResult, clean_state
from ctmtool.importers.ctm_cifar10 import infer_songunet

NAME = "gctm"
REQUIRED = ("var0", "var1", "cov01")


def sniff(obj: Any) -> bool:
    return isinstance(obj, dict) and isinstance(obj.get("net_ema"), dict) \
        and isinstance(obj.get("net"), dict) and "t_map_layer0.weight" in obj["net_ema"]


def to_ctmtool_state(net: dict) -> dict:
    out = {}
    for k, v in net.items():
        if k.startswith("s_map_layer"):
            continue  # dead code in the official network
        if k.startswith("t_map_layer"):
            rest = k[len("t_map_layer"):]
            out["net.map_layer" + rest] = v
            out["net.map_s_layer" + rest] = v
            continue
        k = k.replace(".t_affine.", ".affine.").replace(".s_affine.", ".affine_s.")
        out["net." + k] = v
    return out


def convert(obj: Any, source: str | Path = "gctm.pt", ema: str = "net_ema", var0: float | None = None,
            var1: float | None = None, cov01: float | None = None, smin: float = 0.002, smax: float = 80.0,
            grid: int = 18, rho: float = 7.0, dropout: float = 0.1, x1_eps_std: float = 0.0,
            base=None) -> ImportResult:
    """A ctmtool `gctm` checkpoint from the `ema` network of the file (net_ema by default, as its evaluation
    uses)."""
    from ctmtool.config import load_preset, preset_from_dict

    path = Path(source)
    given = dict(var0=var0, var1=var1, cov01=cov01)
    missing = [k for k, v in given.items() if v is None]
    if missing:
        raise UserError(f"{path} is a GCTM checkpoint, which does not record its moments; give "
                        f"{', '.join(f'`{k}`' for k in missing)} (the three `vars` values of its training "
                        "command; its `X1_eps_std` as `x1_eps_std`)")
    if not x1_eps_std >= 0:
        raise UserError(f"`x1_eps_std` must be a non-negative number (its `X1_eps_std`), got {x1_eps_std}")
    var1 = float(var1) + float(x1_eps_std) ** 2  # train_gctm.py line 47: vars[1] += X1_eps_std**2
    if ema not in ("net", "net_ema"):
        raise UserError(f"`ema` must be 'net' or 'net_ema' for a GCTM file, got {ema!r}")
    state = clean_state(to_ctmtool_state(obj[ema]))
    unet, data_shape, label_dim = infer_songunet(state)
    if base is None:
        # the GCTM paper's image settings; network and moments replaced below
        base = load_preset("edges2shoes")
    raw = base.model_dump(mode="json")
    raw["name"] = path.stem
    raw["description"] = f"imported from the GCTM checkpoint {path.name} ({ema})"
    raw["data"] = {"source": "folder", "resolution": data_shape[1], "channels": data_shape[0]}
    raw["net"] = {"kind": "unet", "label_dim": label_dim, "unet": {**unet, "dropout": dropout}}
    raw["diffusion"].update(sigma_min=smin, sigma_max=smax, rho=rho)
    raw["gctm"] = {**(raw.get("gctm") or {}), "grid": grid, "max_steps": min(grid - 1, 17),
                   "var0": var0, "var1": var1, "cov01": cov01, "source_noise": float(x1_eps_std)}
    preset = preset_from_dict(raw, f"built from {path.name}")
    moments = {"var0": float(var0), "var1": var1, "cov01": float(cov01), "label_range": [smin, smax],
               "x1_eps_std": float(x1_eps_std)}
    return ImportResult(kind="gctm", preset=preset, data_shape=data_shape, state=state,
                        meta={"source": "gctm", "weights": ema, "moments": moments})
