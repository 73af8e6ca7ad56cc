"""Checkpoints: one safetensors file holding every tensor group and, in its header, the resolved preset.

Layout: tensors are named `<group>/<name>` (groups such as `net`, `ema`, `ema_0.9999`, `target`,
`optim`, `disc`); the string header holds `format = ctmtool`, `format_version`, `kind` (teacher, ctm,
gctm), `preset` (JSON of the fully resolved preset), `data_shape`, and free-form JSON `meta` (training
progress, EMA rates, ...). A checkpoint alone is enough to rebuild its network and sample.

Writes are atomic: a temporary file in the same folder, fsync, then rename over the target, so a
crash leaves either the old file or the new one, never a torn one.

Checkpoints prove themselves: the header's `checksum` holds SHA-256 digests of the header's other entries and
of each tensor group (names, dtypes, shapes and bytes, in name order; `integrity.py`), checked on load for the
groups loaded, so flipped bytes or an edited `kind` are refused instead of sampled. Checkpoints written before
the checksum existed (no `checksum` entry) still load, unchecked.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ctmtool.config import Preset, preset_from_dict
from ctmtool.errors import UserError
from ctmtool.integrity import checksum_entry, verify_checksum

FORMAT = "ctmtool"
FORMAT_VERSION = "1"
KINDS = ("teacher", "ctm", "gctm")


@dataclass
class Checkpoint:
    kind: str  # teacher | ctm | gctm
    preset: Preset  # the fully resolved preset the network was built from
    data_shape: tuple[int, ...]  # (C, H, W) for images, (D,) for points
    groups: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # group -> state dict
    meta: dict = field(default_factory=dict)  # progress, EMA rates, anything JSON
    path: Path | None = None

    def state(self, group: str) -> dict[str, torch.Tensor]:
        if group not in self.groups:
            have = ", ".join(sorted(self.groups)) or "none"
            raise UserError(f"checkpoint {self.path} has no '{group}' weights (it has: {have})")
        return self.groups[group]


def atomic_write(path: str | Path, write) -> None:
    """Call write(tmp_path), then move tmp_path over path; the tmp file is removed on any failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_checkpoint(path: str | Path, ckpt: Checkpoint) -> Path:
    if ckpt.kind not in KINDS:
        raise ValueError(f"unknown checkpoint kind {ckpt.kind!r}")
    tensors = {}
    for group, state in ckpt.groups.items():
        if "/" in group:
            raise ValueError(f"group name {group!r} may not contain '/'")
        for name, t in state.items():
            tensors[f"{group}/{name}"] = t.detach().to("cpu").contiguous()
    header = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": ckpt.kind,
        "preset": ckpt.preset.model_dump_json(),
        "data_shape": json.dumps(list(ckpt.data_shape)),
        "meta": json.dumps(ckpt.meta),
    }
    tensors = _dedup(tensors)
    header["checksum"] = checksum_entry(header, tensors)
    try:
        atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=header))
    except (OSError, SafetensorError) as err:  # safetensors reports a full disk as SafetensorError
        why = getattr(err, "strerror", None) or str(err)
        raise UserError(f"could not write checkpoint {path}: {why}; check free space and permissions (the "
                        "previous checkpoint is untouched)") from None
    return Path(path)


def _dedup(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors that share memory; give each its own storage."""
    seen, out = set(), {}
    for k, t in tensors.items():
        ptr = (t.untyped_storage().data_ptr(), t.storage_offset(), t.numel()) if t.numel() else None
        out[k] = t.clone() if ptr in seen else t
        if ptr is not None:
            seen.add(ptr)
    return out


def _declares_ctmtool(path: Path) -> bool:
    """Whether the file starts with a whole safetensors header that names ctmtool (so any failure is
    damage)."""
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if not 0 < n < 100_000_000:
                return False
            head = json.loads(f.read(n))
        return head.get("__metadata__", {}).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def read_header(path: str | Path) -> dict[str, str]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; pass an existing .safetensors file")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        if _declares_ctmtool(path):
            raise UserError(f"{path} is a truncated or damaged ctmtool checkpoint ({err}); use an earlier "
                            "checkpoint") from None
        raise UserError(f"{path} is not a ctmtool checkpoint: not a readable safetensors file "
                        f"({err})") from None
    if header.get("format") != FORMAT:
        raise UserError(f"{path} is a safetensors file but not a ctmtool checkpoint (no 'format: ctmtool' "
                        "header); convert EDM pickles with `ctmtool teacher import`")
    if header.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{path} has checkpoint format version {header.get('format_version')!r}; "
                        f"this ctmtool reads version {FORMAT_VERSION}")
    return header


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu", groups: list[str] | None = None,
                    check_finite: bool = True) -> Checkpoint:
    """Read a checkpoint; `groups` limits which tensor groups are loaded (all by default). A header that does
    not parse or validate, and (with `check_finite`) a NaN or infinite value in a loaded tensor, are one-line
    errors."""
    path = Path(path)
    header = read_header(path)
    kind, preset, data_shape, meta = _parse_header(header, path)
    verify_checksum(path, header, groups)
    out: dict[str, dict[str, torch.Tensor]] = {}
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            for key in f.keys():
                group, _, name = key.partition("/")
                if groups is None or group in groups:
                    out.setdefault(group, {})[name] = f.get_tensor(key)
    except (SafetensorError, OSError, ValueError) as err:
        raise UserError(f"{path} is truncated or damaged ({err}); use an earlier checkpoint") from None
    if check_finite:
        _check_finite(out, path)
    return Checkpoint(kind=kind, preset=preset, data_shape=data_shape, groups=out, meta=meta, path=path)


def _parse_header(header: dict[str, str], path: Path) -> tuple[str, Preset, tuple[int, ...], dict]:
    """kind, preset, data_shape and meta from the string header, each checked (an edited header is
    refused)."""
    def damaged(why: str) -> UserError:
        return UserError(f"{path} has a damaged ctmtool header ({why}); it cannot be used: take an earlier "
                         "checkpoint or one written by ctmtool")

    try:
        kind = header["kind"]
        raw = {k: json.loads(header[k]) for k in ("preset", "data_shape")}
        meta = json.loads(header.get("meta", "{}"))
    except KeyError as err:
        raise damaged(f"no {err.args[0]!r} entry") from None
    except json.JSONDecodeError as err:
        raise damaged(f"JSON that does not parse: {err}") from None
    except ValueError:  # an integer of more digits than Python converts
        raise damaged("a number too large for any setting") from None
    if kind not in KINDS:
        raise damaged(f"kind {kind!r} is none of {', '.join(KINDS)}")
    shape = raw["data_shape"]
    if not (isinstance(shape, list) and shape and all(type(d) is int and d > 0 for d in shape)):
        raise damaged(f"data_shape {shape!r} is not a list of positive integers")
    if not isinstance(meta, dict):
        raise damaged(f"meta is {type(meta).__name__}, not an object")
    if not _finite_json(meta):
        raise damaged("meta holds NaN or infinite numbers (moments, label range or progress)")
    if not isinstance(raw["preset"], dict):
        raise damaged(f"preset is {type(raw['preset']).__name__}, not an object")
    try:
        preset = preset_from_dict(raw["preset"], "in its header")
    except UserError as err:
        raise damaged(str(err)) from None
    return kind, preset, tuple(shape), meta


def _finite_json(v) -> bool:
    if isinstance(v, float):
        return v == v and v not in (float("inf"), float("-inf"))
    if isinstance(v, dict):
        return all(_finite_json(x) for x in v.values())
    if isinstance(v, list):
        return all(_finite_json(x) for x in v)
    return True


def _check_finite(groups: dict[str, dict[str, torch.Tensor]], path: Path) -> None:
    """Weights or optimiser state holding NaN or inf come from a run that diverged: nothing built on them
    works."""
    bad = [f"{g}/{n}" for g, state in groups.items() for n, t in state.items()
           if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        more = f" and {len(bad) - 1} more tensors" if len(bad) > 1 else ""
        raise UserError(f"{path} holds NaN or infinite values in {bad[0]}{more}; the run that wrote it "
                        "diverged: use an earlier checkpoint")


def load_state(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint",
               allow_missing: tuple[str, ...] = (), check_only: bool = False) -> list[str]:
    """Load weights by name; shapes must match. Names in the module that start with one of
    `allow_missing` may be absent (they keep their fresh initialisation) and are returned. `check_only`
    compares names and shapes without loading (for a module built on the meta device)."""
    own = module.state_dict()
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
             if k in state and state[k].shape != v.shape]
    missing = [k for k in own if k not in state]
    fresh = [k for k in missing if any(k.startswith(p) or f".{p}" in k for p in allow_missing)]
    missing = [k for k in missing if k not in fresh]
    unexpected = [k for k in state if k not in own]
    if wrong or missing or unexpected:
        parts = []
        if wrong:
            parts.append(f"{len(wrong)} shape mismatches (e.g. {wrong[0]})")
        if missing:
            parts.append(f"{len(missing)} missing tensors (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected tensors (e.g. {unexpected[0]})")
        raise UserError(f"{source} does not fit this network: {'; '.join(parts)}; "
                        "was it written for another preset or network size?")
    if check_only:
        return fresh
    module.load_state_dict({k: v for k, v in state.items()}, strict=False)
    return fresh
