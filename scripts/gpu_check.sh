#!/usr/bin/env bash
# The checks that need a CUDA GPU, in one invocation of under 10 minutes on one H100 / H200
# (repo root; a python3 with CUDA torch; everything measured goes to $OUT):
#
#   tests    the model tests on the GPU (PONDERSCOPE_TEST_DEVICE=cuda: masked vs sparse vs tiles vs
#            the regrouped AIG route, every model's trace; tests/test_regroup.py's CUDA-only test
#            counts the syncs of a regrouped pass)                        -> pytest_cuda.txt
#   bench    python -m bench.tiles --device cuda at batch 32: SACT-50 and AIG-50 at FLOPs 0.50,
#            masked / sparse / tiles (SACT) or regrouped (AIG) / auto's choice / dense ResNet-50
#                                                               -> bench_tiles_cuda.md, .json
#   nccl     torchrun with NCCL and bf16 autocast: a SACT ResNet-20 on a generated image folder,
#            40 steps, min(2, GPUs) processes (NCCL refuses two ranks on one GPU)
#                                                                         -> torchrun_nccl.txt
#   analyze  ponderscope analyze on CUDA (under torchrun) over that folder -> analyze_cuda.txt
#   api      the API tests on the GPU, if the time left allows            -> pytest_api_cuda.txt
#   and gpu.txt (the machine), summary.txt (each step: ok / FAILED / skipped, seconds).
#
# Without CUDA (this script's own test, on the CPU machine) every CUDA step says so and is skipped,
# and what can run on CPU runs instead: the argument parsing, the refusal of `bench.tiles --device
# cuda`, the CUDA-only test's skip, a bench.tiles smoke run, torchrun with gloo and bf16 on CPU
# and analyze on CPU (files named *_cpu*). --no-cpu-fallback skips those.
#
# Python packages the GPU image lacks (pydantic, fastapi, ...) travel as wheels in .whl/ (or
# .gpu/whl/), both git-ignored: scripts/gpu_wheels.sh downloads them here; the device call then
# carries ".whl". The Fashion-MNIST test split may travel in .gpu/fmnist, text in .gpu/text.
set -uo pipefail

usage() {
  cat <<'EOF'
usage: bash scripts/gpu_check.sh [--out DIR] [--only STEPS] [--skip STEPS] [--budget SECONDS] [--quick] [--no-cpu-fallback]
  --out DIR          where the results go (default: $OUT, else gpu-out)
  --only STEPS       comma-separated subset of: tests,bench,nccl,analyze,api (default: all)
  --skip STEPS       steps to leave out
  --budget SECONDS   wall-clock budget for the whole run (default 560); a step that would not fit is skipped
  --quick            fewer rounds and steps (a smoke test, not for the record)
  --no-cpu-fallback  without CUDA, only report the skipped steps
EOF
}

OUT=${OUT:-gpu-out}
ALL_STEPS="tests,bench,nccl,analyze,api"
STEPS=$ALL_STEPS
SKIP=""
BUDGET=560
QUICK=0
CPU_FALLBACK=1
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT=${2:?--out needs a folder}; shift 2 ;;
    --out=*) OUT=${1#*=}; shift ;;
    --only) STEPS=${2:?--only needs steps}; shift 2 ;;
    --only=*) STEPS=${1#*=}; shift ;;
    --skip) SKIP=${2:?--skip needs steps}; shift 2 ;;
    --skip=*) SKIP=${1#*=}; shift ;;
    --budget) BUDGET=${2:?--budget needs seconds}; shift 2 ;;
    --budget=*) BUDGET=${1#*=}; shift ;;
    --quick) QUICK=1; shift ;;
    --no-cpu-fallback) CPU_FALLBACK=0; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
  esac
done
case "$BUDGET" in ''|*[!0-9]*) echo "gpu_check.sh: --budget must be a whole number of seconds, not '$BUDGET'" >&2; exit 2 ;; esac
for step in ${STEPS//,/ } ${SKIP//,/ }; do
  case ",$ALL_STEPS," in *",$step,"*) ;; *) echo "gpu_check.sh: unknown step '$step' (steps: $ALL_STEPS)" >&2; exit 2 ;; esac
done
wanted() { case ",$STEPS," in *",$1,"*) case ",$SKIP," in *",$1,"*) return 1 ;; esac; return 0 ;; esac; return 1; }

mkdir -p "$OUT" || exit 2
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
note() { echo "gpu_check: $*" | tee -a "$SUMMARY"; }
# record STEP STATUS STARTED [NOTE]: one line of summary.txt
record() { printf '%-8s %-8s %4ss  %s\n' "$1" "$2" "$((SECONDS - $3))" "${4:-}" | tee -a "$SUMMARY"; }
# finish STEP EXIT_STATUS STARTED [NOTE]: record STEP as ok (exit 0) or FAILED
finish() { record "$1" "$([ "$2" -eq 0 ] && echo ok || echo FAILED)" "$3" "${4:-}"; }
# finish_with_tail STEP EXIT_STATUS STARTED FILE: the last lines of the step's output file under $OUT, then finish
finish_with_tail() { tail -4 "$OUT/$4"; finish "$1" "$2" "$3" "$4 (exit $2)"; }
# fits SECONDS: whether a step of at most that long still fits the budget (else it is skipped)
fits() { [ $((BUDGET - SECONDS)) -ge "$1" ]; }
# limit MAX: a step's timeout, MAX or what is left of the budget
limit() { local left=$((BUDGET - SECONDS)); [ "$left" -lt "$1" ] && echo "$left" || echo "$1"; }

# Python: python3 if it holds torch (the GPU image), else this checkout's virtualenv.
PYTHON=${PYTHON:-}
if [ -z "$PYTHON" ]; then
  if python3 -c "import torch" 2>/dev/null; then PYTHON=python3
  elif [ -x .venv/bin/python ]; then PYTHON=$PWD/.venv/bin/python
  else echo "gpu_check.sh: no python with torch (python3 has none, no .venv)" >&2; exit 2; fi
fi
for wheels in .whl .gpu/whl; do
  if ls "$wheels"/*.whl >/dev/null 2>&1; then
    if "$PYTHON" -m pip install -q --upgrade --no-index --no-deps --no-compile --no-cache-dir --target /tmp/gpu-check-site "$wheels"/*.whl 2>/tmp/gpu-check-pip.txt; then
      export PYTHONPATH=/tmp/gpu-check-site${PYTHONPATH:+:$PYTHONPATH}
    else  # (wheels for the GPU image's Python 3.12 do not install into another Python: its own packages serve)
      echo "gpu_check.sh: the wheels in $wheels do not install into $PYTHON ($(tail -1 /tmp/gpu-check-pip.txt)); going on without them" >&2
    fi
    break
  fi
done
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
# Not installed (the GPU image): `ponderscope` as pyproject.toml maps it (its subpackages are the
# checkout's top-level folders), from symbolic links, ahead of the checkout on the path.
if [ "${GPU_CHECK_SHIM:-0}" = 1 ] || ! "$PYTHON" -c "import ponderscope.models" 2>/dev/null; then
  SHIM=/tmp/gpu-check-pkg
  rm -rf "$SHIM" && mkdir -p "$SHIM/ponderscope" || exit 2
  for f in "$PWD"/ponderscope/*; do ln -s "$f" "$SHIM/ponderscope/"; done
  for d in models server training importers static templates checkpoints configs; do ln -sfn "$PWD/$d" "$SHIM/ponderscope/$d"; done
  export PYTHONPATH=$SHIM:$PYTHONPATH
  "$PYTHON" -c "import ponderscope.models" || { echo "gpu_check.sh: ponderscope does not import, even through $SHIM" >&2; exit 2; }
  echo "gpu_check.sh: ponderscope is not installed for $PYTHON: imported through links in $SHIM"
fi
[ -d .gpu/fmnist ] && export PONDERSCOPE_FASHION_MNIST=$PWD/.gpu/fmnist
[ -d .gpu/text ] && export PONDERSCOPE_TEXT=$PWD/.gpu/text
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
TORCHRUN=("$PYTHON" -m torch.distributed.run --standalone)

CUDA=$("$PYTHON" -c "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)" 2>/dev/null || echo 0)
SUFFIX=$([ "$CUDA" -eq 0 ] && echo -cpu)  # the step names of a run without CUDA (the CPU fallback)
{
  echo "gpu_check.sh $(date -u '+%Y-%m-%d %H:%M UTC'), budget ${BUDGET}s, steps: $STEPS${SKIP:+ (skipping $SKIP)}, python: $PYTHON"
  command -v nvidia-smi >/dev/null && nvidia-smi -L
  "$PYTHON" -c "import torch; print('torch', torch.__version__, '| CUDA devices:', torch.cuda.device_count() if torch.cuda.is_available() else 0, '|', torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA')"
  # modules the steps import that an image may lack (carried as wheels: scripts/gpu_wheels.sh)
  "$PYTHON" - <<'PY'
import importlib.util
need = {"analyze": ["pydantic", "PIL", "safetensors", "numpy", "tqdm"], "api": ["fastapi", "starlette", "multipart", "httpx", "jinja2", "pydantic"],
        "tests": ["pytest", "safetensors", "numpy", "tqdm"]}
for step, modules in need.items():
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    print(f"modules for {step}: " + (f"MISSING {', '.join(missing)}" if missing else "all present"))
PY
} 2>&1 | tee "$OUT/gpu.txt"
have() { "$PYTHON" -c "import importlib.util, sys; sys.exit(any(importlib.util.find_spec(m) is None for m in sys.argv[1:]))" "$@"; }
if [ "$CUDA" -eq 0 ]; then
  note "no CUDA device: the CUDA steps ($STEPS) are skipped, nothing is measured on a GPU$([ "$CPU_FALLBACK" -eq 1 ] && echo '; their CPU fallbacks run instead')"
fi

# ---------------------------------------------------------------------------------------------- tests
if wanted tests; then
  started=$SECONDS
  files="tests/test_sparse.py tests/test_tiles.py tests/test_regroup.py tests/test_halting.py tests/test_models.py"
  if [ "$CUDA" -gt 0 ] && fits 60; then
    PONDERSCOPE_TEST_DEVICE=cuda timeout "$(limit 200)" "$PYTHON" -m pytest -q -p no:cacheprovider --no-header -rs $files 2>&1 \
      | tee "$OUT/pytest_cuda.txt" | tail -15
    status=${PIPESTATUS[0]}
    finish tests "$status" "$started" "$(tail -1 "$OUT/pytest_cuda.txt") (exit $status)"
  elif [ "$CUDA" -gt 0 ]; then
    record tests skipped "$started" "not enough of the budget left"
  else
    record tests skipped "$started" "no CUDA device: the CUDA tests did not run"
    if [ "$CPU_FALLBACK" -eq 1 ]; then  # the CUDA-only test skips itself, the route's rules run
      started=$SECONDS
      timeout "$(limit 120)" "$PYTHON" -m pytest -q -p no:cacheprovider --no-header -rs tests/test_regroup.py -k "cuda or route" 2>&1 \
        | tee "$OUT/pytest_cpu.txt" | tail -5
      status=${PIPESTATUS[0]}
      finish tests-cpu "$status" "$started" "$(tail -1 "$OUT/pytest_cpu.txt") (CPU fallback)"
    fi
  fi
fi

# ---------------------------------------------------------------------------------------------- bench
if wanted bench; then
  started=$SECONDS
  quick=$([ "$QUICK" -eq 1 ] && echo --quick)
  if [ "$CUDA" -gt 0 ] && fits 60; then
    timeout "$(limit 180)" "$PYTHON" -m bench.tiles --device cuda --batches 32 $quick --out "$OUT/bench_tiles_cuda.md" --json "$OUT/bench_tiles_cuda.json" 2>&1 \
      | tail -25
    status=${PIPESTATUS[0]}
    finish bench "$status" "$started" "bench_tiles_cuda.md (exit $status)"
  elif [ "$CUDA" -gt 0 ]; then
    record bench skipped "$started" "not enough of the budget left"
  else
    "$PYTHON" -m bench.tiles --device cuda --batches 32 --out - >/dev/null 2>"$OUT/bench_refusal.txt"
    status=$?
    record bench skipped "$started" "no CUDA device: bench.tiles --device cuda exit $status: $(head -1 "$OUT/bench_refusal.txt")"
    rm -f "$OUT/bench_refusal.txt"
    if [ "$CPU_FALLBACK" -eq 1 ] && fits 90; then
      started=$SECONDS
      timeout "$(limit 180)" "$PYTHON" -m bench.tiles --device cpu --quick --batches 1 --families sact,aig --out "$OUT/bench_tiles_cpu_smoke.md" 2>&1 | tail -12
      status=${PIPESTATUS[0]}
      finish bench-cpu "$status" "$started" "bench_tiles_cpu_smoke.md: a smoke run (--quick), not a measurement"
    fi
  fi
fi

# ------------------------------------------------------------------------------------- nccl, analyze
FOLDER=/tmp/gpu-check-folder
RUN=/tmp/gpu-check-run
if wanted nccl || wanted analyze; then
  "$PYTHON" - "$FOLDER" <<'PY'
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
fi
if [ "$CUDA" -gt 0 ]; then DEVICE=cuda; PROCS=$(( CUDA < 2 ? CUDA : 2 )); STEPS_N=40; BATCH=64; TAG=nccl
else DEVICE=cpu; PROCS=1; STEPS_N=4; BATCH=16; TAG=gloo_cpu; fi
[ "$QUICK" -eq 1 ] && STEPS_N=4
if wanted nccl; then
  started=$SECONDS
  if [ "$CUDA" -eq 0 ]; then
    record nccl skipped "$started" "no CUDA device: torchrun with NCCL did not run"
  fi
  if { [ "$CUDA" -gt 0 ] || [ "$CPU_FALLBACK" -eq 1 ]; } && fits 45; then
    started=$SECONDS
    cat > /tmp/gpu-check-train.json <<JSON
{"model": "sact_resnet", "model_kwargs": {"depth": 20}, "task": {"name": "classify"}, "dataset": "imagefolder:$FOLDER",
 "data_options": {"channels": 3, "input_size": 32, "workers": 2}, "steps": $STEPS_N, "batch_size": $BATCH, "lr": 0.05,
 "adaptive": {"tau": 0.01}, "log_every": 10, "save_every": 20, "precision": "bf16"}
JSON
    rm -rf "$RUN"
    { echo "torchrun: $PROCS process(es) on $DEVICE ($([ "$DEVICE" = cuda ] && echo NCCL || echo gloo)), bf16 autocast, $STEPS_N steps"
      timeout "$(limit 150)" "${TORCHRUN[@]}" --nproc_per_node "$PROCS" -m ponderscope train --config /tmp/gpu-check-train.json --out "$RUN" \
        --no-progress --device "$DEVICE" \
      && "$PYTHON" -c "import json; c = json.load(open('$RUN/card.json')); print('card:', c['world_size'], c['devices'], c['train_command'], 'test accuracy', c['metrics']['test']['accuracy'], 'training s', c['training_time_s'])"
    } > "$OUT/torchrun_$TAG.txt" 2>&1
    finish_with_tail "nccl$SUFFIX" $? "$started" "torchrun_$TAG.txt"
  fi
fi
if wanted analyze; then
  started=$SECONDS
  [ "$CUDA" -eq 0 ] && record analyze skipped "$started" "no CUDA device: analyze on CUDA did not run"
  if [ ! -f "$RUN/card.json" ]; then
    { [ "$CUDA" -gt 0 ] || [ "$CPU_FALLBACK" -eq 1 ]; } && record analyze skipped "$started" "no trained checkpoint (the nccl step did not run or failed)"
  elif ! have pydantic PIL; then
    record analyze skipped "$started" "pydantic / PIL missing: carry them as wheels (scripts/gpu_wheels.sh)"
  elif { [ "$CUDA" -gt 0 ] || [ "$CPU_FALLBACK" -eq 1 ]; } && fits 30; then
    rm -rf /tmp/gpu-check-analysis
    { echo "analyze: $PROCS process(es) on $DEVICE"
      timeout "$(limit 120)" "${TORCHRUN[@]}" --nproc_per_node "$PROCS" -m ponderscope analyze "$RUN" --data "imagefolder:$FOLDER" \
        --out /tmp/gpu-check-analysis --device "$DEVICE" --shard-size 16 --no-progress \
      && ls /tmp/gpu-check-analysis && for f in /tmp/gpu-check-analysis/*.json; do echo "== $f"; head -c 1500 "$f"; echo; done
    } > "$OUT/analyze_$DEVICE.txt" 2>&1
    finish_with_tail "analyze$SUFFIX" $? "$started" "analyze_$DEVICE.txt"
  fi
fi

# ---------------------------------------------------------------------------------------------- api
if wanted api; then
  started=$SECONDS
  if [ "$CUDA" -eq 0 ]; then
    record api skipped "$started" "no CUDA device: the API tests on CUDA did not run"
  elif ! have fastapi starlette multipart pydantic httpx; then
    record api skipped "$started" "fastapi / starlette / python-multipart / pydantic / httpx missing: carry them as wheels (scripts/gpu_wheels.sh)"
  elif fits 90; then
    PONDERSCOPE_TEST_DEVICE=cuda timeout "$(limit 240)" "$PYTHON" -m pytest -q -p no:cacheprovider --no-header -rs tests/test_api.py 2>&1 \
      | tee "$OUT/pytest_api_cuda.txt" | tail -8
    status=${PIPESTATUS[0]}
    finish api "$status" "$started" "$(tail -1 "$OUT/pytest_api_cuda.txt") (exit $status)"
  else
    record api skipped "$started" "not enough of the budget left"
  fi
fi

note "done in ${SECONDS}s (budget ${BUDGET}s); results in $OUT: $(cd "$OUT" && ls | tr '\n' ' ')"
grep -q FAILED "$SUMMARY" && exit 1
exit 0
