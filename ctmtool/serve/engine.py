"""The serving engine: the one place `ctmtool serve` calls the sampling library (so re-wiring it is local).

`Engine` holds a loaded model and answers the page's three requests, each one item at a time:
- `generate`: gamma-sampling (Kim et al. 2024, Alg. 1) from the noise z(phase) = cos(phase) z_a + sin(phase)
  z_b (z_a, z_b seeded; a great circle keeps z ~ N(0, I), so every frame of the latent walk is a sample);
- `edit`: SDEdit with one (or nfe) jumps (`ctmtool.core.translate.sdedit`) at a strength in (0, 1];
- `translate`: GCTM translation G(x1, 1, 0) (`ctmtool.core.translate.translate`).

The network runs in eager PyTorch or, when it exports and verifies (`ctmtool.jobs.export`), in ONNX Runtime:
the `OrtNet` below has the `jump` / `denoise` interface the samplers call, so the samplers stay the library's.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from ctmtool.core.sampling import sample_from
from ctmtool.errors import UserError
from ctmtool.jobs.plan import editing_level, plan_editing, plan_sampling, plan_translation

MAX_NFE = 8  # the page's NFE slider stops here (interactive use)


def _levels(v, batch: int) -> np.ndarray:
    """A scalar or (B,) level as a (B,) float32 array, as the exported graphs take it."""
    t = torch.as_tensor(v, dtype=torch.float32).reshape(-1)
    return (t.expand(batch) if t.numel() == 1 else t).contiguous().numpy()


class OrtNet:
    """A preconditioned network (jump G(x, t, s) or denoiser D(x, sigma)) running in ONNX Runtime; the rest of
    the trajectory interface (schedules, renoise, perturb, ...: plain arithmetic) is the PyTorch model's
    own."""

    def __init__(self, session, like: torch.nn.Module, graph: str):
        self.session, self.graph, self._like = session, graph, like
        self.inputs = [i.name for i in session.get_inputs()]

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._like, name)

    def _run(self, feed: dict, labels) -> torch.Tensor:
        if labels is not None and "labels" in self.inputs:
            feed["labels"] = torch.as_tensor(labels).reshape(-1).long().numpy()
        return torch.from_numpy(self.session.run(None, feed)[0])

    def jump(self, x: torch.Tensor, t, s, labels=None) -> torch.Tensor:
        b = x.shape[0]
        return self._run({"x": x.float().contiguous().numpy(), "t": _levels(t, b), "s": _levels(s, b)},
                         labels)

    def denoise(self, x: torch.Tensor, sigma, labels=None) -> torch.Tensor:
        if self.graph == "jump":
            return self.jump(x, sigma, sigma, labels)  # g(x, t, t) = G(x, t, t) is the denoiser
        return self._run({"x": x.float().contiguous().numpy(), "sigma": _levels(sigma, x.shape[0])}, labels)

    __call__ = denoise


def onnx_net(model, threads: int = 1, tol: float = 1e-4, folder: str | Path | None = None,
             log=lambda m: None) -> OrtNet:
    """Export the model's jump (a teacher: its denoiser) to ONNX, verify it, and open it in ONNX Runtime."""
    from ctmtool.jobs.export import export_graph, model_graphs, ort_session, verify

    graphs = model_graphs(model)
    graph = next((g for g in graphs if g.name in ("jump", "denoiser")), graphs[0])
    with tempfile.TemporaryDirectory(prefix="ctmtool-serve-") as tmp:  # the session keeps the graph in memory
        path = Path(folder or tmp) / f"{graph.name}.onnx"
        t0 = time.perf_counter()
        program = export_graph(model, graph, path)
        check = verify(model, graph, path, program, tol)
        log(f"ONNX {graph.name} exported and verified in {time.perf_counter() - t0:.1f}s "
            f"(max |onnxruntime - torch| = {check['max_abs_diff_ort']:.2g})")
        return OrtNet(ort_session(path, threads), model.net, graph.name)


class Engine:
    """One loaded model answering generate / edit / translate requests, one at a time (a lock)."""

    def __init__(self, model, backend: str = "auto", threads: int = 1, tol: float = 1e-4, log=lambda m: None):
        if backend not in ("auto", "onnxruntime", "torch"):
            raise UserError(f"unknown backend {backend!r}; use auto, onnxruntime or torch")
        if model.kind == "analytic":
            raise UserError("the analytic mixture has no network to serve; pass a teacher, CTM or GCTM "
                            "checkpoint")
        self.model, self.fast, self.backend = model, model, "torch"
        if backend != "torch":
            try:
                net = onnx_net(model, threads, tol, log=log)
                self.fast, self.backend = dataclasses.replace(model, net=net), "onnxruntime"
            except ImportError as err:
                if backend == "onnxruntime":
                    raise UserError(f"`backend` onnxruntime needs {err.name}: pip install "
                                    "'ctmtool[export]'") from None
                log(f"ONNX Runtime not available ({err.name} missing): serving with eager PyTorch")
            except Exception as err:  # an exporter failure or a mismatch: fall back, say why
                if backend == "onnxruntime":
                    raise
                log(f"ONNX export not used ({type(err).__name__}: {str(err).splitlines()[0][:200]}); serving "
                    "with eager PyTorch")
        self.lock = threading.Lock()

    # ---- what the page may ask -------------------------------------------------------------------------
    def info(self) -> dict:
        m = self.model
        gaussian = not m.is_trajectory or m.net.gaussian_source
        modes = []
        if m.is_trajectory and gaussian:
            modes.append("edit")
        if m.is_trajectory and m.net.translates:
            modes.append("translate")
        return {"kind": m.kind, "data_shape": list(m.data_shape), "is_image": m.is_image,
                "label_dim": m.label_dim, "generate": gaussian, "gamma": m.is_trajectory, "editor": modes,
                "max_nfe": MAX_NFE, "backend": self.backend, "preset": m.preset.name,
                "path": str(m.path or "")}

    def _labels(self, label: int | None, n: int):
        if not self.model.label_dim:
            return None
        label = 0 if label is None else int(label)
        if not 0 <= label < self.model.label_dim:
            raise UserError(f"class {label} is outside 0..{self.model.label_dim - 1}")
        return torch.full((n,), label, dtype=torch.long)

    def _timed(self, fn):
        with self.lock, torch.inference_mode():
            t0 = time.perf_counter()
            out = fn()
            return out, (time.perf_counter() - t0) * 1e3

    def noise(self, seed: int, phase: float, n: int) -> torch.Tensor:
        """z(phase) = cos(phase) z_a + sin(phase) z_b, with z_a, z_b ~ N(0, I) from seeds 2 seed and 2 seed +
        1."""
        shape = (n, *self.model.data_shape)
        za = torch.randn(shape, generator=torch.Generator().manual_seed(2 * seed))
        zb = torch.randn(shape, generator=torch.Generator().manual_seed(2 * seed + 1))
        return math.cos(phase) * za + math.sin(phase) * zb

    def generate(self, seed: int = 0, phase: float = 0.0, nfe: int = 1, gamma: float = 0.0,
                 label: int | None = None, n: int = 1) -> tuple[torch.Tensor, float]:
        """(samples (n, *shape) in the data range, model milliseconds) from the walk's noise at `phase`."""
        m = self.model
        # a teacher: nfe = Heun steps
        plan = (plan_sampling(m, solver="gamma", nfe=nfe, gamma=gamma, noise="edm", batch=n)
                if m.is_trajectory
                else plan_sampling(m, solver="heun", steps=nfe, noise="edm", batch=n))
        z, labels = self.noise(seed, phase, n), self._labels(label, n)
        gen = torch.Generator().manual_seed(seed + 12345)

        def renoise() -> torch.Tensor:
            return torch.randn(z.shape, generator=gen)

        return self._timed(lambda: sample_from(self.fast, z, plan, renoise, labels))

    def edit(self, x: torch.Tensor, strength: float, seed: int = 0, nfe: int = 1, gamma: float = 0.0,
             label: int | None = None) -> tuple[torch.Tensor, float]:
        """SDEdit of x (N, *shape) in the data range: noise to the strength's level, jump back."""
        from ctmtool.core.editing import sdedit

        if "edit" not in self.info()["editor"]:
            raise UserError(f"a {self.model.kind} model cannot edit (SDEdit needs a CTM, or a GCTM with a "
                            "Gaussian source)")
        self._check(x)
        level = editing_level(self.model, strength)
        plan = plan_editing(self.model, level, nfe=nfe, gamma=gamma, batch=len(x))
        gen = torch.Generator().manual_seed(seed)
        labels = self._labels(label, len(x))
        return self._timed(lambda: sdedit(self.fast, x, level, plan, generator=gen, labels=labels))

    def translate(self, x1: torch.Tensor, nfe: int = 1,
                  label: int | None = None) -> tuple[torch.Tensor, float]:
        """GCTM translation of x1 (N, *shape) from the source side."""
        from ctmtool.core.translate import translate

        plan = plan_translation(self.model, nfe=nfe, batch=len(x1))
        self._check(x1)
        labels = self._labels(label, len(x1))
        return self._timed(lambda: translate(self.fast, x1, plan, labels=labels))

    def _check(self, x: torch.Tensor) -> None:
        if tuple(x.shape[1:]) != tuple(self.model.data_shape):
            raise UserError(f"input of shape {tuple(x.shape[1:])} does not match the model's "
                            f"{tuple(self.model.data_shape)}")
        if not torch.isfinite(x).all():
            raise UserError("input has NaN or infinite values")
