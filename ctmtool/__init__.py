"""ctmtool: Consistency Trajectory Models (Kim et al., ICLR 2024) and Generalized CTMs, as a library and a
CLI.

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
    "Model": "ctmtool.core.models",
    "load_model": "ctmtool.core.models",
    "analytic_model": "ctmtool.core.models",
    "generate": "ctmtool.core.sampling",
    "gamma_sample": "ctmtool.core.sampling",
    "teacher_sample": "ctmtool.core.sampling",
    "SamplingPlan": "ctmtool.core.sampling",
    "sdedit": "ctmtool.core.editing",
    "plan_sampling": "ctmtool.jobs.plan",
    "open_model": "ctmtool.jobs.run_dirs",
    "sample": "ctmtool.jobs.items",
    "translate_items": "ctmtool.jobs.items",
    "edit_items": "ctmtool.jobs.items",
    "likelihood_of": "ctmtool.jobs.likelihood",
    "NLLOptions": "ctmtool.jobs.likelihood",
    "write_items": "ctmtool.jobs.outputs",
    "load_preset": "ctmtool.config",
    "Preset": "ctmtool.config",
    "UserError": "ctmtool.errors",
}
__all__ = ["Model", "NLLOptions", "Preset", "SamplingPlan", "UserError", "__version__", "analytic_model",
           "edit_items", "gamma_sample", "generate", "likelihood_of", "load_model", "load_preset",
           "open_model", "plan_sampling", "sample", "sdedit", "teacher_sample", "translate_items",
           "write_items"]

def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'ctmtool' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
