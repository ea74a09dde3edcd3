#!/usr/bin/env bash
# The GPU benchmarks of issue 8 in one prepared run (about 9 minutes at most on an H200).
# Each run writes its own log under $OUT (default bench/out); summary.md collects the tables.
#   OUT=/some/folder bash bench/run_gpu.sh
# The most important runs come first; each gets what is left of a 570 s budget, at most its own limit.
set -u
OUT=${OUT:-bench/out}
PY=${PYTHON:-python}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT"
START=$(date +%s)
BUDGET=570

{
  date -u +"%Y-%m-%d %H:%M UTC"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
  "$PY" -c "import diffusers; print('diffusers', diffusers.__version__)" 2>&1 | tail -1
  nproc
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt" > "$OUT/summary.md"

run() {  # run NAME LIMIT_S ARGS...
  local name=$1 limit=$2 left
  shift 2
  left=$(( BUDGET - ($(date +%s) - START) ))
  (( left < limit )) && limit=$left
  if (( limit < 30 )); then
    printf '\n## %s\nskipped: out of time\n' "$name" >> "$OUT/summary.md"
    return
  fi
  printf '\n## %s (limit %ss)\n`%s %s`\n' "$name" "$limit" "$PY" "$*" >> "$OUT/summary.md"
  timeout "$limit" "$PY" "$@" > "$OUT/$name.txt" 2>&1
  local rc=$?
  grep -E '^(\||check|fast /|[A-Z].*(repeats|batches))' "$OUT/$name.txt" >> "$OUT/summary.md"
  (( rc != 0 )) && printf 'exit status %s (124: timed out); see %s.txt\n' "$rc" "$name" >> "$OUT/summary.md"
}

TRAIN="bench/train_step.py --device cuda --dtype bf16 --model B/2 --batch"
run train_eager_b128 150 $TRAIN 128 --which fm,ref,fast
run train_eager_b256 80 $TRAIN 256 --which fm,fast --no-check
run sample_b256 150 bench/sample.py --device cuda --dtype bf16 --model B/2 --batch 256 --vae sd \
  --decode-batch 64 --compile
run train_compiled_b128 300 $TRAIN 128 --which fm,fast --compile --warmup 3
cat "$OUT/summary.md"
