"""ctmtool: Consistency Trajectory Models (Kim et al., ICLR 2024) and Generalized CTMs, as a library and a CLI.

    import torch
    from ctmtool import load_model, gamma_sample

    model = load_model("runs/toy/ctm")                     # a checkpoint, or a run directory (its newest)
    sigmas = model.sigmas(nfe=2)                           # the model's own schedule, sigma_max ... sigma_min
    x = torch.randn(1000, *model.data_shape) * sigmas[0]   # k-diffusion style: noise at the first level
    samples = gamma_sample(model, x, sigmas, gamma=0.0)    # model(x, t, s) is the jump G(x_t, t, s)

Names are imported on first use, so `import ctmtool` stays light (no torch until a name needs it).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_API = {
    "Model": "ctmtool.models",
    "load_model": "ctmtool.models",
    "analytic_model": "ctmtool.models",
    "open_model": "ctmtool.runs",
    "generate": "ctmtool.sampling",
    "gamma_sample": "ctmtool.sampling",
    "teacher_sample": "ctmtool.sampling",
    "sample": "ctmtool.apply",
    "translate_items": "ctmtool.apply",
    "edit_items": "ctmtool.apply",
    "sdedit": "ctmtool.editing",
    "likelihood_of": "ctmtool.nll",
    "NLLOptions": "ctmtool.nll",
    "load_preset": "ctmtool.config",
    "Preset": "ctmtool.config",
    "write_items": "ctmtool.outputs",
    "UserError": "ctmtool.errors",
}
__all__ = ["Model", "NLLOptions", "Preset", "UserError", "__version__", "analytic_model", "edit_items", "gamma_sample",
           "generate", "likelihood_of", "load_model", "load_preset", "open_model", "sample", "sdedit", "teacher_sample",
           "translate_items", "write_items"]

def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'ctmtool' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
