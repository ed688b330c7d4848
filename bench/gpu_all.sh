#!/usr/bin/env bash
# Every GPU figure BENCHMARKS.md records, in one run of about 8 minutes on one H200:
#   1. bench/kernels_gpu.py   the Triton attention and contrastive kernels against torch (SDPA)
#   2. bench/gpu_step.py      a training step of the base model, torch vs Triton kernels, eager/compiled
#   3. bench/pretrain_step.py the DeepSpeed ZeRO-3 engine, one GPU, bf16, the base model on the
#                             synthetic world (configs/pretrain/base_synthetic.yaml), loader included
# Each part has its own time limit, so a part that hangs or fails leaves the others' figures.
#   bash bench/gpu_all.sh OUT_DIR      (needs xfm and its requirements importable by $PYTHON)
set -u
OUT=${1:?usage: bash bench/gpu_all.sh OUT_DIR}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false DS_ACCELERATOR=cuda
unset TRITON_INTERPRET
cd "$(dirname "$0")/.."

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv > "$OUT/machine.txt" 2>&1
$PYTHON - >> "$OUT/machine.txt" 2>&1 <<'PY'
import os, platform, torch, triton, transformers, timm, deepspeed
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda,
      "triton", triton.__version__, "transformers", transformers.__version__, "timm", timm.__version__,
      "deepspeed", deepspeed.__version__, "cpus", os.cpu_count())
print("device", torch.cuda.get_device_name(), torch.cuda.get_device_properties(0).multi_processor_count, "SMs")
PY
cat "$OUT/machine.txt"

part() {  # part NAME SECONDS CMD...: run with a limit, keep its log, show its end
  local name=$1 limit=$2
  shift 2
  echo "== $name (limit ${limit}s)"
  local start=$SECONDS
  timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
  echo "== $name rc=$? in $((SECONDS - start))s"
  grep -v "^  \|Warning\|warn(" "$OUT/$name.log" | tail -n "${TAIL:-30}"
}

part kernels "${KERNELS_LIMIT:-170}" $PYTHON bench/kernels_gpu.py --dtype bf16 --out "$OUT/kernels.jsonl"
part step "${STEP_LIMIT:-200}" $PYTHON bench/gpu_step.py --steps 10 --warmup 3 --out "$OUT/step.jsonl"
part engine "${ENGINE_LIMIT:-160}" $PYTHON bench/pretrain_step.py --config configs/pretrain/base_synthetic.yaml \
    --precision bf16 --procs 1 --steps 30 --skip 5 --loader-batches 10
