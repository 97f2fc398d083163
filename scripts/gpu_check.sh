#!/usr/bin/env bash
# The checks that need a CUDA GPU, in one run (repo root, a machine with CUDA torch):
#   1. the model and API tests on the GPU (PONDERSCOPE_TEST_DEVICE=cuda: sparse vs masked
#      execution, every model's trace, the server on device cuda);
#   2. `python -m bench --device cuda`: sparse / masked / dense times of SACT-50 and AIG-50.
# Output in $OUT (default gpu-out/). On the lent device machine, the Python packages it lacks
# travel as wheels in .gpu/whl and the Fashion-MNIST test split in .gpu/fmnist (both git-ignored).
set -uo pipefail
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
if [ -d .gpu/whl ]; then
  python3 -m pip install -q --upgrade --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu/whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
[ -d .gpu/fmnist ] && export PONDERSCOPE_FASHION_MNIST=$PWD/.gpu/fmnist
[ -d .gpu/text ] && export PONDERSCOPE_TEXT=$PWD/.gpu/text
export PONDERSCOPE_TEST_DEVICE=cuda PYTHONUNBUFFERED=1 OMP_NUM_THREADS=4
{ nvidia-smi -L; python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"; } 2>&1 | tee "$OUT/gpu.txt"
timeout 300 python3 -m pytest -q -p no:cacheprovider --no-header -rs tests/test_sparse.py tests/test_models.py tests/test_halting.py tests/test_api.py \
  2>&1 | tee "$OUT/pytest_cuda.txt" | tail -25
timeout 240 python3 -m bench --device cuda --only sact,aig --out - 2>&1 | tee "$OUT/bench_cuda.txt"
