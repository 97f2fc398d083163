#!/usr/bin/env bash
# The checks that need a CUDA GPU, in one run (repo root, a machine with CUDA torch):
#   1. the model and API tests on the GPU (PONDERSCOPE_TEST_DEVICE=cuda: sparse vs masked
#      execution, every model's trace, the server on device cuda);
#   2. `python -m bench --device cuda`: sparse / masked / dense times of SACT-50 and AIG-50;
#   3. a short torchrun training run with NCCL and bf16 autocast on every GPU (a synthetic image
#      folder), its card's world size and devices, and `ponderscope analyze` under torchrun on CUDA.
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

# 3. NCCL: every GPU of the machine, a tiny SACT ResNet on a synthetic folder, bf16 autocast
GPUS=$(python3 -c "import torch; print(torch.cuda.device_count())")
FOLDER=/tmp/gpu-folder
python3 - "$FOLDER" <<'PY'
import sys, numpy as np
from pathlib import Path
from PIL import Image
rng = np.random.default_rng(0)
for split, n in (("train", 64), ("val", 16)):
    for c in range(4):
        d = Path(sys.argv[1]) / split / f"c{c}"; d.mkdir(parents=True, exist_ok=True)
        for k in range(n):
            a = (rng.random((40, 40, 3)) * 90).astype(np.uint8); a[..., c % 3] += 120
            Image.fromarray(a).save(d / f"{k}.jpg", quality=90)
PY
cat > /tmp/gpu-train.json <<JSON
{"model": "sact_resnet", "model_kwargs": {"depth": 20}, "task": {"name": "classify"}, "dataset": "imagefolder:$FOLDER",
 "data_options": {"channels": 3, "input_size": 32, "workers": 2}, "steps": 40, "batch_size": 64, "lr": 0.05,
 "adaptive": {"tau": 0.01}, "log_every": 10, "save_every": 20, "precision": "bf16"}
JSON
rm -rf /tmp/gpu-run /tmp/gpu-analysis
{ timeout 240 torchrun --standalone --nproc_per_node "$GPUS" -m ponderscope train --config /tmp/gpu-train.json --out /tmp/gpu-run --no-progress --device cuda \
  && python3 -c "import json; c = json.load(open('/tmp/gpu-run/card.json')); print('card:', c['world_size'], c['devices'], c['train_command'], 'test accuracy', c['metrics']['test']['accuracy'], 'training s', c['training_time_s'])" \
  && timeout 120 torchrun --standalone --nproc_per_node "$GPUS" -m ponderscope analyze /tmp/gpu-run --data "imagefolder:$FOLDER" --out /tmp/gpu-analysis --device cuda --shard-size 16 --no-progress; } \
  2>&1 | tee "$OUT/torchrun_nccl.txt" | tail -20
