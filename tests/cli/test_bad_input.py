"""Issue 16 item 6: every bad input to every subcommand ends in one `error:` line and a non-zero exit code,
nothing half-written. The table in docs/bad-input.md is generated from CASES by this test and checked against
it (regenerate with CTMTOOL_WRITE_DOCS=1 after changing a message)."""

from __future__ import annotations

import errno
import io
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file
from typer.testing import CliRunner

from ctmtool.cli.app import app
from tests.cli.conftest import one_error_line, tiny_checkpoint, toy_points

DOC = Path(__file__).resolve().parents[2] / "docs" / "bad-input.md"
CTM, TEACHER, GCTM = "ctm.safetensors", "teacher.safetensors", "gctm.safetensors"
CPU = ["--device", "cpu"]

# (subcommand, what is wrong, arguments, exit code); paths are relative to the workspace `_workspace` builds
CASES = [
    ("presets", "unknown preset", ["presets", "nope"], 2),
    ("presets", "out-of-range override", ["presets", "toy", "--set", "teacher.batch=-1"], 2),
    ("teacher", "`--kimg 0` (an empty request)", ["teacher", "--kimg", "0"], 2),
    ("teacher", "`--resume` with `--auto-resume`", ["teacher", "--resume", "--auto-resume"], 2),
    ("teacher", "run directory that is a file", ["teacher", "--run-dir", "afile"], 2),
    ("teacher", "`--download` for a preset without CIFAR-10", ["teacher", "--download", "--run-dir", "r1"], 2),
    ("teacher", "CIFAR-10 preset, `--data` folder of 16x16 images",
     ["teacher", "--preset", "cifar10", "--data", "small", "--run-dir", "r2"], 2),
    ("teacher import", "missing pickle", ["teacher", "import", "missing.pkl"], 2),
    ("teacher import", "not a pickle", ["teacher", "import", "garbage.pkl", "-o", "g.safetensors"], 2),
    ("import", "an option the file's format does not take (ctm-cifar10 file)",
     ["import", "ctm10.pt", "--var0", "0.2", "-o", "i1.safetensors"], 2),
    ("import", "GCTM file without its moments", ["import", "gctm.pt", "-o", "i2.safetensors"], 2),
    ("distill", "`--kimg -1`", ["distill", "--kimg", "-1"], 2),
    ("distill", "missing teacher checkpoint", ["distill", "--teacher", "missing.safetensors", "--run-dir", "r3"], 2),
    ("distill", "`--resume` with `--auto-resume`", ["distill", "--resume", "--auto-resume"], 2),
    ("sample", "no checkpoint in the default run directory", ["sample", "--out", "-"], 2),
    ("sample", "`--n 0`", ["sample", "--ckpt", CTM, "--n", "0", "--out", "-"], 2),
    ("sample", "`--n abc` (a usage error)", ["sample", "--n", "abc"], 2),
    ("sample", "unknown output suffix", ["sample", "--ckpt", CTM, "--out", "x.txt"], 2),
    ("sample", "output below a file", ["sample", "--ckpt", CTM, "--out", "afile/x.npz"], 2),
    ("sample", "existing output without `--force`", ["sample", "--ckpt", CTM, "--out", "exists.npz"], 2),
    ("sample", "checkpoint with NaN weights", ["sample", "--ckpt", "nan.safetensors", "--out", "-"], 2),
    ("sample", "edited checkpoint header (preset)", ["sample", "--ckpt", "edited.safetensors", "--out", "-"], 2),
    ("sample", "edited checkpoint header (kind)", ["sample", "--ckpt", "edited-kind.safetensors", "--out", "-"], 2),
    ("sample", "edited checkpoint header (data_shape)", ["sample", "--ckpt", "edited-shape.safetensors", "--out", "-"],
     2),
    ("sample", "`--nfe` for a teacher", ["sample", "--ckpt", TEACHER, "--nfe", "1", "--out", "-"], 2),
    ("sample", "`--class` for an unconditional model", ["sample", "--ckpt", CTM, "--class", "3", "--out", "-"], 2),
    ("sample", "`--sigmas` outside the model's range", ["sample", "--ckpt", CTM, "--sigmas", "200,1", "--out", "-"], 2),
    ("sample", "`--preset` without `--analytic`", ["sample", "--ckpt", CTM, "--preset", "toy", "--out", "-"], 2),
    ("sample sweep", "`--n 0`", ["sample", "sweep", "--ckpt", CTM, "--n", "0"], 2),
    ("sample sweep", "`--nfe 0`", ["sample", "sweep", "--ckpt", CTM, "--nfe", "0"], 2),
    ("likelihood", "NaN in the data", ["likelihood", "nan.npz", "--ckpt", CTM, *CPU], 2),
    ("likelihood", "no items in the data", ["likelihood", "empty.npz", "--ckpt", CTM, *CPU], 2),
    ("likelihood", "checkpoint with NaN weights", ["likelihood", "points.npz", "--ckpt", "nan.safetensors"], 2),
    ("likelihood", "`--n 0`", ["likelihood", "points.npz", "--ckpt", CTM, "--n", "0", *CPU], 2),
    ("likelihood", "edited checkpoint header", ["likelihood", "points.npz", "--ckpt", "edited.safetensors"], 2),
    ("likelihood", "`--per-item` in a read-only place", ["likelihood", "points.npz", "--ckpt", CTM,
                                                        "--per-item", "afile/rows.csv"], 2),
    ("fid", "missing SAMPLES", ["fid", "missing"], 2),
    ("fid", "`--n 0`", ["fid", "images", "--n", "0"], 2),
    ("fid", "`--batch 0`", ["fid", "images", "--batch", "0"], 2),
    ("fid", "`--nfe` for images, not a checkpoint", ["fid", "images", "--nfe", "2", "--ref", "images"], 2),
    ("fid stats", "missing DATA", ["fid", "stats"], 2),
    ("fid stats", "neither `-o` nor `--name`", ["fid", "stats", "images"], 2),
    ("metrics", "missing SAMPLES", ["metrics", "missing"], 2),
    ("metrics", "unknown metric", ["metrics", "images", "--metrics", "fid,bogus"], 2),
    ("metrics", "`--k 0`", ["metrics", "images", "--k", "0"], 2),
    ("translate", "`--ref` without `--metrics`", ["translate", "points.npz", "--ckpt", GCTM, "--out", "o.npz",
                                                 "--ref", "images"], 2),
    ("translate", "NaN in the inputs", ["translate", "nan.npz", "--ckpt", GCTM, "--out", "o.npz", *CPU], 2),
    ("translate", "no items in the inputs", ["translate", "empty.npz", "--ckpt", GCTM, "--out", "o.npz", *CPU], 2),
    ("translate", "checkpoint with NaN weights", ["translate", "points.npz", "--ckpt", "nan-gctm.safetensors",
                                                 "--out", "o.npz"], 2),
    ("translate", "`--batch 0`", ["translate", "points.npz", "--ckpt", GCTM, "--out", "o.npz", "--batch", "0"], 2),
    ("translate", "`--nfe 0`", ["translate", "points.npz", "--ckpt", GCTM, "--out", "o.npz", "--nfe", "0"], 2),
    ("translate", "a CTM instead of a GCTM", ["translate", "points.npz", "--ckpt", CTM, "--out", "o.npz"], 2),
    ("translate edit", "missing IMAGE", ["translate", "edit", "--ckpt", CTM, "--out", "o.npz"], 2),
    ("translate edit", "points to a folder output", ["translate", "edit", "points.npz", "--ckpt", CTM,
                                                     "--out", "folder"], 2),
]


def _edit_header(src: Path, dest: Path, **changes) -> None:
    with safe_open(src, "pt") as f:
        meta, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    for key, edit in changes.items():
        meta[key] = edit(meta[key])
    save_file(tensors, dest, metadata=meta)


def _bad_preset(text: str) -> str:
    p = json.loads(text)
    p["diffusion"]["sigma_min"] = -1.0
    return json.dumps(p)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    tiny_checkpoint(root / CTM)
    tiny_checkpoint(root / TEACHER, kind="teacher")
    tiny_checkpoint(root / GCTM, kind="gctm", preset="toy-translate")
    tiny_checkpoint(root / "nan.safetensors", poison=True)
    tiny_checkpoint(root / "nan-gctm.safetensors", kind="gctm", preset="toy-translate", poison=True)
    _edit_header(root / CTM, root / "edited.safetensors", preset=_bad_preset)
    _edit_header(root / CTM, root / "edited-kind.safetensors", kind=lambda k: "wizard")
    _edit_header(root / CTM, root / "edited-shape.safetensors", data_shape=lambda k: "[3]")
    toy_points(root / "points.npz")
    toy_points(root / "nan.npz", nan=True)
    np.savez(root / "empty.npz", samples=np.zeros((0, 2), np.float32))
    np.savez(root / "exists.npz", samples=np.zeros((1, 2), np.float32))
    (root / "afile").write_text("a file")
    (root / "garbage.pkl").write_bytes(b"not a pickle at all")
    import torch

    torch.save({"model.map_layer0_s.weight": torch.zeros(2, 2)}, root / "ctm10.pt")  # sniffed as ctm-cifar10
    gctm_net = {"t_map_layer0.weight": torch.zeros(2, 2)}
    torch.save({"net": gctm_net, "net_ema": gctm_net}, root / "gctm.pt")  # sniffed as GCTM
    for folder, size in (("images", 8), ("small", 16)):
        (root / folder).mkdir()
        for i in range(3):
            Image.fromarray(np.full((size, size, 3), 40 * i, np.uint8)).save(root / folder / f"{i}.png")
    return root


def _message(line: str) -> str:
    return line.removeprefix("error: ")


def _table(rows) -> str:
    out = ["# Bad input: one line, a non-zero exit code", "",
           "Generated by `tests/cli/test_bad_input.py` (which fails when this table and the commands disagree; "
           "regenerate with `CTMTOOL_WRITE_DOCS=1 python -m pytest tests/cli/test_bad_input.py`). Each row ran in "
           "a folder holding small checkpoints (`ctm.safetensors`, `teacher.safetensors`, `gctm.safetensors`, "
           "one with a NaN weight, three with edited headers), point files and images. Exit code 2: the request "
           "cannot be done as given (bad input, no room or no permission for the output, not enough memory); 1: "
           "an unexpected system error elsewhere (one line too); 130: interrupted.", "",
           "| command | input | exit | message |", "|---|---|---|---|"]
    for cmd, what, args, code, msg in rows:
        shown = "ctmtool " + " ".join(args)
        cell = msg.replace("|", "\\|")
        out.append(f"| `{cmd}` | {what}: `{shown}` | {code} | {cell} |")
    out += ["", "Also tested (`tests/cli/test_bad_input.py`, `tests/cli/test_commands_do_what_was_asked.py`), "
            "with messages that depend on the machine or on a simulated fault:", "",
            "- a full disk while `sample` writes an .npz or a folder (ENOSPC): `error: could not write ...: the disk "
            "is full; free some space or choose another --out (nothing was written)`, exit 2, no file and no "
            "temporary file left;",
            "- `sample --n 1000000000000`: `error: 1000000000000 items of shape (2,) need about ... GiB, more than "
            "the ... GiB of free memory; lower --n`, refused before allocating;",
            "- out of memory during a batch (`torch.OutOfMemoryError`): `error: out of memory (...); lower --batch`;",
            "- a read-only output folder (when not running as root): `error: cannot write ...`.", ""]
    return "\n".join(out)


def test_every_bad_input_is_one_line_and_the_table_is_true(workspace, monkeypatch):
    monkeypatch.chdir(workspace)
    monkeypatch.setenv("CTMTOOL_DATA", str(workspace / "nodata"))
    rows = []
    for cmd, what, args, code in CASES:
        r = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
        try:
            line = one_error_line(r, code)
        except AssertionError as err:
            raise AssertionError(f"{' '.join(args)}: {err}") from None
        rows.append((cmd, what, args, code, _message(line)))
    assert not (workspace / "o.npz").exists() and not (workspace / "runs").exists()
    subcommands = {"presets", "teacher", "teacher import", "import", "distill", "sample", "sample sweep", "likelihood",
                   "fid", "fid stats", "metrics", "translate", "translate edit"}
    assert {c for c, *_ in rows} == subcommands
    text = _table(rows)
    if os.environ.get("CTMTOOL_WRITE_DOCS"):
        DOC.write_text(text)
    assert DOC.read_text() == text, "docs/bad-input.md is out of date: regenerate it (see its first lines)"


def test_full_disk_during_sample_output_leaves_nothing(tmp_path, monkeypatch):
    import ctmtool.jobs.outputs as outputs

    ctm = tiny_checkpoint(tmp_path / "c.safetensors")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(outputs, "_savez", full)
    out = tmp_path / "out" / "s.npz"
    r = CliRunner().invoke(app, ["sample", "--ckpt", str(ctm), "--n", "3", "--out", str(out)])
    assert "disk is full" in one_error_line(r)
    assert not out.exists() and list(out.parent.iterdir()) == []


def test_full_disk_during_a_folder_of_pngs_leaves_nothing(tmp_path, monkeypatch):
    from ctmtool.core.models import load_model
    from ctmtool.jobs.items import sample
    from ctmtool.jobs.outputs import write_items
    from ctmtool.jobs.plan import plan_sampling

    model = load_model(tiny_checkpoint(tmp_path / "c.safetensors", shape=(1, 4, 4), overrides=["net.mlp.hidden=8"]))
    x = sample(model, plan_sampling(model, batch=3), n=3).x
    calls = []

    def save(self, fp, *args, **kwargs):
        calls.append(fp)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        Path(fp).write_bytes(b"png")

    monkeypatch.setattr(Image.Image, "save", save)
    with pytest.raises(Exception, match="disk is full"):
        write_items(x, tmp_path / "pngs", True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.safetensors"]  # no folder, no hidden stage


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_folder(tmp_path):
    ctm = tiny_checkpoint(tmp_path / "c.safetensors")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        r = CliRunner().invoke(app, ["sample", "--ckpt", str(ctm), "--n", "2", "--out", str(ro / "s.npz")])
        assert "cannot write" in one_error_line(r)
    finally:
        ro.chmod(0o755)


def test_out_of_memory_in_a_batch_is_one_line(tmp_path, monkeypatch):
    import torch

    import ctmtool.core.sampling as sampling

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(sampling, "gamma_sample", oom)
    ctm = tiny_checkpoint(tmp_path / "c.safetensors")
    r = CliRunner().invoke(app, ["sample", "--ckpt", str(ctm), "--n", "2", "--out", "-"])
    assert "out of memory" in one_error_line(r) and "--batch" in r.stderr


def test_download_refuses_a_wrong_md5_and_leaves_nothing(tmp_path, monkeypatch):
    import ctmtool.data.cifar10 as cifar10

    monkeypatch.setattr(cifar10.urllib.request, "urlopen", lambda url, timeout=0: io.BytesIO(b"x" * 1000))
    r = CliRunner().invoke(app, ["teacher", "--preset", "cifar10", "--download", "--data", str(tmp_path / "d"),
                                 "--run-dir", str(tmp_path / "run")])
    line = one_error_line(r)
    assert "md5" in line and "expected c58f30108f718f92721af3b95e74349a" in line
    assert list((tmp_path / "d").iterdir()) == [] and not (tmp_path / "run").exists()
    assert re.search(r"MiB", r.stderr)  # the progress line in MiB


def test_cifar10_preset_reads_an_image_folder(tmp_path):
    from ctmtool.config import load_preset
    from ctmtool.data import load_dataset
    from ctmtool.errors import UserError

    for i in range(2):
        Image.fromarray(np.full((32, 32, 3), i, np.uint8)).save(tmp_path / f"{i}.png")
    ds = load_dataset(load_preset("cifar10").data, path=str(tmp_path))
    assert ds.shape == (3, 32, 32) and len(ds) == 2
    small = tmp_path / "small"
    small.mkdir()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(small / "a.png")
    with pytest.raises(UserError, match="data.resolution = 32"):
        load_dataset(load_preset("cifar10").data, path=str(small))


def test_fetch_cifar10_from_a_local_url_is_atomic_and_checked(tmp_path):
    import hashlib

    from ctmtool.data.cifar10 import ARCHIVE, fetch_cifar10
    from ctmtool.errors import UserError

    src = tmp_path / "served.tar.gz"
    src.write_bytes(os.urandom(3000))
    md5 = hashlib.md5(src.read_bytes(), usedforsecurity=False).hexdigest()
    seen = []
    got = fetch_cifar10(tmp_path / "d", progress=seen.append, url=src.as_uri(), md5=md5)
    assert got == tmp_path / "d" / ARCHIVE and got.read_bytes() == src.read_bytes() and sum(seen) == 3000
    assert fetch_cifar10(tmp_path / "d", url="file:///nonexistent", md5="0" * 32) == got  # present: no download
    with pytest.raises(UserError, match="md5"):
        fetch_cifar10(tmp_path / "e", url=src.as_uri(), md5="0" * 32)
    assert list((tmp_path / "e").iterdir()) == []  # no partial file left
