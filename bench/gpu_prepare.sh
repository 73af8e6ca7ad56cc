#!/usr/bin/env bash
# Build what must travel to the GPU machine (its Python is 3.12, with torch/triton/timm but no pydantic or
# clean-fid, and no network; ../shared does not travel):
#   .whl/       wheels for CPython 3.12 manylinux x86_64: pydantic (+ pydantic_core, annotated-types,
#               typing-inspection, typing_extensions) and clean-fid (+ tqdm, requests and its deps), at the
#               versions pinned in constraints.txt
#   .devcarry/  fd_a.pt (feature network) and the CIFAR-10 JPEG tar from ../shared/data
# Both folders are git-ignored; name them in the run tool's `carry`. Then the one command for the machine is:
#   pip install -q --no-index --find-links .whl pydantic clean-fid && python bench/gpu_check.py --out $OUT \
#     --features .devcarry/fd_a.pt --cifar .devcarry/cifar10-jpeg-q75.tar.gz
# with carry [".whl", ".devcarry"] and timeout_s 540 (the check itself stops after --budget, 480 s by default).
# pip installs only what the machine lacks (--no-index: nothing is downloaded; torch etc. are already there).
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED="${SHARED:-$( [ -d ../shared/data ] && echo ../shared || echo /work/shared )}"
pin() { grep -i "^$1==" constraints.txt | head -1; }
PKGS=(pydantic pydantic_core annotated-types typing-inspection typing_extensions clean-fid tqdm requests
      urllib3 idna charset-normalizer certifi)
SPECS=()
for p in "${PKGS[@]}"; do SPECS+=("$(pin "$p")"); done
rm -rf .whl && mkdir -p .whl
python3 -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --abi cp312 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux_2_28_x86_64 -d .whl "${SPECS[@]}" 2> >(grep -v "^WARNING: Location" >&2)
mkdir -p .devcarry
cp "$SHARED/data/fd-cifar10/fd_a.pt" "$SHARED/data/cifar10-jpeg/cifar10-jpeg-q75.tar.gz" .devcarry/
# the peers stage's checkouts (optional): OFFICIAL=/path/to/ctm-cifar10 KDIFFUSION=/path/to/k-diffusion; then add
#   --official .devcarry/ctm-cifar10 --kdiffusion .devcarry/k-diffusion to the gpu_check command
if [ -n "${OFFICIAL:-}" ]; then rm -rf .devcarry/ctm-cifar10 && mkdir -p .devcarry/ctm-cifar10 && \
  cp -r "$OFFICIAL"/cm "$OFFICIAL"/pg_modules "$OFFICIAL"/feature_networks "$OFFICIAL"/torch_utils .devcarry/ctm-cifar10/ 2>/dev/null || \
  cp -r "$OFFICIAL"/. .devcarry/ctm-cifar10/; fi
if [ -n "${KDIFFUSION:-}" ]; then rm -rf .devcarry/k-diffusion && mkdir -p .devcarry/k-diffusion && \
  cp -r "$KDIFFUSION"/k_diffusion .devcarry/k-diffusion/; fi
ls -la .whl .devcarry
du -shc .whl .devcarry | tail -1
