#!/usr/bin/env bash
# Every GPU figure BENCHMARKS.md records, in one run, part by part (PARTS picks some):
#   kernels   bench/kernels_gpu.py         Triton attention and contrastive kernels vs torch (SDPA); ~30 s
#   overhead  bench/attention_overhead.py  host vs device time of one small attention call; ~20 s
#   step      bench/gpu_step.py            base-model training step, torch vs auto vs Triton kernels; ~100 s
#   engine    bench/pretrain_step.py       the DeepSpeed ZeRO-3 engine, one GPU, bf16, the base model on
#                                          the synthetic world (configs/pretrain/base_synthetic.yaml),
#                                          loader included; not yet seen to finish on an H200 in 150 s
#   pipeline  bench/pipeline_speed.py      xfm.Pipeline inference of the base model on the GPU (not yet run there)
#   compiled  bench/gpu_step.py            the same step with the blocks compiled; compiling the base
#                                          model took more than 150 s on an H200
# Each part has its own time limit, so a part that hangs or fails leaves the others' figures.
#   [PARTS="kernels step"] bash bench/gpu_all.sh OUT_DIR
# xfm must be importable as `make install` leaves it (editable): from a plain wheel install, run
# the scripts from a copy of bench/, configs/ and tests/ without the source folders, or the
# checkout's xfm/ folder shadows the installed package in the engine's subprocess.
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

PARTS=${PARTS:-kernels overhead step engine pipeline compiled}
for p in $PARTS; do
  case $p in
    kernels) part kernels "${KERNELS_LIMIT:-170}" $PYTHON bench/kernels_gpu.py --dtype bf16 --out "$OUT/kernels.jsonl" ;;
    overhead) part overhead "${OVERHEAD_LIMIT:-90}" $PYTHON bench/attention_overhead.py ;;
    step) part step "${STEP_LIMIT:-200}" $PYTHON bench/gpu_step.py --variants torch,auto,triton --steps 10 --warmup 3 \
        --out "$OUT/step.jsonl" ;;
    engine) part engine "${ENGINE_LIMIT:-300}" $PYTHON bench/pretrain_step.py \
        --config configs/pretrain/base_synthetic.yaml --precision bf16 --procs 1 --steps 30 --skip 5 --loader-batches 10 ;;
    pipeline) part pipeline "${PIPELINE_LIMIT:-120}" $PYTHON bench/pipeline_speed.py --size base --device cuda \
        --batch-size 96 --out "$OUT/pipeline.jsonl" ;;
    compiled) part compiled "${COMPILED_LIMIT:-600}" $PYTHON bench/gpu_step.py --variants torch,torch+compile,triton+compile \
        --steps 8 --warmup 3 --out "$OUT/step_compiled.jsonl" ;;
    *) echo "unknown part $p (kernels overhead step engine pipeline compiled)"; exit 2 ;;
  esac
done
