#!/usr/bin/env bash
# Download, here (with network), the wheels of the Python packages that scripts/gpu_check.sh needs
# and the GPU image lacks (/work/.library/device/KINDS.md lists what it holds: torch, numpy,
# pillow, safetensors, tqdm, pytest, httpx, jinja2 are there; pydantic, fastapi, starlette and
# python-multipart are not), for its Python 3.12 on x86-64, into .whl/ (git-ignored). The device
# call then carries ".whl"; gpu_check.sh installs them into /tmp/gpu-check-site. The versions are
# the ones this checkout's .venv runs (pyproject.toml pins fastapi and python-multipart).
set -euo pipefail
DEST=${1:-.whl}
mkdir -p "$DEST"
PACKAGES=(pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
          fastapi==0.165.0 starlette==1.10.0 annotated-doc==0.0.7 python-multipart==0.0.34 sniffio==1.3.1)
PLATFORMS=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do PLATFORMS+=(--platform "$p"); done
PIP=${PIP:-python3 -m pip}
[ -x .venv/bin/python ] && PIP=".venv/bin/python -m pip"
$PIP download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${PLATFORMS[@]}" -d "$DEST" "${PACKAGES[@]}"
ls -la "$DEST"
