"""Export a model's natural graphs to ONNX (and a `torch.export` program), verified in ONNX Runtime.

Graphs per checkpoint kind (every input has a dynamic batch dimension B; `labels` (B,) int64 only for
class-conditional models):

- ctm:     `generator` z (B, *shape) standard normal -> G(sigma_max z, sigma_max, sigma_min), the one-step
           sampler (Kim et al. 2024, Alg. 1 with N = 1; images clamped to [-1, 1]);
           `jump` x, t, s (B,) -> G(x, t, s) (Eq. 7), so a runtime can do gamma-sampling and editing.
- gctm:    `translator` x1 -> G(x1, 1, 0) (GCTM, Kim et al. 2024b, Sec. 3; images clamped), and `jump`.
- teacher: `denoiser` x, sigma (B,) -> D(x, sigma) (Karras et al. 2022, Eq. 7).

The exporters are PyTorch's own (`torch.onnx.export(dynamo=True)` on a `torch.export` program); every
file is checked by running ONNX Runtime and the exported program on random inputs at two batch sizes
against eager PyTorch, and the export fails with the measured difference when they disagree.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ctmtool.core.sampling import SamplingPlan
from ctmtool.errors import UserError
from ctmtool.jobs.plan import plan_explicit, plan_translation

DEFAULT_TOL = 1e-4  # max |ort - torch| <= tol * max(1, max |torch|)


class ExportMismatch(UserError):
    """The exported graph computes something else than PyTorch (the message holds the measured difference)."""


class _Jump(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x, t, s, labels=None):
        return self.net.jump(x, t, s, labels)


class _Denoiser(_Jump):
    def forward(self, x, sigma, labels=None):
        return self.net.denoise(x, sigma, labels)


class _OneStep(nn.Module):
    """x = G(scale * x, t, s), clamped to [-1, 1] for images: the CTM generator (scale = t = sigma_max) or
    the GCTM translator (scale = 1, t = 1, s = 0)."""

    def __init__(self, net: nn.Module, scale: float, t: float, s: float, clamp: bool):
        super().__init__()
        self.net, self.scale, self.t, self.s, self.clamp = net, scale, t, s, clamp

    def step(self, x, labels=None):
        y = self.net.jump(x * self.scale, self.t, self.s, labels)
        return y.clamp(-1, 1) if self.clamp else y


class _Generator(_OneStep):
    def forward(self, z, labels=None):
        return self.step(z, labels)


class _Translator(_OneStep):
    def forward(self, x1, labels=None):
        return self.step(x1, labels)


@dataclass
class Graph:
    name: str                 # generator, jump, translator, denoiser
    module: nn.Module         # the wrapper traced by the exporter
    inputs: list[str]         # input names, in order
    levels: tuple[str, ...]   # inputs that are per-sample levels (B,), the rest are data-shaped


def one_step_plan(model) -> SamplingPlan:
    """The exported graphs' one jump: a translator's plan (`plan_translation`) or a generator's (one jump of
    gamma-sampling), checked once by `ctmtool.jobs.plan`."""
    return plan_translation(model) if model.net.translates else plan_explicit(model, nfe=1)


def model_graphs(model) -> list[Graph]:
    """The graphs of a ctmtool `Model` worth exporting, its main one first."""
    net, clamp = model.net, model.is_image
    lab = ["labels"] if model.label_dim else []
    if model.is_trajectory:  # one jump along the model's own one-step schedule, and the general jump
        t, s = (float(v) for v in one_step_plan(model).schedule)
        jump = Graph("jump", _Jump(net), ["x", "t", "s", *lab], ("t", "s"))
        if net.translates:  # the source is given as is (a GCTM's x1)
            return [Graph("translator", _Translator(net, 1.0, t, s, clamp), ["x1", *lab], ()), jump]
        return [Graph("generator", _Generator(net, t, t, s, clamp), ["z", *lab], ()), jump]
    if model.kind == "teacher":
        return [Graph("denoiser", _Denoiser(net), ["x", "sigma", *lab], ("sigma",))]
    raise UserError(f"a {model.kind} model has no network to export; export a teacher, CTM or GCTM "
                    "checkpoint")


def random_inputs(model, graph: Graph, batch: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Inputs for a check: data ~ N(0, level^2) at levels log-uniform over the model's range, s = u t."""
    ends = one_step_plan(model).schedule if model.is_trajectory else (model.sigma_max, model.sigma_min)
    lo, hi = max(float(ends[-1]), 1e-3), float(ends[0])
    t = torch.exp(math.log(lo) + torch.rand(batch, generator=generator) * (math.log(hi) - math.log(lo)))
    out = {}
    for name in graph.inputs:
        if name == "labels":
            out[name] = torch.randint(model.label_dim, (batch,), generator=generator)
        elif name in ("t", "sigma"):
            out[name] = t
        elif name == "s":
            out[name] = t * torch.rand(batch, generator=generator)
        else:
            scale = t.reshape(-1, *[1] * len(model.data_shape)) if graph.levels else 1.0
            out[name] = scale * torch.randn(batch, *model.data_shape, generator=generator)
    return out


def difference(got: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """(max |got - ref|, the allowed scale max(1, max |ref|))."""
    return float((got.float() - ref.float()).abs().max()), max(1.0, float(ref.abs().max()))


@torch.no_grad()
def export_graph(model, graph: Graph, path: Path, opset: int = 18) -> torch.export.ExportedProgram:
    """Write `graph` as ONNX with a dynamic batch dimension; return the `torch.export` program it came
    from."""
    gen = torch.Generator().manual_seed(0)
    example = random_inputs(model, graph, 2, gen)
    batch = torch.export.Dim("batch", min=1, max=65536)
    dyn = {name: {0: batch} for name in graph.inputs}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(graph.module, (), kwargs=example, f=None, dynamo=True, opset_version=opset,
                                 input_names=graph.inputs, output_names=["y"], dynamic_shapes=dyn,
                                 verbose=False, optimize=True)
    prog.save(str(path), external_data=False)  # one self-contained file (< 2 GB)
    return prog.exported_program


def ort_session(path: str | Path, threads: int = 1, provider: str = "CPUExecutionProvider"):
    """An ONNX Runtime session: all graph optimisations, `threads` intra-op threads, one inter-op thread."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=[provider])


@torch.no_grad()
def verify(model, graph: Graph, path: Path, program=None, tol: float = DEFAULT_TOL,
           batches: tuple[int, ...] = (1, 3), seed: int = 1) -> dict:
    """Run the ONNX file in ONNX Runtime (and `program`, if given) on random inputs against eager PyTorch;
    raise ExportMismatch with the measured difference above tol * max(1, max |torch|)."""
    sess = ort_session(path)
    gen = torch.Generator().manual_seed(seed)
    worst = {"onnxruntime": 0.0, "torch.export": 0.0}
    for b in batches:
        inputs = random_inputs(model, graph, b, gen)
        ref = graph.module(**inputs)
        got = {"onnxruntime": torch.from_numpy(sess.run(None, {k: v.numpy() for k, v in inputs.items()})[0])}
        if program is not None:
            got["torch.export"] = program.module()(**inputs)
        for what, y in got.items():
            if tuple(y.shape) != tuple(ref.shape):
                raise ExportMismatch(f"{path}: {what} output shape {tuple(y.shape)} differs from PyTorch's "
                                     f"{tuple(ref.shape)} at batch {b}")
            diff, scale = difference(y, ref)
            if not diff <= tol * scale:
                raise ExportMismatch(f"{path}: {what} differs from PyTorch by {diff:.3g} at batch {b} "
                                     f"(allowed {tol * scale:.3g} = {tol:g} x {scale:.3g}); the graph is not "
                                     "exact, nothing kept")
            worst[what] = max(worst[what], diff)
    return {"graph": graph.name, "file": str(path), "inputs": graph.inputs, "batches": list(batches),
            "max_abs_diff_ort": worst["onnxruntime"],
            **({"max_abs_diff_program": worst["torch.export"]} if program is not None else {})}


def output_paths(out: Path, graphs: list[Graph]) -> dict[str, Path]:
    """model.onnx for the main graph, model.<name>.onnx for the others."""
    if out.suffix != ".onnx":
        raise UserError(f"`out` {out}: give a file name ending in .onnx (e.g. model.onnx)")
    return {g.name: (out if i == 0 else out.with_name(f"{out.stem}.{g.name}.onnx"))
            for i, g in enumerate(graphs)}


def metadata(model, graphs: list[Graph], files: dict[str, Path]) -> dict:
    """What a runtime needs besides the graphs: shapes, level range, label count, file names."""
    return {"format": "ctmtool-onnx", "kind": model.kind, "data_shape": list(model.data_shape),
            "label_dim": model.label_dim, "sigma_min": model.sigma_min, "sigma_max": model.sigma_max,
            "graphs": {g.name: {"file": files[g.name].name, "inputs": g.inputs, "output": "y"}
                       for g in graphs}}


def export_model(model, out: str | Path, tol: float = DEFAULT_TOL, program: bool = True, force: bool = False,
                 opset: int = 18, log=lambda msg: None) -> dict:
    """Export every graph of `model` next to `out` (.onnx files, .pt2 programs, a .json description), each
    verified; on any failure no output file is left behind."""
    out = Path(out)
    graphs = model_graphs(model)
    files = output_paths(out, graphs)
    targets = [*files.values(), *(p.with_suffix(".pt2") for p in files.values() if program),
               out.with_suffix(".json")]
    existing = [str(p) for p in targets if p.exists()]
    if existing and not force:
        raise UserError(f"{', '.join(existing)} already exist(s); pass `force` to overwrite or choose "
                        "another `out`")
    if not out.parent.exists():
        raise UserError(f"folder {out.parent} does not exist; create it or choose another `out`")
    staged: list[tuple[Path, Path]] = []
    results = []
    try:
        for g in graphs:
            final = files[g.name]
            tmp = final.with_name(f".{final.name}.tmp")
            log(f"exporting {g.name} -> {final}")
            prog = export_graph(model, g, tmp, opset)
            staged.append((tmp, final))
            if program:
                tmp_pt2 = final.with_name(f".{final.stem}.tmp.pt2")
                torch.export.save(prog, str(tmp_pt2))
                staged.append((tmp_pt2, final.with_suffix(".pt2")))
            log(f"verifying {g.name} in ONNX Runtime")
            r = verify(model, g, tmp, prog if program else None, tol)
            r["file"] = str(final)
            results.append(r)
        meta_tmp = out.with_name(f".{out.stem}.json.tmp")
        meta_tmp.write_text(json.dumps(metadata(model, graphs, files), indent=1) + "\n")
        staged.append((meta_tmp, out.with_suffix(".json")))
        for tmp, final in staged:
            tmp.replace(final)
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        for g in graphs:  # a partial file from a failed export
            files[g.name].with_name(f".{files[g.name].name}.tmp").unlink(missing_ok=True)
            files[g.name].with_name(f".{files[g.name].stem}.tmp.pt2").unlink(missing_ok=True)
    return {"kind": model.kind, "tolerance": tol, "graphs": results, "json": str(out.with_suffix(".json")),
            "programs": [str(p.with_suffix(".pt2")) for p in files.values()] if program else []}


PRESET_SHAPES = {"digits": (1, 8, 8), "cifar10-fast": (3, 32, 32), "cifar10": (3, 32, 32), "toy": (2,),
                 "toy-translate": (2,)}


def random_checkpoint(path: str | Path, preset: str = "digits", kind: str = "ctm", seed: int = 0,
                      overrides: list[str] | None = None, scale: float = 0.05) -> Path:
    """A checkpoint of `preset`'s network with random weights (every parameter, zero-initialised ones too,
    plus scale * N(0, 1)): for timing (weights do not change the time) and for export checks that cannot pass
    by zero outputs."""
    from ctmtool.checkpoint import Checkpoint, save_checkpoint
    from ctmtool.config import load_preset
    from ctmtool.core.models import build_precond

    p = load_preset(preset, overrides)
    if preset not in PRESET_SHAPES:
        raise UserError(f"no data shape known for preset {preset!r}; use one of {', '.join(PRESET_SHAPES)}")
    shape = PRESET_SHAPES[preset]
    # a GCTM records its moments
    meta = {"moments": {"var0": 0.25, "var1": 1.0, "cov01": 0.0}} if p.gctm is not None else {}
    net = build_precond(kind, p, shape, meta)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for q in net.parameters():
            q.add_(scale * torch.randn(q.shape, generator=gen))
    return save_checkpoint(path, Checkpoint(kind, p, shape, groups={"ema": net.state_dict()}, meta=meta))
