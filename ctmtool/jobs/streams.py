"""The one typed stream format of `--out -` and of `-` as an input: the bytes of an .npz file.

Writers (`ctmtool sample|translate --out -`) put on stdout exactly what they would write to FILE.npz: key
`samples` (uint8 NHWC images, or float32 (N, D) points), plus `labels` / `inputs` when there are any; the
array headers carry dtype and shape. Readers (`likelihood -`, `fid -`, `fid stats -`, `translate -`,
`translate edit -`) take .npz bytes or the bytes of one .npy array (read as `samples`) on stdin.
"""

from __future__ import annotations

import io
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ctmtool.errors import UserError

STDIO = "-"
NPZ_MAGIC = b"PK"
NPY_MAGIC = b"\x93NUMPY"
CHUNK = 1 << 16


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def write_npz(arrays: dict[str, np.ndarray], stream: BinaryIO | None = None) -> None:
    """Write `arrays` as .npz bytes to `stream` (default: stdout's binary buffer) and flush."""
    stream = stream or sys.stdout.buffer
    data = memoryview(npz_bytes(arrays))
    for start in range(0, len(data), CHUNK):  # a reader that goes away is noticed at the next chunk
        stream.write(data[start:start + CHUNK])
    stream.flush()


def _from_bytes(data: bytes) -> bytes:
    """.npz bytes of `data` (.npz or .npy bytes); a UserError for anything else."""
    if not data:
        raise UserError("standard input is empty; pipe in .npz or .npy bytes, e.g. `ctmtool sample --out - | "
                        "...`")
    if data.startswith(NPY_MAGIC):
        try:
            arr = np.load(io.BytesIO(data), allow_pickle=False)
        except ValueError as err:
            raise UserError(f"standard input is not a readable .npy array ({err}); pipe in .npz or .npy "
                            "bytes") from None
        return npz_bytes({"samples": arr})
    if data.startswith(NPZ_MAGIC):
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as z:
                if not any(name.endswith(".npy") for name in z.namelist()):
                    raise zipfile.BadZipFile("no arrays in it")
        except zipfile.BadZipFile as err:
            raise UserError(f"standard input is not a readable .npz ({err}); pipe in .npz or .npy "
                            "bytes") from None
        return data
    what = "text" if data[:64].isascii() else "bytes of an unknown format"
    raise UserError(f"standard input holds {what}, not .npz or .npy bytes; pipe `ctmtool sample --out -` or "
                    "`cat FILE.npz` into it")


@contextmanager
def input_path(path: str | Path | None, stdin: BinaryIO | None = None) -> Iterator[str | Path | None]:
    """`path` itself, or for `-` the stream on stdin staged as a temporary `stdin.npz` (removed
    afterwards)."""
    if str(path) != STDIO:
        yield path
        return
    stream = stdin or sys.stdin.buffer
    if stream.isatty():
        raise UserError("`-` reads .npz bytes from standard input, but it is a terminal; pipe data in, e.g. "
                        "`ctmtool sample --out - | ctmtool likelihood -`")
    data = _from_bytes(stream.read())
    folder = Path(tempfile.mkdtemp(prefix="ctmtool-stdin-"))
    try:
        staged = folder / "stdin.npz"
        staged.write_bytes(data)
        yield staged
    finally:
        shutil.rmtree(folder, ignore_errors=True)
