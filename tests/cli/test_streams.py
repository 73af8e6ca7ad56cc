"""Pipelines through a real shell (`set -o pipefail`): `--out -` writes .npz bytes, `-` reads them back, the
summary goes to stderr, a closed pipe ends as SIGPIPE ends a writer (141, no error text), and tables are
tab-separated when stdout is not a terminal."""

from __future__ import annotations

import io
import json
import shlex
import subprocess
import sys

import numpy as np
import pytest
import torch

from tests.cli.conftest import tiny_checkpoint
from tests.conftest import tiny_preset, write_checkpoint

CT = f"{shlex.quote(sys.executable)} -m ctmtool"
IMG = (1, 8, 8)


def sh(script: str, cwd, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", f"set -euo pipefail\n{script}"], cwd=cwd, capture_output=True,
                          timeout=timeout)


def _npz(data: bytes) -> dict:
    with np.load(io.BytesIO(data)) as z:
        return dict(z)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("streams")
    tiny_checkpoint(d / "ctm.safetensors")
    write_checkpoint(d / "img.safetensors", "ctm", IMG, scale=0.1)
    preset = tiny_preset("toy-translate", 'gctm.coupling="corrupt:sr2"')
    write_checkpoint(d / "gctm.safetensors", "gctm", IMG, preset,
                     {"moments": {"var0": 0.3, "var1": 0.3, "cov01": 0.2}}, scale=0.1)

    class Feat(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.adaptive_avg_pool2d(x.float() / 255, 4).flatten(1)

    torch.jit.script(Feat()).save(str(d / "feat.pt"))
    rng = np.random.default_rng(0)
    np.savez(d / "real.npz", samples=rng.integers(0, 256, (64, 8, 8, 1), dtype=np.uint8))
    return d


def test_sample_into_likelihood(files):
    r = sh(f"{CT} sample --ckpt ctm.safetensors --nfe 1 -n 32 --out - --json | "
           f"{CT} likelihood - --ckpt ctm.safetensors -n 8 --json", files)
    assert r.returncode == 0, r.stderr.decode()
    out = json.loads(r.stdout)  # stdout: only the likelihood's JSON
    assert out["n"] == 8 and np.isfinite(out["nll_nats"]) and out["data"] == "-"
    summaries = [json.loads(ln) for ln in r.stderr.decode().splitlines() if ln.startswith("{")]
    # sample's, on stderr
    assert len(summaries) == 1 and summaries[0]["out"] == "-" and summaries[0]["n"] == 32


def test_sample_into_fid_and_stats(files):
    r = sh(f"{CT} fid stats real.npz -o ref.npz --features feat.pt --force --json >/dev/null\n"
           f"{CT} sample --ckpt img.safetensors --nfe 1 -n 64 --out - | {CT} fid - --ref ref.npz --features "
           "feat.pt --json",
           files)
    assert r.returncode == 0, r.stderr.decode()
    out = json.loads(r.stdout)
    assert out["samples"] == "-" and out["n"] == 64 and out["fid"] > 0
    # the same images from a file give the same number
    r2 = sh(f"{CT} sample --ckpt img.safetensors --nfe 1 -n 64 --out s.npz --force >/dev/null\n"
            f"{CT} fid s.npz --ref ref.npz --features feat.pt --json", files)
    assert json.loads(r2.stdout)["fid"] == pytest.approx(out["fid"], rel=1e-6)


def test_translate_and_edit_read_and_write_streams(files):
    r = sh(f"{CT} sample --ckpt img.safetensors -n 5 --out - | "
           f"{CT} translate - --ckpt gctm.safetensors --out - --json | "
           f"{CT} translate edit - --ckpt img.safetensors --strength 0.3 --out -", files)
    assert r.returncode == 0, r.stderr.decode()
    arrays = _npz(r.stdout)  # nothing but data on stdout: the summaries went to stderr
    assert arrays["samples"].shape == (5, 8, 8, 1) and arrays["samples"].dtype == np.uint8
    assert arrays["inputs"].shape == (5, 8, 8, 1)
    summaries = [json.loads(ln) for ln in r.stderr.decode().splitlines() if ln.startswith("{")]
    assert [s["n"] for s in summaries] == [5]  # translate's --json line; edit's summary is a plain table
    assert b"level_unit\t" in r.stderr


def test_npy_bytes_are_read_as_samples(files):
    r = sh(f"{sys.executable} -c \"import numpy as np, sys; np.save(sys.stdout.buffer, "
           f"np.load('real.npz')['samples'][:4])\" | {CT} translate - --ckpt gctm.safetensors --out t.npz "
           "--force --json",
           files)
    assert r.returncode == 0, r.stderr.decode()
    assert json.loads(r.stdout)["n"] == 4 and np.load(files / "t.npz")["samples"].shape == (4, 8, 8, 1)


def test_closed_pipe_ends_quietly_as_sigpipe(files):
    r = sh(f"set +o pipefail\n{CT} sample --ckpt img.safetensors -n 100000 --out - | head -c 100 >/dev/null\n"
           "echo \"status ${PIPESTATUS[0]}\" >&2", files)
    err = r.stderr.decode()
    assert "status 141" in err, err
    assert "error" not in err.lower() and "Traceback" not in err


def test_text_on_stdin_is_one_error_line(files):
    r = sh(f"echo hello | {CT} likelihood - --ckpt ctm.safetensors", files)
    assert r.returncode == 2 and r.stdout == b""
    lines = r.stderr.decode().strip().splitlines()
    assert lines[-1].startswith("error: standard input holds text, not .npz or .npy bytes")


def test_tables_are_tab_separated_off_a_terminal(files):
    r = sh(f"{CT} sample --ckpt ctm.safetensors -n 4 --out s4.npz --force", files)
    assert r.returncode == 0, r.stderr.decode()
    rows = [ln.split("\t") for ln in r.stdout.decode().splitlines()]
    assert rows and all(len(row) == 2 for row in rows)
    assert dict(rows)["n"] == "4" and dict(rows)["format"] == "npz"


def test_fid_takes_ckpt_as_a_file_or_a_run_directory(files):
    run = files / "run"
    run.mkdir(exist_ok=True)
    (run / "ckpt-000001.safetensors").write_bytes((files / "img.safetensors").read_bytes())
    r = sh(f"{CT} fid stats real.npz -o ref2.npz --features feat.pt --force >/dev/null\n"
           f"{CT} fid --ckpt run --ref ref2.npz --features feat.pt -n 32 --json\n"
           f"{CT} fid img.safetensors --ref ref2.npz --features feat.pt -n 32 --json", files)
    assert r.returncode == 0, r.stderr.decode()
    by_dir, by_file = (json.loads(line) for line in r.stdout.decode().splitlines())
    assert by_dir["source"] == "checkpoint" and by_dir["fid"] == pytest.approx(by_file["fid"], rel=1e-9)
