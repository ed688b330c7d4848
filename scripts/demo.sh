#!/usr/bin/env bash
# End-to-end demo on CPU, nothing downloaded (`make demo`):
#   synthetic world -> webdataset shards + BPE tokenizer -> DeepSpeed ZeRO-3 pretraining ->
#   export -> zero-shot retrieval scored by caption truth -> fine-tuning and evaluation of every
#   task that exists (retrieval, VQA, NLVR2, grounding, classification, a GLUE-style task) ->
#   ${XFM_DATA:-data}/demo/results.json (each metric beside its chance level), loss_curves.png,
#   retrieval_examples.png.
# Runs live under ${XFM_RUNS:-runs}/demo. Re-running reuses every finished stage (a killed
# pretraining resumes from its last checkpoint). Knobs: DEMO_STEPS (pretraining steps, default
# the config's), DEMO_NPROC (pretraining ranks), DEMO_SIZE (world size: test | demo | small),
# DEMO_TASKS (comma-separated fine-tuning tasks); extra arguments go to scripts/demo_run.py.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export XFM_DATA=${XFM_DATA:-data} XFM_RUNS=${XFM_RUNS:-runs}
# threads per process: the cores shared among the ranks (scripts/demo_run.py) unless OMP_NUM_THREADS is set
export DS_ACCELERATOR=${DS_ACCELERATOR:-cpu} TOKENIZERS_PARALLELISM=false
ARGS=(--data "$XFM_DATA" --runs "$XFM_RUNS/demo" --size "${DEMO_SIZE:-demo}" --nproc "${DEMO_NPROC:-1}")
[ -n "${DEMO_STEPS:-}" ] && ARGS+=(--steps "$DEMO_STEPS")
[ -n "${DEMO_TASKS:-}" ] && ARGS+=(--tasks "$DEMO_TASKS")
exec $PY scripts/demo_run.py "${ARGS[@]}" "$@"
