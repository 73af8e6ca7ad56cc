"""Presets: pydantic models of every setting, loading `ctmtool/presets/*.toml`, and `--set key=value`
overrides.

A preset is one TOML file; every section below is a model with `extra="forbid"`, so an unknown key, a
wrong type or an out-of-range value is refused with a message naming the key, the value and what is
allowed. `load_preset(name_or_path, overrides)` returns a fully resolved, validated `Preset`.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import tomllib
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ctmtool.errors import UserError

INT64 = 2**63  # integers are stored as 64-bit values (tensors, seeds, JSON headers): |value| < 2^63

Rate = Annotated[float, Field(ge=0, lt=1)]  # a moment decay or EMA rate: [0, 1)


def _int64(value: Any, key: str) -> Any:
    """Integers (also inside lists) beyond 64 bits are refused: no setting means them and torch cannot hold
    them."""
    if isinstance(value, int) and not isinstance(value, bool) and not -INT64 <= value < INT64:
        raise ValueError(f"{key} is an integer of {value.bit_length()} bits; at most 64 bits (|value| < "
                         "2^63)")
    if isinstance(value, list | tuple):
        for v in value:
            _int64(v, key)
    return value
# The presets ship inside the package (package data, read with importlib.resources); $CTMTOOL_PRESETS adds
# folders (os.pathsep-separated) whose presets come first and shadow packaged ones of the same name.
PACKAGED_PRESETS: Traversable = resources.files("ctmtool") / "presets"
PRESETS_ENV = "CTMTOOL_PRESETS"


class Strict(BaseModel):
    """Every settings section: unknown keys refused, NaN and infinities refused in every float, integers
    64-bit."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="after")
    @classmethod
    def _in_64_bits(cls, value: Any, info) -> Any:
        return _int64(value, info.field_name)


# --------------------------------------------------------------------------------------------------
# Data


class GMMConfig(Strict):
    """A Gaussian mixture with isotropic components: exact density and denoiser at every noise level."""

    means: list[list[float]] = Field(min_length=1)  # component means, each of the data dimension
    weights: list[float] = Field(min_length=1)  # mixture weights (normalised on use)
    std: float = Field(gt=0)  # per-dimension standard deviation of every component

    @model_validator(mode="after")
    def _consistent(self) -> GMMConfig:
        if len(self.weights) != len(self.means):
            raise ValueError(f"weights has {len(self.weights)} entries but means has {len(self.means)}")
        dims = {len(m) for m in self.means}
        if len(dims) != 1:
            raise ValueError(f"all means must have the same dimension, got {sorted(dims)}")
        if any(w < 0 for w in self.weights) or sum(self.weights) <= 0:
            raise ValueError("weights must be non-negative with a positive sum")
        return self


class DataConfig(Strict):
    source: Literal["toy", "digits", "folder", "cifar10", "npz", "imagenet64"] = "toy"  # which data source
    toy: Literal["gmm", "moons", "checkerboard", "swissroll"] = "gmm"  # 2-D distribution for source=toy
    gmm: GMMConfig | None = None  # the mixture for toy="gmm"
    n: int = Field(20000, ge=1)  # points drawn for 2-D toy data
    path: str | None = None  # folder, .zip, .npz or cifar-10-python.tar.gz for file sources
    split: Literal["train", "test"] = "train"  # CIFAR-10 split
    resolution: int | None = Field(None, ge=1)  # expected image size (refused if the files differ)
    channels: int | None = Field(None, ge=1)  # expected channel count (1 grey, 3 RGB)
    xflip: bool = False  # random horizontal flips during training
    seed: int = 0  # seed for drawing toy data
    hint: str = ""  # how to get the data (what to download, where it goes), shown when data.path is missing

    @model_validator(mode="after")
    def _needs(self) -> DataConfig:
        if self.source == "toy" and self.toy == "gmm" and self.gmm is None:
            raise ValueError("data.toy = 'gmm' needs a [data.gmm] table with means, weights and std")
        return self


# --------------------------------------------------------------------------------------------------
# Networks


class MLPConfig(Strict):
    hidden: int = Field(256, ge=8)  # width of each hidden layer
    depth: int = Field(4, ge=1)  # number of hidden layers
    emb: int = Field(64, ge=4)  # noise-embedding width
    # noise labels (ln(sigma)/4) are multiplied by this before the sinusoids
    noise_scale: float = Field(100.0, gt=0)


class UNetConfig(Strict):
    """EDM's SongUNet (DDPM++ / NCSN++) with an optional second noise input s."""

    model_channels: int = Field(128, ge=8)  # base channel count
    channel_mult: list[int] = Field(default_factory=lambda: [2, 2, 2], min_length=1)  # per resolution
    channel_mult_emb: int = Field(4, ge=1)  # embedding width = model_channels * this
    channel_mult_noise: int = Field(1, ge=1)  # noise-embedding width multiplier (2 for NCSN++)
    num_blocks: int = Field(4, ge=1)  # residual blocks per resolution
    attn_resolutions: list[int] = Field(default_factory=lambda: [16])  # resolutions with self-attention
    dropout: float = Field(0.13, ge=0, lt=1)  # dropout probability inside blocks
    embedding_type: Literal["positional", "fourier"] = "positional"  # DDPM++ / NCSN++
    encoder_type: Literal["standard", "residual"] = "standard"  # NCSN++ uses residual
    decoder_type: Literal["standard", "skip"] = "standard"  # NCSN++ uses skip
    resample_filter: list[int] = Field(default_factory=lambda: [1, 1])  # [1,1] DDPM++, [1,3,3,1] NCSN++
    label_dropout: float = Field(0.0, ge=0, lt=1)  # class-label dropout (classifier-free guidance)
    augment_dim: int = Field(0, ge=0)  # augmentation-label input width (9 in EDM's CIFAR-10 pickles)
    # conditional CTM: add the class embedding to the s-embedding too (ctm-cifar10 networks.py)
    s_label: bool = True


class ADMConfig(Strict):
    """OpenAI's ADM U-Net (guided-diffusion / consistency-models) with Sony's CTM s-branch (nets/adm.py)."""

    model_channels: int = Field(192, ge=8)  # base channel count
    channel_mult: list[int] = Field(default_factory=lambda: [1, 2, 3, 4], min_length=1)  # per resolution
    num_res_blocks: int = Field(3, ge=1)  # residual blocks per resolution
    # resolutions with self-attention
    attn_resolutions: list[int] = Field(default_factory=lambda: [32, 16, 8])
    head_channels: int = Field(64, ge=-1)  # width per attention head (-1: use num_heads)
    num_heads: int = Field(4, ge=1)  # heads when head_channels = -1
    dropout: float = Field(0.0, ge=0, lt=1)  # dropout probability inside the residual blocks
    scale_shift: bool = True  # FiLM conditioning (use_scale_shift_norm)
    resblock_updown: bool = True  # residual blocks for up/downsampling
    # qkv channel split: flash-attention checkpoints use "three"
    qkv_order: Literal["three", "heads"] = "three"
    # noise labels ln(sigma)/4 times this enter the embedding (EDM's ADM: 1)
    time_scale: float = Field(1000.0, gt=0)

    @field_validator("head_channels")
    @classmethod
    def _head(cls, v: int) -> int:
        if v == 0:
            raise ValueError("head_channels must be a positive head width, or -1 to use num_heads")
        return v


class NetConfig(Strict):
    kind: Literal["mlp", "unet", "adm"] = "mlp"  # network family
    mlp: MLPConfig = Field(default_factory=MLPConfig)
    unet: UNetConfig = Field(default_factory=UNetConfig)
    adm: ADMConfig = Field(default_factory=ADMConfig)
    label_dim: int = Field(0, ge=0)  # number of classes for a conditional model (0 = unconditional)


# --------------------------------------------------------------------------------------------------
# Diffusion, training, sampling


class DiffusionConfig(Strict):
    sigma_min: float = Field(0.002, gt=0)  # smallest noise level
    sigma_max: float = Field(80.0, gt=0)  # largest noise level
    rho: float = Field(7.0, gt=0)  # Karras grid curvature
    sigma_data: float = Field(0.5, gt=0)  # data standard deviation used by the preconditioning
    p_mean: float = -1.2  # log-normal training noise: mean of ln(sigma)
    p_std: float = Field(1.2, gt=0)  # log-normal training noise: std of ln(sigma)
    precond: Literal["edm", "vp", "ve"] = "edm"  # teacher preconditioning (vp/ve for imported EDM pickles)

    @model_validator(mode="after")
    def _order(self) -> DiffusionConfig:
        if self.sigma_min >= self.sigma_max:
            raise ValueError(f"sigma_min ({self.sigma_min}) must be below sigma_max ({self.sigma_max})")
        return self


class TrainConfig(Strict):
    batch: int = Field(256, ge=1)  # global batch per optimiser step
    micro_batch: int | None = Field(None, ge=1)  # per-pass batch; batch/micro_batch passes are accumulated
    lr: float = Field(1e-3, gt=0)  # learning rate
    optimizer: Literal["adam", "radam"] = "adam"  # RAdam is the CTM paper's choice
    betas: tuple[Rate, Rate] = (0.9, 0.999)  # Adam betas, each in [0, 1)
    weight_decay: float = Field(0.0, ge=0)  # decoupled weight decay
    lr_rampup_kimg: float = Field(0.0, ge=0)  # linear warm-up of the learning rate
    lr_decay: Literal["none", "cosine"] = "none"  # cosine decay to 0 over the run (by images or minutes)
    grad_clip: float | None = Field(None, gt=0)  # clip the global gradient norm (None: off)
    ema: float = Field(0.999, ge=0, lt=1)  # EMA rate per optimiser step of the sampling network
    kimg: float = Field(100.0, gt=0)  # duration in thousands of training images
    minutes: float | None = Field(None, gt=0)  # wall-clock duration (stops at whichever comes first)
    ckpt_every_kimg: float = Field(50.0, gt=0)  # checkpoint period
    # also checkpoint after this much training time (None: off)
    ckpt_every_minutes: float | None = Field(5.0, gt=0)
    snapshot_every_kimg: float | None = Field(None, gt=0)  # sample-grid period (None: end only)
    eval_every_kimg: float | None = Field(None, gt=0)  # quality-metric period (None: off)
    keep_checkpoints: int = Field(3, ge=1)  # rotation: older periodic checkpoints are deleted
    log_every_kimg: float = Field(1.0, gt=0)  # progress-line period
    seed: int = 0  # seed for initialisation and data order
    precision: Literal["fp32", "bf16"] = "bf16"  # bf16 autocast on CUDA; the CPU always runs fp32
    compile: bool = False  # torch.compile the network on CUDA

    @model_validator(mode="after")
    def _accum(self) -> TrainConfig:
        if self.micro_batch is not None and self.batch % self.micro_batch != 0:
            raise ValueError(f"batch ({self.batch}) must be a multiple of micro_batch ({self.micro_batch})")
        return self


class CTMConfig(Strict):
    """The CTM objective (paper Sec. 4)."""

    grid: int = Field(18, ge=2)  # N, Karras grid points for (t, u, s)
    max_steps: int = Field(17, ge=1)  # K, most teacher Heun steps from t to u
    # d(x_est, x_tgt); lpips_piq is the paper's
    distance: Literal["pseudo_huber", "l2", "lpips", "lpips_piq", "feature"] = "pseudo_huber"
    huber_c: float | None = Field(None, gt=0)  # pseudo-Huber c (None: 0.00054 * sqrt(D))
    # lpips: the weights file; lpips_piq: folder of its two files (None: torch hub cache)
    lpips_weights: str | None = None
    dsm_weight: float | Literal["adaptive"] = "adaptive"  # lambda_DSM: number or adaptive (clamped 0..1e4)
    dsm_high_noise_fraction: float = Field(0.5, ge=0, le=1)  # share of DSM sigmas from the grid's high end
    # DSM sigmas; halflognormal is the paper's
    dsm_sampler: Literal["grid_high", "halflognormal"] = "grid_high"
    # CTM's s: uniform over u..sigma_min; sigma_min: consistency distillation (CD)
    s_sampler: Literal["uniform", "sigma_min"] = "uniform"
    target_ema: float = Field(0.999, ge=0, lt=1)  # EMA rate of the target (stop-gradient) network
    eval_emas: list[Rate] = Field(default_factory=lambda: [0.999, 0.9999])  # EMAs saved for sampling
    # False: fixed rates from step 0 as the official code (ctm-cifar10 train_util.py 282-284); True: min(r,
    # (1+n)/(10+n))
    eval_ema_warmup: bool = False
    teacher: Literal["network", "analytic", "self"] = "network"  # who solves t -> u ("self": no teacher)
    # teacher = "self": jump = the target's own G(x_t, t, u) (official self_learn); heun: Heun on its denoiser
    self_solver: Literal["jump", "heun"] = "jump"
    solver: Literal["heun", "euler"] = "heun"  # teacher ODE steps
    # which published teacher this preset expects and where to get it (shown if --teacher is missing)
    teacher_hint: str = ""
    # matched: online passes share masks, target without dropout; official: target in train mode, every pass
    # its own masks
    dropout: Literal["matched", "official"] = "matched"
    # student coefficients: EDM's (the paper), or the teacher's scheme
    student_precond: Literal["edm", "teacher"] = "edm"

    @field_validator("eval_emas")
    @classmethod
    def _rates(cls, v: list[float]) -> list[float]:
        for r in v:
            if not 0 <= r < 1:
                raise ValueError(f"EMA rate {r} must be in [0, 1)")
        return v

    @model_validator(mode="after")
    def _k(self) -> CTMConfig:
        if self.max_steps > self.grid - 1:
            raise ValueError(f"max_steps ({self.max_steps}) must be at most grid - 1 ({self.grid - 1})")
        return self


class GANConfig(Strict):
    enabled: bool = False  # add the adversarial term (phase 2 of the recipe)
    weight: float | Literal["adaptive"] = "adaptive"  # lambda_GAN (adaptive: clamped 0.01..10)
    start_kimg: float = Field(0.0, ge=0)  # images seen before the GAN term switches on
    backbone: str | None = None  # TorchScript/torch feature network for the discriminator (None: train one)
    lr: float = Field(2e-4, gt=0)  # discriminator learning rate
    augment: list[Literal["color", "translation", "cutout"]] = Field(
        default_factory=lambda: ["color", "translation", "cutout"]
    )  # DiffAugment policies
    channels: int = Field(64, ge=8)  # width of the discriminator heads
    # projected: the paper's Projected GAN (timm DeiT + EfficientNet)
    discriminator: Literal["scratch", "projected"] = "scratch"
    # projected: folder of <timm name>.safetensors (None: the Hugging Face cache)
    feature_weights: str | None = None
    betas: tuple[Rate, Rate] = (0.9, 0.999)  # discriminator Adam/RAdam betas (the paper: 0.5, 0.9)
    # DiffAugment cutout size as a fraction of the side (the paper: 0.2)
    cutout: float = Field(0.5, gt=0, le=1)
    # g_learning_period: 1 steps G and D every step; p > 1: G on steps k % p == 0, D otherwise
    g_period: int = Field(1, ge=1)


class SampleConfig(Strict):
    nfe: int = Field(1, ge=1)  # CTM network evaluations (gamma-sampling steps)
    gamma: float = Field(0.0, ge=0, le=1)  # 0 deterministic, 1 CM-style multistep
    sigmas: list[float] | None = None  # explicit decreasing schedule (overrides nfe)
    solver: Literal["gamma", "heun", "euler"] = "gamma"  # gamma-sampling for CTMs; heun/euler for teachers
    steps: int = Field(18, ge=1)  # grid points for heun/euler (18 -> 35 NFE with Heun)
    batch: int = Field(256, ge=1)  # images per forward
    n: int = Field(64, ge=1)  # samples to draw
    seed: int = 0  # first per-image seed
    # per-image stream: EDM-equal latents, or Philox drawn on the device
    noise: Literal["edm", "philox"] = "edm"


class FIDConfig(Strict):
    features: str = "inception"  # "inception" or a TorchScript feature network path
    ref: str | None = None  # named reference, folder/zip/npz of images or a statistics file
    n: int = Field(50000, ge=2)  # samples generated when scoring a checkpoint


class GCTMConfig(Strict):
    """Generalised CTM between two distributions (GCTM paper, Kim et al. 2024b)."""

    coupling: str = "independent"  # a couplings.make_coupling spec: independent | ot | paired | latent | ...
    source_noise: float = Field(0.0, ge=0)  # std of Gaussian noise added to the source x1
    # Karras sigmas (diffusion.sigma_min/max/rho) mapped to t = sigma / (1 + sigma)
    grid: int = Field(18, ge=2)
    max_steps: int = Field(17, ge=1)  # most solver steps from t to u
    sinkhorn_reg: float = Field(0.01, gt=0)  # entropic regularisation for ot coupling
    sinkhorn_iters: int = Field(500, ge=1)  # Sinkhorn iterations per minibatch
    sinkhorn_normalize: Literal["spread", "mean", "none"] = "spread"  # cost normalisation before Sinkhorn
    paired_path: str | None = None  # folder of A/B images or side-by-side files for paired coupling
    paired_size: int | None = Field(None, ge=1)  # resize each half of a pair on load (64 for pix2pix)
    var0: float | None = Field(None, gt=0)  # override the estimated Var x0 (per dimension)
    var1: float | None = Field(None, gt=0)  # override the estimated Var x1
    cov01: float | None = None  # override the estimated Cov(x0, x1)
    dsm_times: Literal["lognormal", "uniform", "beta_3_1"] = "lognormal"  # how DSM training times are drawn
    # DSM times snapped up to this fine grid's points (the reference's disc_steps); 0: continuous
    dsm_grid: int = Field(1024, ge=0)
    # share of DSM times drawn from the training grid instead (0: the reference)
    dsm_grid_fraction: float = Field(0.0, ge=0, le=1)
    # (t, u, s): GCTM's s ~ 1 - t, t = lambda + (1 - lambda) t_s; or CTM's
    time_sampler: Literal["official", "ctm"] = "official"
    # lambda ~ Beta(a, b) of the official sampler (its --t_ctm_dists)
    t_ctm_beta: tuple[float, float] = (1.2, 2.0)
    # curriculum: the training grid's steps double every this many steps (--double_iter)
    double_every: int | None = Field(None, ge=1)
    source: DataConfig | None = None  # the source side's data for couplings dataset / dataset-ot (as [data])


class Preset(Strict):
    name: str = "custom"
    description: str = ""
    data: DataConfig = Field(default_factory=DataConfig)
    net: NetConfig = Field(default_factory=NetConfig)
    diffusion: DiffusionConfig = Field(default_factory=DiffusionConfig)
    teacher: TrainConfig = Field(default_factory=TrainConfig)
    distill: TrainConfig = Field(default_factory=lambda: TrainConfig(optimizer="radam", lr=4e-4))
    ctm: CTMConfig = Field(default_factory=CTMConfig)
    gan: GANConfig = Field(default_factory=GANConfig)
    sample: SampleConfig = Field(default_factory=SampleConfig)
    fid: FIDConfig = Field(default_factory=FIDConfig)
    gctm: GCTMConfig | None = None  # present only in translation presets


# --------------------------------------------------------------------------------------------------
# Loading and overrides


def preset_dirs() -> list[Traversable]:
    """Where named presets are looked up, first match wins: the folders of $CTMTOOL_PRESETS, then the
    package's."""
    extra = [Path(d).expanduser() for d in os.environ.get(PRESETS_ENV, "").split(os.pathsep) if d]
    return [*extra, PACKAGED_PRESETS]


def preset_dir() -> str:
    """The preset folders as one line (for listings and messages)."""
    return os.pathsep.join(str(d) for d in preset_dirs())


def _preset_files() -> dict[str, Traversable]:
    found: dict[str, Traversable] = {}
    for d in preset_dirs():
        if not d.is_dir():
            continue
        for f in sorted(d.iterdir(), key=lambda f: f.name):
            if f.name.endswith(".toml") and f.is_file():
                found.setdefault(f.name[: -len(".toml")], f)
    return found


def list_presets() -> list[str]:
    return sorted(_preset_files())


def parse_override(item: str) -> tuple[list[str], Any]:
    """Parse `a.b.c=value`; the value is read as TOML (numbers, booleans, lists, quoted strings), else a
    string."""
    if "=" not in item:
        raise UserError(f"override {item!r} has no '='; write it as key=value, e.g. teacher.batch=64")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise UserError(f"override {item!r} has an empty key; write it as section.key=value")
    raw = raw.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    except ValueError:  # an integer of more digits than Python converts (sys.get_int_max_str_digits)
        raise UserError(f"override {key}: the value has {len(raw)} digits; no setting takes a number that "
                        "large") from None
    return key.split("."), value


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    for item in overrides:
        path, value = parse_override(item)
        node = raw
        for part in path[:-1]:
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise UserError(f"override {item!r}: {'.'.join(path[:-1])} is a value, not a section")
            node = nxt
        node[path[-1]] = value
    return raw


def _section_fields(loc: tuple) -> list[str]:
    """Field names of the model at `loc` inside a Preset (for 'allowed keys' in messages)."""
    model: Any = Preset
    for part in loc:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        ann = field.annotation
        model = next((a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type)
                      and issubclass(a, BaseModel)), None)
        if model is None:
            return []
    return list(model.model_fields)


def shown_value(value: Any, limit: int = 80) -> str:
    """A value for a message: its repr, cut to `limit` characters; a huge integer by its size (never
    rendered)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"<integer of {value.bit_length()} bits>"
    if isinstance(value, list | tuple) and len(value) > 16:
        return f"<{type(value).__name__} of {len(value)} items>"
    try:
        text = repr(value)
    except ValueError:
        return f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def format_validation_error(err: ValidationError, origin: str) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            allowed = _section_fields(e["loc"][:-1])
            close = difflib.get_close_matches(str(e["loc"][-1]), allowed, n=1)
            msg = (f"unknown key{f' (did you mean {close[0]!r}?)' if close else ''}; allowed here: "
                   f"{', '.join(allowed)}")
        value = e.get("input")
        shown = "" if e["type"] == "missing" or isinstance(value, dict) else f" = {shown_value(value)}"
        parts.append(f"{loc}{shown}: {msg}")
    return f"invalid preset {origin}: " + "; ".join(parts)


def resolve_preset_path(name_or_path: str) -> Traversable:
    p = Path(name_or_path)
    if p.suffix == ".toml" or p.exists():
        if not p.is_file():
            raise UserError(f"preset file {p} does not exist; give an existing .toml or a name from `ctmtool "
                            "presets`")
        return p
    found = _preset_files()
    if name_or_path not in found:
        known = (", ".join(sorted(found))
                 or f"(none found in {preset_dir()}; reinstall ctmtool or set ${PRESETS_ENV})")
        raise UserError(f"unknown preset {name_or_path!r}; known presets: {known}")
    return found[name_or_path]


def preset_from_dict(raw: dict, origin: str = "(dict)") -> Preset:
    try:
        return Preset.model_validate(raw)
    except ValidationError as err:
        raise UserError(format_validation_error(err, origin)) from None


def load_preset(name_or_path: str, overrides: list[str] | None = None) -> Preset:
    """Load a preset by name (see `preset_dirs`) or path, apply `key=value` overrides, validate."""
    path = resolve_preset_path(name_or_path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise UserError(f"preset {path} is not UTF-8 text (byte {err.start}: {err.reason}); give a TOML text "
                        "file") from None
    except tomllib.TOMLDecodeError as err:
        raise UserError(f"preset {path} is not valid TOML: {err}") from None
    except ValueError as err:  # an integer of more digits than Python converts
        raise UserError(f"preset {path} holds a number no setting takes ({err}); fix the file") from None
    raw.setdefault("name", path.name.removesuffix(".toml"))
    apply_overrides(raw, overrides or [])
    return preset_from_dict(raw, f"{path.name}" + (f" with --set {' '.join(overrides)}" if overrides else ""))


def override_preset(preset: Preset, overrides: list[str]) -> Preset:
    """Apply `key=value` overrides to an already resolved preset (e.g. one read from a checkpoint)."""
    if not overrides:
        return preset
    raw = apply_overrides(preset.model_dump(mode="json"), overrides)
    return preset_from_dict(raw, f"{preset.name} with --set {' '.join(overrides)}")


def preset_to_toml(preset: Preset) -> str:
    """Render a resolved preset as TOML (used by `ctmtool presets show`)."""
    return _dump_toml(preset.model_dump(mode="json", exclude_none=True))


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        if math.isinf(v) or math.isnan(v):
            return "inf" if v > 0 else ("-inf" if v < 0 else "nan")
        return repr(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a valid TOML basic string (escapes included)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    raise TypeError(type(v))


def _dump_toml(d: dict, prefix: str = "") -> str:
    lines, tables = [], []
    for k, v in d.items():
        if isinstance(v, dict):
            tables.append((k, v))
        else:
            lines.append(f"{k} = {_fmt(v)}")
    out = "\n".join(lines)
    for k, v in tables:
        name = f"{prefix}{k}"
        body = _dump_toml(v, prefix=f"{name}.")
        out += f"\n\n[{name}]\n{body}" if out else f"[{name}]\n{body}"
    return out.strip() + "\n"
