"""Translation, editing and zero-shot restoration as jobs: inputs loaded and fitted to the model, the plan
settled once (`plan_translation`; `editing_level` + `plan_editing` or `plan_restoration`), every item run with
its own seed, the outputs (and an optional side-by-side grid) written, and the summary statistics returned as
one dict for the CLI to show.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ctmtool.core.editing import composite
from ctmtool.core.zero_shot import centre_hole, observed
from ctmtool.jobs import inputs
from ctmtool.jobs.items import (
    class_labels,
    edit_items,
    manipulate_items,
    restore_items,
    source_class_labels,
    translate_items,
)
from ctmtool.jobs.outputs import check_out, write_items
from ctmtool.jobs.plan import (
    check_manipulation,
    editing_level,
    plan_editing,
    plan_restoration,
    plan_translation,
)
from ctmtool.jobs.plots import preset_view, save_png, side_by_side
from ctmtool.jobs.restoration_refs import references
from ctmtool.jobs.streams import input_path
from ctmtool.metrics.restoration import restoration_metrics
from ctmtool.progress import Progress


def _grid(columns, path: Path, model, titles: list[str], target: bool = False, limit: int = 64) -> str:
    """The --grid picture: images side by side, or one scatter panel per column on the preset's range (the
    target data in grey under the last panel for a toy preset)."""
    cols = [c[:limit] for c in columns] if model.is_image else columns
    reference, extent = (None, None) if model.is_image else preset_view(model.preset)
    save_png(side_by_side(cols, model.is_image, reference=reference if target else None,
                          titles=titles, extent=extent), path)
    return str(path)


def _timed(report: Progress, n: int, what: str, fn):
    t0 = time.time()
    with report.progress(n, what, unit="items") as advance:
        y = fn(advance)
    return y, time.time() - t0


def _write_both(write_out, write_grid) -> dict:
    """The side-by-side grid, then the outputs: when the second fails, the first is removed (one command's
    outputs are all written or none)."""
    grid = write_grid() if write_grid is not None else None
    try:
        info = write_out()
    except BaseException:
        if grid is not None:
            Path(grid).unlink(missing_ok=True)
        raise
    if grid is not None:
        info["grid"] = grid
    return info


def _norm_mean(d: torch.Tensor) -> float:
    return round(float(d.flatten(1).norm(dim=1).mean()), 6)


def translation_job(model, src: str, out: str, *, nfe: int, gamma: float, degrade: bool, grid: Path | None,
                    seed: int, batch: int, device, force: bool, report: Progress,
                    metrics: list[str] | None = None, ref: str | None = None,
                    class_label: int | None = None) -> dict:
    """`ctmtool translate`: translate the items of `src` with a GCTM into `out`; returns the summary, with the
    restoration `metrics` (parsed names) against `ref` (or the clean / target inputs) when asked."""
    plan = plan_translation(model, nfe=nfe, gamma=gamma, batch=batch)
    out_path = check_out(out, model.is_image, force)
    with input_path(src) as staged:
        data = inputs.load_inputs(staged, model, split_pairs=True, log=report.log)
    x = clean = data.x
    check_out(out, model.is_image, force, one_png_for=len(x))
    refs = references(model, data, ref, degrade, log=report.log) if metrics is not None else None
    labels = class_labels(model, len(x), class_label, data.labels)
    if degrade:
        x = inputs.degrade(x, model, seed)
    report.log(f"translating {len(x)} items with {model.path} ({model.preset.gctm.coupling}, NFE {nfe}) on "
               f"{device}")
    y, seconds = _timed(report, len(x), "translate", lambda adv: translate_items(
        model, x, plan, seed=seed, device=device, progress=adv, labels=labels))
    scores = {}
    if refs is not None:
        scores = restoration_metrics(y, refs[0], metrics)
        scores.pop("per_image")
        scores["metrics_ref"] = refs[1]
    cols = ([clean] if degrade else []) + [x, y] + ([data.other] if data.other is not None else [])
    titles = (["clean"] if degrade else []) + ["input", "translated"] + (["paired"] if data.other is not None
                                                                         else [])
    info = _write_both(lambda: write_items(y, out_path, model.is_image, inputs=x, names=data.names,
                                           grid=False),
                       grid and (lambda: _grid(cols, grid, model, titles, target=True)))
    return {**info, "n": len(y), "nfe": nfe, "gamma": gamma, "coupling": model.preset.gctm.coupling,
            "degrade": degrade, "seed": seed, "checkpoint": str(model.path), **scores,
            **({"class": class_label if class_label is not None else "from the inputs"} if labels is not None
               else {}),
            "mean_displacement": _norm_mean(y - x),
            "seconds": round(seconds, 3), "items_per_second": round(len(y) / max(seconds, 1e-9), 1)}


def edit_job(model, image: str, out: str, *, strength: float, strokes: str | None, mask: str | None,
             keep_unmasked: bool, nfe: int, gamma: float, grid: Path | None, seed: int, batch: int, device,
             force: bool, report: Progress) -> dict:
    """`ctmtool translate edit`: SDEdit / stroke editing of the items of `image` into `out`; returns the
    summary."""
    level = editing_level(model, strength)
    plan = plan_editing(model, level, nfe=nfe, gamma=gamma, batch=batch)
    out_path = check_out(out, model.is_image, force)
    with input_path(image) as staged:
        data = inputs.load_inputs(staged, model, log=report.log)
    x = data.x
    check_out(out, model.is_image, force, one_png_for=len(x))
    s = inputs.load_strokes(strokes, model, len(x), report.log) if strokes is not None else None
    m = inputs.load_mask(mask, model, len(x), report.log) if mask is not None else None
    painted = composite(x, s, m) if s is not None else None
    unit = model.net.level_unit
    report.log(f"editing {len(x)} items with {model.path} ({model.kind}) at strength {strength} ({unit} = "
               f"{level:.4g}), NFE {nfe}")
    y, seconds = _timed(report, len(x), "edit", lambda adv: edit_items(
        model, x, level, plan, strokes=s, mask=m, keep_unmasked=keep_unmasked, seed=seed, device=device,
        progress=adv))
    start = x if painted is None else painted
    cols = [x] + ([painted] if painted is not None else []) + [y]
    titles = ["input"] + (["painted"] if painted is not None else []) + [f"edited at strength {strength:g}"]
    info = _write_both(lambda: write_items(y, out_path, model.is_image, inputs=start, names=data.names,
                                           grid=False),
                       grid and (lambda: _grid(cols, grid, model, titles)))
    return {**info, "n": len(y), "kind": model.kind, "strength": strength, "level": round(level, 6),
            "level_unit": unit, "nfe": nfe, "gamma": gamma, "strokes": strokes, "mask": mask, "seed": seed,
            "checkpoint": str(model.path), "mean_change": _norm_mean(y - start),
            "seconds": round(seconds, 3), "items_per_second": round(len(y) / max(seconds, 1e-9), 1)}


def restore_job(model, image: str, out: str, *, task: str, factor: int, strength: float, mask: str | None,
                nfe: int, gamma: float, grid: Path | None, seed: int, batch: int, device, force: bool,
                report: Progress) -> dict:
    """`ctmtool translate edit --restore TASK`: zero-shot restoration (`ctmtool.core.zero_shot`) of the images
    of `image` into `out`; returns the summary."""
    level = editing_level(model, strength)
    plan = plan_restoration(model, level, task, factor=factor, nfe=nfe, gamma=gamma, batch=batch)
    out_path = check_out(out, model.is_image, force)
    with input_path(image) as staged:
        data = inputs.load_inputs(staged, model, log=report.log)
    y = data.x
    check_out(out, model.is_image, force, one_png_for=len(y))
    hole = inputs.load_mask(mask, model, len(y), report.log) if mask is not None else (
        centre_hole(tuple(model.data_shape)) if task == "inpaint" else None)
    report.log(f"zero-shot {task} of {len(y)} images with {model.path} ({model.kind}), {nfe} jumps from "
               f"level {level:.4g}, gamma {gamma}")
    x, seconds = _timed(report, len(y), task, lambda adv: restore_items(
        model, y, task, plan, hole=hole, factor=factor, seed=seed, device=device, progress=adv))
    seen = observed(task, y, None if hole is None else hole.expand(len(y), -1, -1, -1), factor)
    info = _write_both(lambda: write_items(x, out_path, model.is_image, inputs=seen, names=data.names,
                                           grid=False),
                       grid and (lambda: _grid([y, seen, x], grid, model,
                                               ["input", "observed", f"restored ({task})"])))
    known = observed(task, x, None if hole is None else hole.expand(len(x), -1, -1, -1), factor)
    return {**info, "n": len(x), "kind": model.kind, "restore": task, "level": round(level, 6), "nfe": nfe,
            "gamma": gamma, "factor": factor if task == "superres" else None, "mask": mask, "seed": seed,
            "checkpoint": str(model.path), "known_part_error": round(float((known - seen).abs().max()), 6),
            "seconds": round(seconds, 3), "items_per_second": round(len(x) / max(seconds, 1e-9), 1)}


def manipulation_job(model, image: str, out: str, *, to_class: int, from_class: int | None, encode_steps: int,
                     nfe: int, grid: Path | None, batch: int, device, force: bool, report: Progress) -> dict:
    """`ctmtool translate edit --to-class B`: latent manipulation (`ctmtool.core.translate.manipulate`) of the
    items of `image` (of class `from_class`, else their class sub-folders) into class `to_class`; the summary
    reports the round-trip error (the unmoved latent decoded against the input)."""
    check_manipulation(model, to_class, encode_steps)
    plan = plan_translation(model, nfe=nfe, gamma=0.0, batch=batch)
    out_path = check_out(out, model.is_image, force)
    with input_path(image) as staged:
        data = inputs.load_inputs(staged, model, log=report.log)
    x = data.x
    check_out(out, model.is_image, force, one_png_for=len(x))
    a = source_class_labels(model, len(x), from_class, data.labels, class_names=data.class_names)
    b = torch.full_like(a, to_class)
    report.log(f"moving {len(x)} items to class {to_class} with {model.path} (coupling "
               f"{model.preset.gctm.coupling}): encode {encode_steps} Heun steps, decode NFE {nfe}")
    res, seconds = _timed(report, len(x), "manipulate", lambda adv: manipulate_items(
        model, x, a, b, plan, encode_steps=encode_steps, device=device, progress=adv))
    y = res["output"]
    cols = [x, res["latent"], res["moved"], y]
    titles = ["input", "latent x1 (encoded)", f"moved to class {to_class}", "decoded"]
    info = _write_both(lambda: write_items(y, out_path, model.is_image, inputs=x, names=data.names,
                                           grid=False),
                       grid and (lambda: _grid(cols, grid, model, titles)))
    rmse = (res["round_trip"] - x).flatten(1).square().mean(1).sqrt()
    return {**info, "n": len(y), "to_class": to_class,
            "from_class": from_class if from_class is not None else "from the inputs",
            "moved_items": int((a != b).sum()), "encode_steps": encode_steps,
            "encode_nfe": 2 * encode_steps + 1,
            "nfe": nfe, "coupling": model.preset.gctm.coupling, "checkpoint": str(model.path),
            "round_trip_rmse": round(float(rmse.mean()), 6),
            "latent_shift": _norm_mean(res["moved"] - res["latent"]),
            "mean_change": _norm_mean(y - x),
            "seconds": round(seconds, 3), "items_per_second": round(len(y) / max(seconds, 1e-9), 1)}
