"""GCTM data side (Kim et al. 2024b): couplings q(x0, x1), degradations for restoration, minibatch OT.

- `couplings`: `make_coupling(spec)` and the Coupling classes (pair a data batch with its source; moments
  for GCTMPrecond); paired pix2pix folders.
- `degrade`: `make_degradation(spec)` and the image operators (sr, blur, inpaint, noise, colorize, edges).
- `sinkhorn`: log-domain Sinkhorn plan and OT pairing.
"""

from ctmtool.gctm.couplings import (
    CorruptCoupling,
    Coupling,
    DistributionCoupling,
    IndependentCoupling,
    OTCoupling,
    PairedCoupling,
    batch_moments,
    coupling_from_config,
    item_shape,
    load_paired,
    make_coupling,
    split_side_by_side,
)
from ctmtool.gctm.degrade import Degradation, SpecError, make_degradation
from ctmtool.gctm.sinkhorn import ot_pairing, sinkhorn_plan

__all__ = [
    "Coupling", "CorruptCoupling", "Degradation", "DistributionCoupling", "IndependentCoupling", "OTCoupling",
    "PairedCoupling", "SpecError", "batch_moments", "coupling_from_config", "item_shape", "load_paired",
    "make_coupling", "make_degradation", "ot_pairing", "sinkhorn_plan", "split_side_by_side",
]
