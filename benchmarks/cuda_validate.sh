#!/usr/bin/env bash
# On a CUDA machine (issue 21, item 5): the tiny model's smoke grid and plan's validation grids
# (random ~0.1/0.5/1 B Llamas, every method) on the GPU, bf16 weights (weights: auto). Packages
# the GPU image lacks come as wheels in .whl/ (see benchmarks/notes.md). Results go to $OUT.
set -u
OUT=${OUT:-/tmp/cuda_out}; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
export UNLEARNBENCH_CACHE=${UNLEARNBENCH_CACHE:-/tmp/ubc} PYTHONUNBUFFERED=1 TQDM_DISABLE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, transformers, peft, accelerate; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'accelerate', accelerate.__version__)" | tee -a "$OUT/gpu.txt"
if [ -z "${NO_SMOKE:-}" ]; then
  sed 's/^device: cpu/device: cuda/' configs/smoke.yaml > /tmp/smoke-cuda.yaml
  [ -n "${SMOKE_METHODS:-}" ] && sed -i "s/^methods: all/methods: [${SMOKE_METHODS}]/" /tmp/smoke-cuda.yaml
  start=$(date +%s)
  python3 -m unlearnbench.cli run /tmp/smoke-cuda.yaml --out /tmp/smoke-cuda > "$OUT/smoke.log" 2>&1
  echo "smoke rc=$? $(( $(date +%s) - start )) s" | tee -a "$OUT/gpu.txt"
  tar czf "$OUT/smoke.tgz" -C /tmp smoke-cuda
fi
for size in ${SIZES:-0.1b 0.5b 1b}; do
  start=$(date +%s)
  timeout ${SIZE_LIMIT:-400} python3 benchmarks/validate_plan.py "$size" --device cuda ${PLAN_ARGS:-} > "$OUT/plan-$size.log" 2>&1
  echo "plan $size rc=$? $(( $(date +%s) - start )) s" | tee -a "$OUT/gpu.txt"
  tar czf "$OUT/plan-$size.tgz" --exclude=config.yaml.lock -C "$PWD/benchmarks/runs" "plan-$size-cuda"
done
cp benchmarks/results/plan_validation_cuda.* "$OUT/" 2>/dev/null
tail -25 benchmarks/results/plan_validation_cuda.md 2>/dev/null
