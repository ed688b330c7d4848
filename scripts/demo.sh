#!/usr/bin/env bash
# End-to-end demo on CPU, nothing downloaded:
#   synthetic world -> webdataset shards + BPE tokenizer -> 2-rank DeepSpeed ZeRO-3 pretraining of
#   the tiny model -> export (consolidated safetensors) -> reload with XFM.from_pretrained and
#   score image-text retrieval on the world's held-out pictures.
# Outputs under ${XFM_DATA:-data}/ (world) and ${XFM_RUNS:-runs}/demo (run). Re-running reuses the
# world and resumes the run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export XFM_DATA=${XFM_DATA:-data}
RUN=${XFM_RUNS:-runs}/demo
STEPS=${DEMO_STEPS:-300}
NPROC=${DEMO_NPROC:-2}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} DS_ACCELERATOR=${DS_ACCELERATOR:-cpu} TOKENIZERS_PARALLELISM=false

echo "== 1/4 synthetic world + shards + tokenizer -> $XFM_DATA/world"
if [ ! -f "$XFM_DATA/world/world.json" ]; then
  $PY -m xfm.data_prep.cli synth --out "$XFM_DATA/world" --seed 0 --size demo --prepare
else
  $PY -c "from xfm.data_prep.synth import prepare_world; prepare_world('$XFM_DATA/world', seed=0, size='demo')"
fi

echo "== 2/4 pretraining: $NPROC ranks, ZeRO-3, $STEPS steps -> $RUN"
# point every stream at the shards this world's stats.json lists
SOURCES=()
for kind in pairs regions text images; do
  pattern=$($PY -c "import json,sys; print(json.load(open(sys.argv[1]))['pattern'])" "$XFM_DATA/world/shards/$kind/stats.json")
  SOURCES+=(--set "data.$kind.sources=[{urls: \"$pattern\"}]")
done
RESUME=()
[ -f "$RUN/checkpoints/latest" ] && RESUME=(--resume)
$PY -m torch.distributed.run --standalone --nproc_per_node "$NPROC" -m xfm.pretrain.cli \
  --config configs/pretrain/demo.yaml --out "$RUN" --steps "$STEPS" \
  --set "data.tokenizer=$XFM_DATA/world/tokenizer" "${SOURCES[@]}" "${RESUME[@]}"

echo "== 3/4 export -> $RUN/export"
$PY -m xfm.pretrain.export "$RUN" --out "$RUN/export"

echo "== 4/4 reload and evaluate zero-shot retrieval on held-out pictures"
$PY scripts/demo_eval.py --model "$RUN/export" --world "$XFM_DATA/world" --metrics "$RUN/demo_eval.json"

echo "== losses (first and last logged step, $RUN/metrics.jsonl)"
$PY - "$RUN/metrics.jsonl" <<'PYEOF'
import json, sys
rows = [r for r in map(json.loads, open(sys.argv[1])) if "loss" in r]
first, last = rows[0], rows[-1]
for key in sorted(k for k in first if k.startswith("loss")):
    print(f"  {key:28s} {first[key]:8.3f} -> {last.get(key, float('nan')):8.3f}")
PYEOF
