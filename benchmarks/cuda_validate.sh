#!/usr/bin/env bash
# On a CUDA machine (issue 21, item 5): the tiny model's smoke grid and plan's validation grids
# (random ~0.1/0.5/1 B Llamas, every method and the LoRA / checkpointing variants) on the GPU,
# bf16 weights (weights: auto). Packages the GPU image lacks come as wheels in .whl/ (see
# benchmarks/notes.md). The grids run side by side, one process each with its own cache and CPU
# threads (each process reads its own peak CUDA memory, so they do not disturb each other's
# figure; their times are not comparable with a lone run). Everything comes back in $OUT as
# gpu.txt (versions, exit codes, seconds) and runs.tgz (logs and run folders); the table is made
# here afterwards:  python benchmarks/validate_plan.py --device cuda --repredict RUNS
set -u
OUT=${OUT:-/tmp/cuda_out}; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
RUNS=/tmp/runs; mkdir -p $RUNS
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, transformers, peft, accelerate; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'accelerate', accelerate.__version__)" | tee -a "$OUT/gpu.txt"
METHODS=$(python3 -c "from methods import REGISTRY, get_method; get_method('ga'); print(' '.join(sorted(REGISTRY)))" 2>>"$OUT/gpu.txt")
echo "methods: $METHODS" | tee -a "$OUT/gpu.txt"
smoke() {
  sed 's/^device: cpu/device: cuda/' configs/smoke.yaml > /tmp/smoke-cuda.yaml
  local start=$(date +%s)
  UNLEARNBENCH_CACHE=/tmp/ubc-smoke timeout ${SMOKE_LIMIT:-400} python3 -m unlearnbench.cli run /tmp/smoke-cuda.yaml --out $RUNS/smoke-cuda > $RUNS/smoke.log 2>&1
  echo "smoke rc=$? $(( $(date +%s) - start )) s" | tee -a "$OUT/gpu.txt"
}
size() {
  local start=$(date +%s)
  UNLEARNBENCH_CACHE=/tmp/ubc-$1 timeout ${SIZE_LIMIT:-450} python3 benchmarks/validate_plan.py "$1" --device cuda --variants --methods $METHODS > $RUNS/plan-$1.log 2>&1
  echo "plan $1 rc=$? $(( $(date +%s) - start )) s" | tee -a "$OUT/gpu.txt"
  mv benchmarks/runs/plan-$1-cuda $RUNS/ 2>/dev/null
}
pids=()
[ -z "${NO_SMOKE:-}" ] && { smoke & pids+=($!); }
for s in ${SIZES:-1b 0.5b 0.1b}; do size "$s" & pids+=($!); done
wait "${pids[@]}"
nvidia-smi --query-gpu=memory.used --format=csv >> "$OUT/gpu.txt"
tar czf "$OUT/runs.tgz" --exclude='*.lock' --exclude='*.safetensors' --exclude='*.pt' -C /tmp runs
tail -n 3 $RUNS/*.log
