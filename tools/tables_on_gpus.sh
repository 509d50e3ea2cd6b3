#!/usr/bin/env bash
# The GPU tables as concurrent jobs over the visible GPUs: SmolLM2-135M leaves an H200 mostly idle, so several table
# jobs share one GPU well (on 2 H200s: ptq_bits' remaining rows, the rank ablation and the QAT table on GPU 0 while
# three PEFT tasks train on GPU 1). Every job resumes from its own journal under RUN_DIR; rerun until all print done.
#
#   MODEL=/path/smol.gguf RUN_DIR=/tmp/runs SECONDS_LIMIT=540 bash tools/tables_on_gpus.sh
#   PTQ="ptq_bits ptq_rank_ablation" QAT=1 PEFT="lords_roman kjv" ... (choose the jobs; defaults: all of them)
#
# Not for timing: jobs that share a GPU slow each other, so speed comes from `peft_serving` and the kernel
# benchmarks, run alone. Render afterwards with --render (see docs/peft_table.md, README "The paper's PTQ tables").
set -u
MODEL=${MODEL:?a model path, e.g. the SmolLM2 GGUF}
RUN_DIR=${RUN_DIR:-outputs/runs/tables_on_gpus}
LIMIT=${SECONDS_LIMIT:-0}            # 0: no limit
PTQ=${PTQ-ptq_bits ptq_refine_ablation ptq_rank_ablation}
QAT=${QAT-1}
PEFT=${PEFT-lords_roman lords_kjv_prophets kjv}
GPUS=$(python3 -c "import torch; print(torch.cuda.device_count())")
[ "$GPUS" -ge 1 ] || { echo "tables_on_gpus.sh needs a CUDA GPU"; exit 2; }
mkdir -p "$RUN_DIR/logs"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
job() {  # gpu log-name command...
  local gpu=$1 name=$2; shift 2
  if [ "$LIMIT" -gt 0 ]; then set -- timeout "$LIMIT" "$@"; fi
  (CUDA_VISIBLE_DEVICES=$gpu "$@" >> "$RUN_DIR/logs/$name.log" 2>&1; echo "exit $? $(date +%T)" >> "$RUN_DIR/logs/$name.log") &
}
second=$((GPUS > 1 ? 1 : 0))
[ -n "$PTQ" ] && job 0 ptq python3 -m lords_pipelines.ptq_tables $PTQ --model "$MODEL" --run-dir "$RUN_DIR/ptq"
[ -n "$QAT" ] && job 0 qat python3 -m lords_pipelines.ptq_tables qat --model "$MODEL" --run-dir "$RUN_DIR/qat"
for task in $PEFT; do
  job $second "peft_$task" python3 -m lords_pipelines.peft_tables peft --model "$MODEL" --run-dir "$RUN_DIR/peft_$task" \
    --only "^${task}_"
done
wait
for f in "$RUN_DIR"/logs/*.log; do echo "== $f"; grep -v -i warn "$f" | tail -3; done
