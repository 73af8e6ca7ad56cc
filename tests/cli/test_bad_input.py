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
    ("teacher", "`--download` for a preset without CIFAR-10", ["teacher", "--download", "--run-dir", "r1"],
     2),
    ("teacher", "CIFAR-10 preset, `--data` folder of 16x16 images",
     ["teacher", "--preset", "cifar10", "--data", "small", "--run-dir", "r2"], 2),
    ("teacher import", "missing pickle", ["teacher", "import", "missing.pkl"], 2),
    ("teacher import", "not a pickle", ["teacher", "import", "garbage.pkl", "-o", "g.safetensors"], 2),
    ("import", "an option the file's format does not take (ctm-cifar10 file)",
     ["import", "ctm10.pt", "--var0", "0.2", "-o", "i1.safetensors"], 2),
    ("import", "GCTM file without its moments", ["import", "gctm.pt", "-o", "i2.safetensors"], 2),
    ("distill", "`--kimg -1`", ["distill", "--kimg", "-1"], 2),
    ("distill", "missing teacher checkpoint",
     ["distill", "--teacher", "missing.safetensors", "--run-dir", "r3"], 2),
    ("distill", "`--resume` with `--auto-resume`", ["distill", "--resume", "--auto-resume"], 2),
    ("sample", "no checkpoint in the default run directory", ["sample", "--out", "-"], 2),
    ("sample", "`--n 0`", ["sample", "--ckpt", CTM, "--n", "0", "--out", "-"], 2),
    ("sample", "`--n abc` (a usage error)", ["sample", "--n", "abc"], 2),
    ("sample", "unknown output suffix", ["sample", "--ckpt", CTM, "--out", "x.txt"], 2),
    ("sample", "output below a file", ["sample", "--ckpt", CTM, "--out", "afile/x.npz"], 2),
    ("sample", "existing output without `--force`", ["sample", "--ckpt", CTM, "--out", "exists.npz"], 2),
    ("sample", "checkpoint with NaN weights", ["sample", "--ckpt", "nan.safetensors", "--out", "-"], 2),
    ("sample", "edited checkpoint header (preset)", ["sample", "--ckpt", "edited.safetensors", "--out", "-"],
     2),
    ("sample", "edited checkpoint header (kind)",
     ["sample", "--ckpt", "edited-kind.safetensors", "--out", "-"], 2),
    ("sample", "edited checkpoint header (data_shape)",
     ["sample", "--ckpt", "edited-shape.safetensors", "--out", "-"], 2),
    ("sample", "`--nfe` for a teacher", ["sample", "--ckpt", TEACHER, "--nfe", "1", "--out", "-"], 2),
    ("sample", "`--class` for an unconditional model",
     ["sample", "--ckpt", CTM, "--class", "3", "--out", "-"], 2),
    ("sample", "`--sigmas` outside the model's range",
     ["sample", "--ckpt", CTM, "--sigmas", "200,1", "--out", "-"], 2),
    ("sample", "`--preset` without `--analytic`", ["sample", "--ckpt", CTM, "--preset", "toy", "--out", "-"],
     2),
    ("sample sweep", "`--n 0`", ["sample", "sweep", "--ckpt", CTM, "--n", "0"], 2),
    ("sample sweep", "`--nfe 0`", ["sample", "sweep", "--ckpt", CTM, "--nfe", "0"], 2),
    ("likelihood", "NaN in the data", ["likelihood", "nan.npz", "--ckpt", CTM, *CPU], 2),
    ("likelihood", "no items in the data", ["likelihood", "empty.npz", "--ckpt", CTM, *CPU], 2),
    ("likelihood", "checkpoint with NaN weights", ["likelihood", "points.npz", "--ckpt", "nan.safetensors"],
     2),
    ("likelihood", "`--n 0`", ["likelihood", "points.npz", "--ckpt", CTM, "--n", "0", *CPU], 2),
    ("likelihood", "edited checkpoint header", ["likelihood", "points.npz", "--ckpt", "edited.safetensors"],
     2),
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
    ("translate", "no items in the inputs",
     ["translate", "empty.npz", "--ckpt", GCTM, "--out", "o.npz", *CPU], 2),
    ("translate", "checkpoint with NaN weights", ["translate", "points.npz", "--ckpt", "nan-gctm.safetensors",
                                                 "--out", "o.npz"], 2),
    ("translate", "`--batch 0`",
     ["translate", "points.npz", "--ckpt", GCTM, "--out", "o.npz", "--batch", "0"], 2),
    ("translate", "`--nfe 0`", ["translate", "points.npz", "--ckpt", GCTM, "--out", "o.npz", "--nfe", "0"],
     2),
    ("translate", "a CTM instead of a GCTM", ["translate", "points.npz", "--ckpt", CTM, "--out", "o.npz"], 2),
    ("translate edit", "missing IMAGE", ["translate", "edit", "--ckpt", CTM, "--out", "o.npz"], 2),
    ("translate edit", "points to a folder output", ["translate", "edit", "points.npz", "--ckpt", CTM,
                                                     "--out", "folder"], 2),
    # issue 29: validation by type
    ("presets", "a preset file that is not UTF-8 text", ["presets", "latin1.toml"], 2),
    ("presets", "Adam betas outside [0, 1)", ["presets", "toy", "--set", "distill.betas=[0.9,1.5]"], 2),
    ("presets", "NaN learning rate", ["presets", "toy", "--set", "teacher.lr=nan"], 2),
    ("presets", "an integer beyond 64 bits",
     ["presets", "toy", "--set", "teacher.seed=99999999999999999999999"], 2),
    ("presets", "`inf` where an integer is expected", ["presets", "toy", "--set", "teacher.batch=inf"], 2),
    ("teacher", "`--kimg inf`", ["teacher", "--kimg", "inf"], 2),
    ("teacher", "`--data` for a preset with built-in data",
     ["teacher", "--data", "images", "--run-dir", "r4"], 2),
    ("sample", "`--n` beyond 64 bits", ["sample", "--ckpt", CTM, "--n", str(2**70), "--out", "-"], 2),
    ("likelihood", "complex data", ["likelihood", "complex.npz", "--ckpt", CTM, *CPU], 2),
    ("fid stats", "`--name` leaving the cache folder",
     ["fid", "stats", "images", "--name", "../../x", "--no-features"], 2),
    ("serve", "`--max-upload-mb inf`", ["serve", "--ckpt", CTM, "--max-upload-mb", "inf"], 2),
    ("serve", "a non-loopback `--host` without `--expose`", ["serve", "--ckpt", CTM, "--host", "0.0.0.0"], 2),
    # issue 29: checkpoints prove themselves
    ("sample", "a flipped byte in the weights", ["sample", "--ckpt", "flipped.safetensors", "--out", "-"], 2),
    ("sample", "header kind edited (ctm to gctm)",
     ["sample", "--ckpt", "edited-gctm.safetensors", "--out", "-"], 2),
    ("sample", "old checkpoint (no checksum), edited data_shape",
     ["sample", "--ckpt", "old-shape.safetensors",
                                                                    "--out", "-"], 2),
    ("sample", "old checkpoint, header of a 1 PB network",
     ["sample", "--ckpt", "old-huge.safetensors", "--out", "-"], 2),
    ("sample", "old checkpoint, NaN noise level", ["sample", "--ckpt", "old-nan.safetensors", "--out", "-"],
     2),
    # issue 29: bounded work
    ("sample", "`--nfe 1000000`", ["sample", "--ckpt", CTM, "--nfe", "1000000", "--out", "-"], 2),
    ("likelihood", "`--solver rk4 --steps 100000000`",
     ["likelihood", "points.npz", "--ckpt", CTM, "--solver", "rk4",
                                                        "--steps", "100000000"], 2),
    ("distill", "`--kimg 1e12`", ["distill", "--kimg", "1e12"], 2),
    ("teacher import", "a 4 kB pickle of shared references",
     ["teacher", "import", "laughs.pkl", "-o", "l.safetensors"], 2),
    ("teacher import", "200,000 nested MARKs", ["teacher", "import", "deep.pkl", "-o", "d.safetensors"], 2),
    ("teacher import", "a pickled list of 2,000 lists",
     ["teacher", "import", "biglist.pkl", "-o", "b.safetensors"], 2),
    # issue 29: outputs that never share a path
    ("translate", "`--grid` the same file as `--out`",
     ["translate", "points.npz", "--ckpt", GCTM, "--out", "x.png",
                                                        "--grid", "x.png"], 2),
    ("sample sweep", "`--out` on the plot's path", ["sample", "sweep", "--ckpt", CTM, "--out", "t.png"], 2),
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
    _hostile_files(root)
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


def _hostile_files(root: Path) -> None:
    """Issue 29's files: a non-UTF-8 preset, complex data, edited and flipped checkpoints, hostile pickles."""
    import pickle

    from tests.cli.test_hostile_input import _laughs, _rewrite

    (root / "latin1.toml").write_bytes('name = "caf\xe9"\n'.encode("latin-1"))
    np.savez(root / "complex.npz", samples=(np.ones((4, 2)) + 1j).astype(np.complex64))
    flipped = bytearray((root / CTM).read_bytes())
    flipped[-3] ^= 0x40
    (root / "flipped.safetensors").write_bytes(bytes(flipped))
    _rewrite(root / CTM, root / "edited-gctm.safetensors", kind=lambda k: "gctm")
    _rewrite(root / CTM, root / "old-shape.safetensors", drop_checksum=True, data_shape=lambda k: "[3]")

    def huge(text):
        p = json.loads(text)
        p["net"]["mlp"]["hidden"] = 2**24
        return json.dumps(p)

    _rewrite(root / CTM, root / "old-huge.safetensors", drop_checksum=True, preset=huge)
    _rewrite(root / CTM, root / "old-nan.safetensors", drop_checksum=True,
             preset=lambda t: t.replace('"sigma_max":80.0', '"sigma_max":NaN'))
    (root / "laughs.pkl").write_bytes(_laughs())
    (root / "deep.pkl").write_bytes(b"\x80\x04" + b"(" * 200_000 + b".")
    (root / "biglist.pkl").write_bytes(pickle.dumps([list(range(50))] * 2000, protocol=4))


def _message(line: str) -> str:
    return line.removeprefix("error: ")


def _table(rows) -> str:
    out = ["# Bad input: one line, a non-zero exit code", "",
           "Generated by `tests/cli/test_bad_input.py` (which fails when this table and the commands "
           "disagree; regenerate with `CTMTOOL_WRITE_DOCS=1 python -m pytest tests/cli/test_bad_input.py`). "
           "Each row ran in a folder holding small checkpoints (`ctm.safetensors`, `teacher.safetensors`, "
           "`gctm.safetensors`, one with a NaN weight, three with edited headers), point files and images. "
           "Exit code 2: the request cannot be done as given (bad input, no room or no permission for the "
           "output, not enough memory); 1: an unexpected system error elsewhere (one line too); 130: "
           "interrupted.", "",
           "| command | input | exit | message |", "|---|---|---|---|"]
    for cmd, what, args, code, msg in rows:
        shown = "ctmtool " + " ".join(args)
        cell = msg.replace("|", "\\|")
        out.append(f"| `{cmd}` | {what}: `{shown}` | {code} | {cell} |")
    out += ["",
            "Also tested (`tests/cli/test_bad_input.py`, `tests/cli/test_commands_do_what_was_asked.py`), "
            "with messages that depend on the machine or on a simulated fault:", "",
            "- a full disk while `sample` writes an .npz or a folder (ENOSPC): `error: could not write ...: "
            "the disk is full; free some space or choose another --out (nothing was written)`, exit 2, no "
            "file and no temporary file left;",
            "- `sample --n 1000000000000 --no-limits`: `error: 1000000000000 items of shape (2,) need about "
            "... GiB, more than the ... GiB of free memory; lower --n`, refused before allocating;",
            "- out of memory during a batch (`torch.OutOfMemoryError`): `error: out of memory (...); lower "
            "--batch`;",
            "- a read-only output folder (when not running as root): `error: cannot write ...`.", ""]
    out += HOSTILE_NOTES
    return "\n".join(out)


HOSTILE_NOTES = [
    "## Hostile input, racing runs, full disks, signals and the served page (issue 29)", "",
    "Tested in `tests/cli/test_hostile_input.py`, `tests/train/test_rundir.py` and "
    "`tests/serve/test_serve_security.py`; re-measured as a user would run them by `bench/abuse.py`.", "",
    "- **Types at the edge.** Every settings section refuses NaN and infinities in every float "
    "(`allow_inf_nan=False`), integers beyond 64 bits (also inside lists), Adam/RAdam betas and EMA rates "
    "outside [0, 1); `lr`, `sigma_*` and sizes keep their bounds. Every number on the command line of every "
    "command is checked finite and 64-bit before any work (`cli.common.check_option_values`). A value is "
    "shown cut to 80 characters, a huge integer by its size. Names that become paths (`fid stats --name`) "
    "are letters, digits, `.`, `_`, `-` and stay inside their folder.",
    "- **Checkpoints prove themselves.** The header's `checksum` holds SHA-256 digests of the other header "
    "entries and of each tensor group (name, dtype, shape and bytes in name order; `ctmtool/integrity.py`); "
    "loading checks the header and the groups it loads. Cost, measured by `bench/checksum_cost.py` on the "
    "2-core build machine under a load of 8: a 960 MiB three-group checkpoint loads in 4.0 s checked against "
    "0.0 s unchecked (safetensors maps the file lazily; the checksum reads every byte once, about 240 MiB/s "
    "there, SHA-256 alone hashes 1.4 GB/s on one idle core); sampling checks the `ema` group only (1.2 s of "
    "the 4.0 s). Checkpoints written before the checksum (no `checksum` entry) still load, unchecked; for "
    "them the header's network is built on the meta device and compared with the stored tensors before any "
    "memory is allocated, and non-finite levels in the preset or `meta` are refused.",
    "- **Bounded work.** `ctmtool/limits.py` holds the per-request limits (NFE 1000, solver steps 10,000, "
    "kimg 1,000,000, minutes 43,200, items 10,000,000, probes 1000, ELBO samples 100,000, dequantisation "
    "draws 1000), checked by `sample`, `sample sweep`, `likelihood`, `translate`, `teacher` and `distill` (a "
    "`--set` of kimg or minutes included); `--no-limits` lifts them and says so on stderr. The EDM pickle "
    "unpickler counts its operations (5,000,000), memo entries (1,000,000), nesting (1000) and stack "
    "(1,000,000), and walks the unpickled tree at most 1,000,000 nodes; messages show an untrusted object's "
    "type and size, never its repr.",
    "- **Runs that cannot race.** The run lock is an `flock` on `.lock`, taken before the folder is "
    "inspected and held until the run ends: a second run is refused (`error: run directory ... is in use by "
    "process N`) before it deletes or rotates anything; a killed holder's lock is released by the kernel (no "
    "stale-lock takeover race: 32 concurrent takeovers, 0 double holders, 7 before); a full disk that leaves "
    "`.lock` empty refuses nothing. `translate --grid` writes the grid first and removes it when the outputs "
    "then fail; an output and a grid (or `sample sweep`'s table and plot) on one path are refused. A full "
    "disk during a checkpoint write (safetensors' `SafetensorError`) is one line and the previous checkpoint "
    "stays (a real 256 kB tmpfs when `mount` works, as root; a simulated `SafetensorError` always).",
    "- **Signals.** SIGINT and SIGTERM end every command with exit 130 / 143 and `error: interrupted by "
    "SIGINT` (or SIGTERM) as the last line: `serve`, `likelihood` (rk4 included), `sample`; training saves "
    "first (`training stopped by SIGTERM ...; saved ...`).",
    "- **The served page serves only its user.** `/` and `/info` answer only a loopback Host header (421 "
    "otherwise: DNS rebinding); the WebSocket refuses an Origin other than the page's own during the "
    "handshake (403: cross-site WebSocket hijacking; a page from another origin in Chromium cannot open it) "
    "unless named with `--allow-origin`; a non-loopback `--host` needs `--expose` and prints a warning; the "
    "page is told no filesystem path (`hello` has no `path`, messages keep only a path's last part); a page "
    "silent for `--idle-timeout` seconds (300) is closed, and when every slot is taken the page idle longest "
    "(10 s or more) gives its slot to the newcomer; an upload over 4096x4096 pixels is refused from its "
    "header with the size (a 20000x20000 PNG: `a decompression bomb?`).", ""]


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
    assert not list(workspace.parent.parent.glob("**/x_*.npz"))  # `--name ../../x` wrote nothing anywhere
    subcommands = {"presets", "teacher", "teacher import", "import", "distill", "sample", "sample sweep",
                   "likelihood", "fid", "fid stats", "metrics", "translate", "translate edit", "serve"}
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

    model = load_model(tiny_checkpoint(tmp_path / "c.safetensors", shape=(1, 4, 4),
                                       overrides=["net.mlp.hidden=8"]))
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
    r = CliRunner().invoke(app,
                           ["teacher", "--preset", "cifar10", "--download", "--data", str(tmp_path / "d"),
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
    # present: no download
    assert fetch_cifar10(tmp_path / "d", url="file:///nonexistent", md5="0" * 32) == got
    with pytest.raises(UserError, match="md5"):
        fetch_cifar10(tmp_path / "e", url=src.as_uri(), md5="0" * 32)
    assert list((tmp_path / "e").iterdir()) == []  # no partial file left
