#!/usr/bin/env bash
# The GPU tables as concurrent, resumable jobs spread round-robin over the visible GPUs. SmolLM2-135M leaves an H200
# mostly idle (a training step is launch-bound), so several table jobs share one GPU well.
#
#   MODEL=/path/smol.gguf RUN_DIR=/tmp/runs SECONDS_LIMIT=540 bash tools/tables_on_gpus.sh [JOB ...]
#
# A JOB is KIND:ARG — `ptq:<tables>` (the multirun of each table in turn), `qat:<regex>` (the qat table's rows whose
# key matches: only=<regex>), `peft:<regex>` (the peft table's runs whose '<task>_<method>_' matches). Every job is
# `python3 -m lords_pipelines.stages.table --multirun table=... run_dir=<its dir>`, rows logged by LOGGER (csv: the
# GPU image has no wandb). Default: every table, QAT split
# by method and PEFT by task and method. Each job keeps its own journal under RUN_DIR/<n>-<kind>/ (seeded from
# outputs/reports/tables/rows/<table>.jsonl, so committed rows are not run again); rerun the same command until every
# job's log ends in `exit 0`, then `merged` gathers all journals into RUN_DIR/merged/<table>/rows.jsonl for --render.
# Not for timing: jobs that share a GPU slow each other; speed comes from peft_serving and the kernel benchmarks, alone.
set -u
MODEL=${MODEL:?a model path, e.g. the SmolLM2 GGUF}
RUN_DIR=${RUN_DIR:-outputs/runs/tables_on_gpus}
LIMIT=${SECONDS_LIMIT:-0}  # 0: no limit (else each table's multirun is cut after that many seconds; rerun resumes)
LOGGER=${LOGGER:-csv}
ROWS=outputs/reports/tables/rows
if [ $# -eq 0 ]; then
  set -- "ptq:ptq_bits ptq_refine_ablation ptq_rank_ablation" \
    "qat:^(nf|lords_init|nf_calibrated|lords_calibrated)_" "qat:^blockwise_qat_b" "qat:^lords_qat_b" \
    "qat:^blockwise_qat_calibrated" "qat:^lords_qat_calibrated" "qat:^blockwise_qat_lr" "qat:^lords_qat_lr" \
    "qat:^lords_qat_shared"
  for task in lords_roman lords_prophets_word lords_prophets_half lords_unicode_names kjv; do
    for method in lords_peft qlora loftq qpissa; do set -- "$@" "peft:^${task}_${method}_"; done
  done
fi
for spec in "$@"; do  # QLoRA, LoftQ and QPiSSA run on bitsandbytes: refuse before any job starts, not one by one
  case $spec in peft:*lords_peft*) ;; peft:*)
    python3 -c "import bitsandbytes" 2>/dev/null || { echo "tables_on_gpus.sh: '$spec' selects QLoRA / LoftQ / QPiSSA \
runs, which need bitsandbytes, and python3 cannot import it here (docs/peft_table.md installs the wheel)"; exit 2; } ;;
  esac
done
GPUS=${GPUS:-$(python3 -c "import torch; print(torch.cuda.device_count())")}  # GPUS=N forces N (a CPU dry run)
[ "$GPUS" -ge 1 ] || { echo "tables_on_gpus.sh needs a CUDA GPU"; exit 2; }
read -r -a USE <<< "${GPU_LIST:-$(seq -s ' ' 0 $((GPUS - 1)))}"  # GPU_LIST="1": leave GPU 0 to a benchmark
mkdir -p "$RUN_DIR/logs"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
seed() {  # run-dir table...: a journal starts from the committed rows
  local dir=$1; shift
  for t in "$@"; do
    if [ ! -f "$dir/$t/rows.jsonl" ] && [ -f "$ROWS/$t.jsonl" ]; then mkdir -p "$dir/$t"; cp "$ROWS/$t.jsonl" "$dir/$t/rows.jsonl"; fi
  done
}
n=0
for spec in "$@"; do
  kind=${spec%%:*} arg=${spec#*:} dir="$RUN_DIR/$n-$kind" gpu=${USE[$((n % ${#USE[@]}))]}
  only=()
  case $kind in
    ptq) seed "$dir" $arg; tables=($arg) ;;
    qat) seed "$dir" qat; tables=(qat) only=("only='$arg'") ;;
    peft) seed "$dir" peft; tables=(peft) only=("only='$arg'") ;;
    *) echo "unknown job kind in '$spec' (ptq:, qat:, peft:)"; exit 2 ;;
  esac
  log="$RUN_DIR/logs/$n-$kind.log"
  (status=0
   for t in "${tables[@]}"; do
     cmd=(python3 -m lords_pipelines.stages.table --multirun "table=$t" "spec.model=$MODEL" "run_dir=$dir" "logger=$LOGGER" "${only[@]}")
     if [ "$LIMIT" -gt 0 ]; then cmd=(timeout "$LIMIT" "${cmd[@]}"); fi
     echo "job $n on GPU $gpu: ${cmd[*]}" >> "$log"
     CUDA_VISIBLE_DEVICES=$gpu "${cmd[@]}" >> "$log" 2>&1 || status=$?
   done
   echo "exit $status $(date +%T)" >> "$log") &
  n=$((n + 1))
done
wait
for d in "$RUN_DIR"/[0-9]*-*/; do
  for j in "$d"*/rows.jsonl; do
    [ -f "$j" ] || continue
    t=$(basename "$(dirname "$j")"); mkdir -p "$RUN_DIR/merged/$t"; cat "$j" >> "$RUN_DIR/merged/$t/rows.new"
  done
done
for f in "$RUN_DIR"/merged/*/rows.new; do  # one line per key (the journals' loaders keep the last of a key)
  [ -f "$f" ] && python3 -c "
import json, sys
rows = {}
for line in open(sys.argv[1]):
    if line.strip(): rows[json.loads(line)['key']] = line.rstrip('\n')
open(sys.argv[2], 'w').write('\n'.join(rows.values()) + '\n')" "$f" "${f%.new}.jsonl" && rm "$f"
done
for f in "$RUN_DIR"/logs/*.log; do echo "== $f: $(grep -c '' "$f") lines; $(tail -1 "$f")"; done
wc -l "$RUN_DIR"/merged/*/rows.jsonl
if [ -n "${OUT:-}" ]; then  # a device call returns at most 8 files: <table>.jsonl each and the job logs in one archive
  for j in "$RUN_DIR"/merged/*/rows.jsonl; do cp "$j" "$OUT/$(basename "$(dirname "$j")").jsonl"; done
  tar czf "$OUT/table_logs.tgz" -C "$RUN_DIR" logs
fi
