"""Issue 29: hostile inputs, racing runs, full disks and signals, through the command line, one test per
class. Each test failed before the issue's fixes (a traceback, an exit-0 failure, a hang or lost data)."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from typer.testing import CliRunner

from ctmtool.cli.app import app
from tests.cli.conftest import one_error_line, tiny_checkpoint, toy_points

PKL_DIR = Path(__file__).parent


def _cli(args, **kw):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"}, **kw)


def _refused(args, *words, code: int = 2) -> str:
    line = one_error_line(_cli(args), code)
    for w in words:
        assert w in line, (args, line)
    return line


def _rewrite(src: Path, dest: Path, drop_checksum: bool = False, **changes) -> Path:
    """A copy of a checkpoint with header entries changed (and, for an old-style file, no checksum)."""
    with safe_open(src, "pt") as f:
        meta, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    for key, edit in changes.items():
        meta[key] = edit(meta[key])
    if drop_checksum:
        meta.pop("checksum")
    save_file(tensors, dest, metadata=meta)
    return dest


# ------------------------------------------------------------------------------------------------------------
# 1. Validation at the edge, by type


def test_settings_and_options_are_refused_by_type_before_any_work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sets = {
        "teacher.lr=nan": "finite number",                  # NaN passed validation
        "distill.betas=[0.9,1.5]": "less than 1",           # failed deep in torch.optim
        "gan.betas=[-0.1,0.9]": "greater than or equal to 0",
        "teacher.kimg=inf": "finite number",
        "teacher.batch=inf": "finite number",               # non-finite where an integer is expected
        "teacher.seed=99999999999999999999999": "at most 64 bits",
        "teacher.seed=1" + "0" * 5000: "5001 digits",      # Python refuses to convert it: was a traceback
        "sample.sigmas=[80,nan]": "finite number",
    }
    for item, words in sets.items():
        line = _refused(["presets", "toy", "--set", item], words)
        assert len(line) < 400  # the value is shown cut, never rendered whole
    Path("latin1.toml").write_bytes('name = "caf\xe9"\n'.encode("latin-1"))
    _refused(["presets", "latin1.toml"], "not UTF-8 text")
    Path("huge.toml").write_text("[teacher]\nseed = 1" + "0" * 5000 + "\n")
    _refused(["presets", "huge.toml"], "number no setting takes")
    # command-line numbers: finite and 64-bit for every option of every command
    _refused(["teacher", "--kimg", "inf"], "--kimg must be a finite number")
    _refused(["serve", "--ckpt", "x", "--max-upload-mb", "inf"], "--max-upload-mb must be a finite number")
    _refused(["sample", "--n", str(2**70), "--out", "-"], "--n is an integer of 71 bits")
    _refused(["sample", "sweep", "--nfe", "inf"], "finite numbers")
    # paths that must stay inside their folder
    (tmp_path / "imgs").mkdir()
    _refused(["fid", "stats", "imgs", "--name", "../../escaped", "--no-features"], "not a reference name")
    # --data for a preset that draws its own data was silently ignored
    _refused(["teacher", "--preset", "toy", "--data", "imgs", "--run-dir", "r"], "drop --data")
    _refused(["distill", "--preset", "digits", "--data", "imgs", "--run-dir", "r"], "drop --data")
    assert not Path("r").exists() and not list(Path().glob("**/escaped*"))
    # complex data was truncated to its real part
    ctm = tiny_checkpoint(tmp_path / "ctm.safetensors")
    np.savez("complex.npz", samples=(np.ones((4, 2)) + 1j).astype(np.complex64))
    _refused(["likelihood", "complex.npz", "--ckpt", ctm, "--device", "cpu"], "complex")


# ------------------------------------------------------------------------------------------------------------
# 2. Checkpoints prove themselves


def _flip_a_byte(path: Path, from_end: int = 3) -> None:
    b = bytearray(path.read_bytes())
    b[-from_end] ^= 0x40
    path.write_bytes(bytes(b))


def test_checkpoints_prove_themselves(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ctm = tiny_checkpoint(tmp_path / "ctm.safetensors")
    flipped = tmp_path / "flipped.safetensors"
    flipped.write_bytes(ctm.read_bytes())
    _flip_a_byte(flipped)  # a weight's byte: was sampled without complaint
    _refused(["sample", "--ckpt", flipped, "--out", "-"], "fails its checksum", "tensor group")
    kind = _rewrite(ctm, tmp_path / "kind.safetensors", kind=lambda k: "gctm")  # was believed
    _refused(["sample", "--ckpt", kind, "--out", "-"], "fails its checksum", "the header")
    # an old checkpoint (no checksum) still loads and samples
    old = _rewrite(ctm, tmp_path / "old.safetensors", drop_checksum=True)
    r = _cli(["sample", "--ckpt", old, "--n", "3", "--out", "old.npz"])
    assert r.exit_code == 0, r.stderr
    assert np.load("old.npz")["samples"].shape == (3, 2)

    # an old header describing a network of terabytes: refused before anything is allocated
    def huge(text):
        p = json.loads(text)
        p["net"]["mlp"]["hidden"] = 2**24  # 2^48 weights per layer: 1 PB of float32
        return json.dumps(p)

    big = _rewrite(ctm, tmp_path / "big.safetensors", drop_checksum=True, preset=huge)
    t0 = time.monotonic()
    _refused(["sample", "--ckpt", big, "--out", "-"], "does not fit this network")
    assert time.monotonic() - t0 < 30
    # non-finite levels: NaN sigma in the preset, NaN moments in meta (an old file: no checksum to catch them)
    nan_sigma = _rewrite(ctm, tmp_path / "nans.safetensors", drop_checksum=True,
                         preset=lambda t: t.replace('"sigma_max":80.0', '"sigma_max":NaN'))
    _refused(["sample", "--ckpt", nan_sigma, "--out", "-"], "damaged ctmtool header", "finite number")
    gctm = tiny_checkpoint(tmp_path / "g.safetensors", kind="gctm", preset="toy-translate")
    nan_meta = _rewrite(gctm, tmp_path / "nanm.safetensors", drop_checksum=True,
                        meta=lambda t: json.dumps({**json.loads(t), "moments": {"var0": float("nan")}}))
    _refused(["translate", "p.npz", "--ckpt", nan_meta, "--out", "o.npz"], "NaN or infinite")


def test_full_disk_during_a_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    """safetensors reports ENOSPC as SafetensorError, which was not caught (a traceback)."""
    import ctmtool.checkpoint as checkpoint
    from ctmtool.checkpoint import load_checkpoint, save_checkpoint

    first = tiny_checkpoint(tmp_path / "ckpt.safetensors")
    before = first.read_bytes()
    ckpt = load_checkpoint(first)

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull })")

    monkeypatch.setattr(checkpoint, "save_file", full)
    with pytest.raises(checkpoint.UserError,
                       match="could not write checkpoint .* previous checkpoint is untouched"):
        save_checkpoint(first, ckpt)
    assert first.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["ckpt.safetensors"]


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 256 kB tmpfs (root only; skipped elsewhere)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.decode().strip() or 'not root'}); the "
                    "monkeypatched full-disk tests cover the same paths")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_really_full_disk(tiny_tmpfs):
    from ctmtool.checkpoint import load_checkpoint, save_checkpoint
    from ctmtool.errors import UserError
    from ctmtool.train.rundir import RunLock

    ck = tiny_checkpoint(tiny_tmpfs / "ckpt-1.safetensors")
    before = ck.read_bytes()
    filler = tiny_tmpfs / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
                f.flush()
        except OSError as err:
            assert err.errno == errno.ENOSPC
    with pytest.raises(UserError, match="could not write checkpoint"):
        save_checkpoint(tiny_tmpfs / "ckpt-2.safetensors", load_checkpoint(ck))
    assert ck.read_bytes() == before
    # no temporary left
    assert sorted(p.name for p in tiny_tmpfs.iterdir()) == ["ckpt-1.safetensors", "filler"]
    with RunLock(tiny_tmpfs):  # the lock holds though its process id cannot be written
        pass
    assert not (tiny_tmpfs / ".lock").exists()  # and no empty lock is left to refuse the folder later


# ------------------------------------------------------------------------------------------------------------
# 3. Bounded work


def test_requests_are_bounded_unless_no_limits_says_so(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ctm = tiny_checkpoint(tmp_path / "ctm.safetensors")
    toy_points(tmp_path / "p.npz")
    _refused(["sample", "--ckpt", ctm, "--nfe", "1000000", "--out", "-"], "--nfe 1000000 is over the limit",
             "--no-limits")
    _refused(["likelihood", "p.npz", "--ckpt", ctm, "--solver", "rk4", "--steps", "100000000"], "--steps")
    _refused(["teacher", "--kimg", "1e12"], "--kimg")
    _refused(["distill", "--set", "distill.kimg=5e6"], "--kimg")  # a --set is a request too
    _refused(["translate", "p.npz", "--ckpt", ctm, "--out", "o.npz", "--nfe", "5000"], "--nfe")
    # memory estimated before a large allocation (it was torch's "can't allocate memory" traceback)
    _refused(["teacher", "--set", "teacher.batch=100000000000", "--run-dir", "big"], "GiB of free memory",
             "lower the batch")
    r = _cli(["sample", "--ckpt", ctm, "--nfe", "1001", "--n", "2", "--out", "s.npz", "--no-limits"])
    assert r.exit_code == 0 and "limits" in r.stderr and "are off" in r.stderr, r.stderr


def _laughs(levels: int = 12, width: int = 200) -> bytes:
    """4 kB: a list of 200 references to a list of 200 references ... 12 deep (200^12 leaves when walked)."""
    b = bytearray(b"\x80\x04]\x94")
    for i in range(1, levels + 1):
        b += b"](" + (b"h" + bytes([i - 1])) * width + b"e\x94"
    b += b"}\x8c\x03ema}\x8c\x05state}\x8c\x0c_init_kwargs" + b"h" + bytes([levels]) + b"sss."
    return bytes(b)


def test_hostile_pickles_are_refused_quickly_without_rendering_them(tmp_path, monkeypatch):
    import pickle

    import ctmtool.importers.pickle_tree as pickle_tree
    import ctmtool.importers.safe_pickle as safe_pickle

    monkeypatch.chdir(tmp_path)
    Path("laughs.pkl").write_bytes(_laughs())
    Path("deep.pkl").write_bytes(b"\x80\x04" + b"(" * 200_000 + b".")
    Path("biglist.pkl").write_bytes(pickle.dumps([list(range(50))] * 2000, protocol=4))
    # `teacher import` is `ctmtool import`: a pickle of no known format is named by its type, never rendered
    for name, words in (("laughs", "unrecognised checkpoint format (a dict with keys ema)"),
                        ("deep", "more work than any network pickle"),
                        ("biglist", "unrecognised checkpoint format (list)")):
        t0 = time.monotonic()
        line = _refused(["teacher", "import", f"{name}.pkl", "-o", f"{name}.safetensors"], words)
        assert time.monotonic() - t0 < 20 and len(line) < 400, (name, line)
    with open("laughs.pkl", "rb") as f:
        tree = safe_pickle.safe_load(f)["ema"]["state"]["_init_kwargs"]
    with pytest.raises(pickle_tree.UserError, match="more than 1000000 nodes"):
        pickle_tree._plain(tree)  # walking the shared references is bounded too
    monkeypatch.setattr(safe_pickle, "MAX_OPS", 1000)  # and the unpickler's operations
    Path("many.pkl").write_bytes(pickle.dumps({"ema": list(range(5000))}, protocol=4))
    _refused(["teacher", "import", "many.pkl", "-o", "m.safetensors"], "at most 1000 operations")


# ------------------------------------------------------------------------------------------------------------
# 4. Runs that cannot race; outputs that never share a path


SETS = ["net.mlp.hidden=16", "net.mlp.depth=1", "net.mlp.emb=8", "data.n=512", "teacher.batch=32",
        "teacher.ckpt_every_kimg=0.32", "teacher.keep_checkpoints=1", "teacher.log_every_kimg=100"]


def test_a_second_run_into_a_live_run_directory_is_refused_before_it_touches_anything(tmp_path):
    """Two runs started seconds apart into one folder both exited 0 and the first run's checkpoints were
    rotated away (the lock was released between inspecting the folder and training)."""
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "ctmtool", "teacher", "--preset", "toy",
           *[a for s in SETS for a in ("--set", s)], "--run-dir", str(run), "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen([*cmd, "--kimg", "100000"], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while not list(run.glob("ckpt-*.safetensors")) and time.time() < deadline and first.poll() is None:
            time.sleep(0.05)
        held = sorted(run.glob("ckpt-*.safetensors"))
        assert held, first.stderr.read().decode() if first.poll() is not None else "no checkpoint in 120 s"
        for extra in (["--force"], ["--resume"], ["--auto-resume"]):
            r = subprocess.run([*cmd, "--kimg", "0.32", *extra], env=env, capture_output=True, text=True,
                               timeout=120)
            assert r.returncode == 2 and "is in use by process" in r.stderr, (extra, r.stderr)
            assert r.stderr.strip().splitlines()[-1].startswith("error: ")
        # still running, still checkpointing
        assert first.poll() is None and list(run.glob("ckpt-*.safetensors"))
    finally:
        first.send_signal(signal.SIGTERM)
        _, err = first.communicate(timeout=60)
    assert first.returncode == 143, err


def test_one_commands_outputs_are_all_written_or_none(tmp_path, monkeypatch):

    monkeypatch.chdir(tmp_path)
    gctm = tiny_checkpoint(tmp_path / "g.safetensors", kind="gctm", preset="toy-translate")
    ctm = tiny_checkpoint(tmp_path / "c.safetensors")
    toy_points(tmp_path / "p.npz")
    _refused(["translate", "p.npz", "--ckpt", gctm, "--out", "x.png", "--grid", "x.png"], "same file")
    _refused(["translate", "p.npz", "--ckpt", gctm, "--out", "x.png", "--grid", "./x.png"], "same file")
    _refused(["sample", "sweep", "--ckpt", ctm, "--out", "table.png"], "where the plot goes")

    def failing(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    import ctmtool.jobs.translation as translation_job  # the translate job writes the grid and the outputs

    grid = translation_job._grid
    monkeypatch.setattr(translation_job, "_grid", failing)  # the grid fails: nothing at all is written
    r = _cli(["translate", "p.npz", "--ckpt", gctm, "--out", "o.npz", "--grid", "g.png", "--device", "cpu"])
    assert r.exit_code != 0 and not Path("o.npz").exists() and not Path("g.png").exists()
    monkeypatch.setattr(translation_job, "_grid", grid)
    import ctmtool.jobs.outputs as outputs

    monkeypatch.setattr(outputs, "_savez", failing)  # the outputs fail after the grid: the grid is removed
    r = _cli(["translate", "p.npz", "--ckpt", gctm, "--out", "o.npz", "--grid", "g.png", "--device", "cpu"])
    assert "disk is full" in one_error_line(r)
    assert not Path("o.npz").exists() and not Path("g.png").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.safetensors", "g.safetensors", "p.npz"]


# ------------------------------------------------------------------------------------------------------------
# 6. Signals end every command with 130 / 143 and one line


def _signalled(args, sig, ready: str, tmp_path) -> subprocess.CompletedProcess:
    proc = subprocess.Popen([sys.executable, "-m", "ctmtool", *map(str, args)], cwd=tmp_path, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    seen = []
    deadline = time.time() + 90
    while time.time() < deadline:  # wait until the command is at work (its log line), then signal it
        line = proc.stderr.readline()
        seen.append(line)
        if ready in line or not line:
            break
    proc.send_signal(sig)
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"{args[0]} ignored {sig.name}") from None
    return subprocess.CompletedProcess(args, proc.returncode, out, "".join(seen) + err)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signals_end_long_commands_with_their_exit_code(tmp_path, sig):
    ctm = tiny_checkpoint(tmp_path / "ctm.safetensors")
    toy_points(tmp_path / "p.npz")
    cases = [
        (["likelihood", "p.npz", "--ckpt", ctm, "--solver", "rk4", "--steps", "3000000", "--device", "cpu",
          "--no-limits"], "likelihood of"),
        (["sample", "--ckpt", ctm, "--nfe", "300000", "--n", "64", "--out", "-", "--device", "cpu",
          "--no-limits"],
         "using checkpoint"),
        (["serve", "--ckpt", ctm, "--port", str(_free_port()), "--backend", "torch"], "serving"),
    ]
    for args, ready in cases:
        r = _signalled(args, sig, ready, tmp_path)
        assert r.returncode == 128 + sig, (args[0], r.returncode, r.stderr[-2000:])
        last = r.stderr.strip().splitlines()[-1]
        assert last == f"error: interrupted by {sig.name}" and "Traceback" not in r.stderr, \
            (args[0], r.stderr[-2000:])


def _free_port() -> int:
    from ctmtool.serve import free_port

    return free_port()
