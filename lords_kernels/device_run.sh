#!/bin/bash
# One device call: lords_kernels/device_run.sh STEP... (run from the repository root on the GPU machine; $OUT is set)
#   tests   GPU tests (pytest -m gpu)        tune     LoRDS tile sweep → $OUT/tuned.json
#   bwd     forward+backward timings         bench    python -m lords_kernels.bench → $OUT/kernels.json
#   decode  python -m lords_kernels.decode → $OUT/decode.json
#   k16     issue 16 bench (fp16 / fused / dequant+cuBLAS / peers, fwd+bwd) → $OUT/k16.{json,md}
#   tune16  tile sweep at the parity ranks of $TUNE_BLOCKS (default "64 128 256") → $OUT/tuned16.json; $TUNE_SHAPES
#           (e.g. 6144x4096,28672x4096: the decode benchmark's fused QKV and gate/up) replaces the bench shapes
#   tests16 the kernel GPU tests without -q's summary cut (pytest.log)
#   repro-bench   part 1 of `make reproduce-kernels` → $OUT/kernels.{json,md,png} (estimated 6-8 min cold; it starts
#                 no new cell after 450 s and names the cut in the JSON)
#   repro-decode  part 2 → $OUT/kernels_backward.json, $OUT/decode.{json,md} (estimated 4-7 min; no new round after
#                 330 s of decode). One step per device call: each is under the 600 s limit, both together are not.
#                 Then, on any machine, copy both calls' JSON into outputs/reports and run python -m lords_kernels.render
export PYTHONUNBUFFERED=1
if [ -d ../.whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site ../.whl/*.whl
fi
export PYTHONPATH=/tmp/site:$PWD/_peers:$PWD
for step in "$@"; do
  case $step in
    tests) timeout ${TEST_S:-170} python3 -m pytest -m gpu tests/test_kernels_matmul.py tests/test_kernels_dispatch.py -q -n 8 ${TEST_K:+-k "$TEST_K"} \
             -p no:cacheprovider 2>&1 | tail -30 > $OUT/pytest.log; tail -6 $OUT/pytest.log ;;
    tune) timeout ${TUNE_S:-300} python3 -m lords_kernels.bench --tune $OUT/tuned.json --log $OUT/tunelog.json \
             --bits ${TUNE_BITS:-4} --ms ${TUNE_MS:-1 4 16 64 256 2048 8192} 2>&1 | grep -v "^  skip" ;;
    bwd) timeout ${BWD_S:-240} python3 -m lords_kernels.bench --backward $OUT/backward.json --ms 2048 \
             --shapes 4096x4096,14336x4096 2>&1 | tail -12 ;;
    bench) timeout ${BENCH_S:-580} python3 -m lords_kernels.bench --json $OUT/kernels.json --out-dir $OUT \
             --budget-s ${BENCH_BUDGET:-450} 2>&1 \
             | tee $OUT/bench.log | tail -5 ;;
    k16) timeout ${K16_S:-530} python3 -m lords_kernels.bench_k16 --out-dir $OUT --budget-s ${K16_BUDGET:-450} \
             2>&1 | tee $OUT/k16.log | tail -60 ;;
    tune16) timeout ${TUNE_S:-530} python3 -m lords_kernels.bench --tune $OUT/tuned16.json --log $OUT/tunelog16.json \
             --bits 4 --blocks ${TUNE_BLOCKS:-64 128 256} --ms ${TUNE_MS:-1 4 16 64 256} ${TUNE_SHAPES:+--shapes $TUNE_SHAPES} \
             2>&1 | grep -v "^  skip" \
             | tail -60 ;;
    tests16) timeout ${TEST_S:-300} python3 -m pytest -m gpu tests/test_kernels_matmul.py tests/test_kernels_dispatch.py \
             -o addopts="" -q -n 8 -p no:cacheprovider ${TEST_K:+-k "$TEST_K"} 2>&1 | tail -30 > $OUT/pytest.log; \
             tail -8 $OUT/pytest.log ;;
    decode) timeout ${DECODE_S:-560} python3 -m lords_kernels.decode --out-dir $OUT 2>&1 | tail -8 ;;
    repro-bench) timeout ${REPRO_S:-580} python3 -m lords_kernels.reproduce bench --out-dir $OUT 2>&1 \
             | tee $OUT/repro-bench.log | grep -v "^ .*floor" | tail -40 ;;
    repro-decode) timeout ${REPRO_S:-580} python3 -m lords_kernels.reproduce decode --out-dir $OUT 2>&1 \
             | tee $OUT/repro-decode.log | tail -40 ;;
  esac
done
