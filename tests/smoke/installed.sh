#!/usr/bin/env bash
# Smoke test of an installed ctmtool (CI runs it after installing the wheel, not editable, into a fresh
# environment): from an empty folder outside the checkout, the README's main job shortened with --kimg,
# then every command once on the files it made, and the stream pipelines.
#
#   tests/smoke/installed.sh VENV_BIN_DIR [WORK_DIR]
set -euo pipefail
bin=$(cd "$1" && pwd)
work=${2:-$(mktemp -d)}
mkdir -p "$work" && cd "$work"
export PATH="$bin:$PATH" OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
py="$bin/python"
step() { echo "--- $*" >&2; }

step "the package comes from the install, not the checkout"
"$py" - <<'PY'
import ctmtool, sys
from pathlib import Path
here = Path(ctmtool.__file__).resolve()
assert "site-packages" in here.parts, f"ctmtool imported from {here}, not from the installed wheel"
print(f"ctmtool from {here.parent}", file=sys.stderr)
PY

step "version, help, presets"
ctmtool --version
ctmtool --help >/dev/null
for c in presets teacher "teacher import" import distill sample "sample sweep" likelihood fid "fid stats" \
         translate "translate edit" export serve; do
  ctmtool $c --help >/dev/null
done
test "$(ctmtool presets --json | "$py" -c 'import json,sys; print(len(json.load(sys.stdin)["presets"]))')" -ge 10
ctmtool presets toy >/dev/null

step "the README main job, shortened"
ctmtool teacher --preset toy --kimg 26 --json >teacher.json
ctmtool distill --preset toy --teacher runs/toy/teacher --kimg 13 --json >distill.json
ctmtool sample --ckpt runs/toy/ctm --nfe 1 --n 4096 --out toy-ctm-nfe1.png --json >/dev/null
test -s toy-ctm-nfe1.png
test -s runs/toy/ctm/stats.jsonl && test -s runs/toy/ctm/log.txt

step "sample, likelihood, sweep"
ctmtool sample --nfe 1 --gamma 0 -n 512 --json >/dev/null      # newest checkpoint of runs/toy/ctm
mkdir -p data && mv samples.npz data/
ctmtool likelihood data/ -n 64 --json >/dev/null
ctmtool sample sweep --nfe 1,2 --gamma 0 -n 256 --out sweep.json --json >/dev/null
test -s sweep.png

step "streams"
ctmtool sample --nfe 1 -n 64 --out - | ctmtool likelihood - --ckpt runs/toy/ctm -n 16 --json >/dev/null
set +o pipefail
ctmtool sample --nfe 1 -n 20000 --out - 2>/dev/null | head -c 100 >/dev/null
rc=${PIPESTATUS[0]}
set -o pipefail
test "$rc" = 141 || { echo "closed pipe: exit $rc, expected 141" >&2; exit 1; }

step "edit and translate"
ctmtool translate edit data/samples.npz --ckpt runs/toy/ctm --strength 0.5 --out edited.npz --json >/dev/null
ctmtool distill --preset toy-translate --kimg 2.56 --json >/dev/null
"$py" -c "import numpy as np; np.savez('moons.npz', samples=np.random.default_rng(0).normal(size=(32, 2)).astype('float32'))"
ctmtool translate moons.npz --ckpt runs/toy-translate/gctm --out moved.npz --json >/dev/null
ctmtool translate moons.npz --ckpt runs/toy-translate/gctm --out - | "$py" -c "import io,sys,numpy as np; assert np.load(io.BytesIO(sys.stdin.buffer.read()))['samples'].shape == (32, 2)"

step "fid with a TorchScript feature network"
cat >make_feat.py <<'PY'  # TorchScript needs the source in a file
import numpy as np, torch
class Feat(torch.nn.Module):
    def forward(self, x):
        return torch.nn.functional.adaptive_avg_pool2d(x.float() / 255, 4).flatten(1)
torch.jit.script(Feat()).save("feat.pt")
rng = np.random.default_rng(0)
np.savez("real.npz", samples=rng.integers(0, 256, (64, 16, 16, 3), dtype=np.uint8))
np.savez("fake.npz", samples=rng.integers(0, 256, (64, 16, 16, 3), dtype=np.uint8))
PY
"$py" make_feat.py
ctmtool fid stats real.npz -o ref.npz --features feat.pt --json >/dev/null
ctmtool fid fake.npz --ref ref.npz --features feat.pt --json >/dev/null
cat fake.npz | ctmtool fid - --ref ref.npz --features feat.pt --json >/dev/null

step "import and teacher import refuse a file in no known format (one error line, exit 2)"
echo "not a checkpoint" >junk.pt
echo "not a pickle" >junk.pkl
for cmd in "import junk.pt --out junk.safetensors" "teacher import junk.pkl --out junk2.safetensors"; do
  set +e
  ctmtool $cmd 2>import.err; rc=$?
  set -e
  test "$rc" = 2 && test "$(wc -l <import.err)" = 1 && grep -q "^error: " import.err \
    || { echo "ctmtool $cmd: exit $rc, stderr:" >&2; cat import.err >&2; exit 1; }
done
test ! -e junk.safetensors && test ! -e junk2.safetensors

step "export and serve"
ctmtool export --ckpt runs/toy/ctm --out toy.onnx --json >/dev/null
test -s toy.onnx
port=$("$py" -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
ctmtool serve --ckpt runs/toy/ctm --port "$port" --backend torch 2>serve.err &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
"$py" - "$port" <<'PY'
import sys, time, urllib.request
for _ in range(300):
    try:
        page = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/", timeout=2).read()
        assert b"<html" in page.lower()
        break
    except OSError:
        time.sleep(0.2)
else:
    sys.exit("serve did not answer within 60 s")
PY
kill "$server"; wait "$server" 2>/dev/null || true
trap - EXIT
echo "installed smoke test passed in $work" >&2
