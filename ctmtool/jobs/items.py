"""Running a model over many items, batch by batch, with per-item seeds: sampling, translation and editing.

Sampling takes a `SamplingPlan` settled once by `ctmtool.jobs.plan.plan_sampling`.
`draw`, `translate_items` and `edit_items` collect results on the CPU; item i always uses seed + i, so
the batch size never changes a result.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ctmtool.core import distributed as ddp
from ctmtool.core.editing import sdedit, stroke_edit
from ctmtool.core.noise import ImageNoise
from ctmtool.core.sampling import SamplingPlan, distributed_generate, generate
from ctmtool.core.translate import manipulate, translate
from ctmtool.core.zero_shot import restore
from ctmtool.errors import UserError

Advance = Callable[[int], None] | None


def available_memory() -> int | None:
    """Bytes of memory free for new allocations on this machine (None when the system does not say)."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(n: int, shape: tuple[int, ...], what: str = "`n`", copies: int = 2) -> None:
    """Refuse to hold `n` float32 items of `shape` (`copies` times) when that exceeds the free memory."""
    need = n * math.prod(shape) * 4 * copies
    free = available_memory()
    if free is not None and need > 0.8 * free:
        raise UserError(f"{n} items of shape {tuple(shape)} need about {need / 2**30:.1f} GiB, more than the "
                        f"{free / 2**30:.1f} GiB of free memory; lower {what}")


def join_process_group(device: torch.device) -> torch.device:
    """Under torchrun: join its process group (`ctmtool.core.distributed.setup`) and return this rank's
    device; the device unchanged without torchrun. A torch without torch.distributed, or a group that cannot
    be joined, is a UserError."""
    try:
        return ddp.setup(device)
    except ValueError as err:
        raise UserError(str(err)) from None


def _out_of_memory(err: BaseException) -> UserError:
    return UserError(f"out of memory ({type(err).__name__}); lower `batch` (items per forward pass)")


def draw(model, n: int, plan: SamplingPlan, *, seed: int = 0, device: torch.device | str = "cpu",
         progress: Advance = None, program=None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`n` >= 1 samples (and labels, None for unconditional models) on the CPU; sample i uses seed + i;
    `program`: a traced solve of full batches (`ctmtool.core.fastpath`)."""
    check_memory(n, model.data_shape)
    xs, ys = [], []
    try:
        for x, y in generate(model, n, plan, seed=seed, device=device, progress=progress, program=program):
            xs.append(x.cpu())
            ys.append(None if y is None else y.cpu())
    except (torch.OutOfMemoryError, MemoryError) as err:
        raise _out_of_memory(err) from None
    labels = None if ys[0] is None else torch.cat(ys)
    return torch.cat(xs), labels


@dataclass
class Samples:
    x: torch.Tensor  # (n, *data_shape) on the CPU; images in [-1, 1]
    labels: torch.Tensor | None  # class labels of a conditional model
    n: int
    seed: int
    plan: SamplingPlan  # how they were drawn (`ctmtool.jobs.plan.plan_sampling`)
    seconds: float

    @property
    def nfe(self) -> int:
        """Network evaluations per sample."""
        return self.plan.nfe

    @property
    def schedule(self) -> list[float]:
        """The noise levels visited."""
        return [round(float(v), 6) for v in self.plan.schedule]

    def summary(self) -> dict:
        p = self.plan
        return {"n": self.n, "seed": self.seed, "solver": p.solver, "nfe": p.nfe,
                "gamma": p.gamma if p.solver == "gamma" else None, "schedule": self.schedule,
                "class": p.class_label, "seconds": round(self.seconds, 3),
                "samples_per_second": round(self.n / max(self.seconds, 1e-9), 1)}


def sample(model, plan: SamplingPlan, *, n: int | None = None, seed: int | None = None,
           device: torch.device | str = "cpu", progress: Advance = None, distributed: bool = False,
           fast: bool = False, batch_given: bool = True, log=None) -> Samples | None:
    """Draw samples with `plan` (`ctmtool.jobs.plan.plan_sampling`); n and seed default to the preset's
    [sample].

    distributed: under torchrun every rank draws its own index range and rank 0 gets all samples (others
    None). fast: on the CPU, `ctmtool.core.fastpath.fast_plan` picks a cache-sized batch (unless
    `batch_given`) and a traced solve; `log` receives the choice in one line."""
    s = model.preset.sample
    n, seed = s.n if n is None else n, s.seed if seed is None else seed
    if n < 1:
        raise UserError(f"`n` and `batch` must be at least 1 (got {n} and {plan.batch})")
    t0 = time.time()
    if distributed:
        check_memory(n, model.data_shape)
        x, labels = distributed_generate(model, n, plan, seed, device), None  # labels are not gathered
        if x is None:
            return None
        x = x.cpu()
    else:
        program = None
        if fast or log is not None:  # the choice is printed either way
            from ctmtool.core.fastpath import fast_plan

            plan, program = fast_plan(model, plan, device, n, batch_given, fast, log)
        x, labels = draw(model, n, plan, seed=seed, device=device, progress=progress, program=program)
    return Samples(x, labels, n, seed, plan, time.time() - t0)


def _batched(fn, x: torch.Tensor, model, seed: int, batch: int, device, progress: Advance) -> torch.Tensor:
    """fn(x_batch, noise, lo, hi) over batches of x; item i's noise stream is seeded with seed + i."""
    if len(x) < 1 or batch < 1:
        raise UserError(f"nothing to do: {len(x)} items, `batch` {batch}")
    outs = []
    try:
        for lo in range(0, len(x), batch):
            hi = min(len(x), lo + batch)
            noise = ImageNoise(list(range(seed + lo, seed + hi)), model.data_shape, device)
            outs.append(fn(x[lo:hi].to(device), noise, lo, hi).cpu())
            if progress is not None:
                progress(hi - lo)
    except (torch.OutOfMemoryError, MemoryError) as err:
        raise _out_of_memory(err) from None
    return check_finite(torch.cat(outs), "the model's outputs", "the checkpoint's weights may hold NaN/inf")


def translate_items(model, x: torch.Tensor, plan: SamplingPlan, *, seed: int = 0,
                    device: torch.device | str = "cpu", progress: Advance = None,
                    labels: torch.Tensor | None = None) -> torch.Tensor:
    """GCTM translation of every row of x along `plan` (`plan_translation`; GCTM paper, Sec. 4: one jump
    G(x1, 1, 0) when nfe = 1), `plan.batch` rows at a time; `labels`: class labels per row for a
    class-conditional model."""
    return _batched(lambda xb, noise, lo, hi: translate(
        model, xb, plan, noise=noise, labels=None if labels is None else labels[lo:hi].to(xb.device)),
        x, model, seed, plan.batch, device, progress)


def class_labels(model, n: int, class_label: int | None,
                 data_labels: torch.Tensor | None) -> torch.Tensor | None:
    """Labels for a class-conditional model: `class_label` for every item, else the inputs' own (class
    sub-folders); None for an unconditional model (where `class_label` is refused)."""
    if not model.label_dim:
        if class_label is not None and getattr(model.net, "source_classes", 0):
            raise UserError(f"`class` {class_label}: the classes of {model.path or 'the model'} (coupling "
                            "'latent') are its source's Gaussians, not a network input; move images between "
                            "them with `ctmtool translate edit --to-class`")
        if class_label is not None:
            raise UserError(f"`class` {class_label}: {model.path or 'the model'} is not class-conditional; "
                            "drop `class`")
        return None
    missing = (f"{model.path or 'the model'} is class-conditional ({model.label_dim} classes): give "
               "`class` K, or inputs in class sub-folders")
    return _labels_in_range(n, model.label_dim, class_label, data_labels, "class", missing)


def _labels_in_range(n: int, k: int, class_label: int | None, data_labels: torch.Tensor | None, option: str,
                     missing: str) -> torch.Tensor:
    """`class_label` for n items, else `data_labels`, each checked against k classes; `missing`: the error
    when there are neither."""
    if class_label is not None:
        if not 0 <= class_label < k:
            raise UserError(f"`{option}` {class_label} is outside the model's {k} classes (0..{k - 1})")
        return torch.full((n,), class_label, dtype=torch.long)
    if data_labels is None:
        raise UserError(missing)
    if int(data_labels.max()) >= k:
        raise UserError(f"the inputs have {int(data_labels.max()) + 1} classes but the model {k}; "
                        f"give `{option}` K")
    return data_labels.long()


def source_class_labels(model, n: int, class_label: int | None, data_labels: torch.Tensor | None,
                        option: str = "from_class", class_names: list[str] | None = None) -> torch.Tensor:
    """The classes of n inputs among the model's source classes (`latent` coupling): `class_label` for every
    item, else the inputs' own (class sub-folders, an npz's `labels`); sub-folders named by numbers give those
    numbers (3/ and 7/ are classes 3 and 7, not 0 and 1)."""
    k = model.net.source_classes
    numbered = bool(class_names) and all(c.isdigit() for c in class_names)
    if class_label is None and data_labels is not None and numbered:
        data_labels = torch.tensor([int(c) for c in class_names], dtype=torch.long)[data_labels.long()]
    missing = (f"the inputs carry no classes: give `{option}` K (the class they show), or inputs in class "
               "sub-folders (0/, 1/, ...)")
    return _labels_in_range(n, k, class_label, data_labels, option, missing)


def manipulate_items(model, x: torch.Tensor, from_labels: torch.Tensor, to_labels: torch.Tensor,
                     plan: SamplingPlan, *, encode_steps: int = 18, device: torch.device | str = "cpu",
                     progress: Advance = None) -> dict[str, torch.Tensor]:
    """Latent manipulation (`ctmtool.core.translate.manipulate`) of every row of x, `plan.batch` rows at a
    time: {latent, moved, output, round_trip} on the CPU (round_trip: the unmoved latent decoded, for the
    error of encoding and decoding)."""
    def one(xb, noise, lo, hi):
        a, b = from_labels[lo:hi].to(xb.device), to_labels[lo:hi].to(xb.device)
        x1, moved, out = manipulate(model, xb, a, b, plan, encode_steps)
        back = translate(model, x1, plan)
        return torch.stack([x1, moved, out, back], 1)

    y = _batched(one, x, model, 0, plan.batch, device, progress)
    return dict(zip(("latent", "moved", "output", "round_trip"), y.unbind(1), strict=True))


def restore_items(model, y: torch.Tensor, task: str, plan: SamplingPlan, *, hole: torch.Tensor | None = None,
                  factor: int = 8, seed: int = 0, device: torch.device | str = "cpu",
                  progress: Advance = None) -> torch.Tensor:
    """Zero-shot restoration (`ctmtool.core.zero_shot.restore`) of every row of y along `plan`
    (`plan_restoration`), `plan.batch` rows at a time; item i's noise from seed + i."""
    def one(yb, noise, lo, hi):
        hb = None if hole is None else (hole if len(hole) == 1 else hole[lo:hi]).to(yb.device)
        return restore(model, yb, task, plan, noise, hole=hb, factor=factor)

    return _batched(one, y, model, seed, plan.batch, device, progress)


def edit_items(model, x: torch.Tensor, level: float, plan: SamplingPlan, *,
               strokes: torch.Tensor | None = None, mask: torch.Tensor | None = None,
               keep_unmasked: bool = False, seed: int = 0, device: torch.device | str = "cpu",
               progress: Advance = None) -> torch.Tensor:
    """SDEdit (Meng et al. 2022) of every row of x from `level` along `plan` (`editing_level`,
    `plan_editing`), or stroke editing when `strokes` are given."""
    def one(xb, noise, lo, hi):
        if strokes is None:
            return sdedit(model, xb, level, plan, noise=noise)
        mb = None if mask is None else mask[lo:hi].to(xb.device)
        return stroke_edit(model, xb, strokes[lo:hi].to(xb.device), mb, level, plan, noise=noise,
                           keep_unmasked=keep_unmasked)

    return _batched(one, x, model, seed, plan.batch, device, progress)


def check_finite(x: torch.Tensor, what: str, fix: str) -> torch.Tensor:
    """Refuse NaN or infinite values, naming where they are."""
    if x.is_floating_point() and not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x.flatten(1) if x.ndim > 1 else x)).any(-1).sum()) if x.ndim > 1 else 1
        raise UserError(f"{what} hold NaN or infinite values (items with them: {bad}); {fix}")
    return x


def check_model_finite(model) -> None:
    """Refuse a model whose weights hold NaN or infinite values (an edited or damaged checkpoint)."""
    bad = [name for name, t in model.net.state_dict().items() if t.is_floating_point()
           and not torch.isfinite(t).all()]
    if bad:
        raise UserError(f"checkpoint {model.path} holds NaN or infinite weights ({bad[0]}"
                        f"{f' and {len(bad) - 1} more' if len(bad) > 1 else ''}); use another checkpoint")
