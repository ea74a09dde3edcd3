#!/usr/bin/env bash
# The GPU benchmarks in one prepared run (about 9 minutes at most on an H200), most important first, so
# that a run cut short after 5 minutes still answers the main questions: are finite-difference tangents as
# accurate as forward-mode AD on the GPU's own kernels, what does bf16 do to a step (table 1, about 2 min),
# and what does each way of taking du/dt cost in time and memory at B/2, batch 128 (table 2).
#   OUT=/some/folder bash bench/run_gpu.sh
# Each run writes its own log under $OUT (default bench/out); summary.md collects the tables. Each gets what is
# left of a 570 s budget, at most its own limit. Needs torch, numpy and safetensors (the device image has them);
# the sampling row also needs diffusers: `bash bench/gpu_wheels.sh` here puts its wheels in bench/wheels, which
# this script installs when that folder came along.
set -u
OUT=${OUT:-bench/out}
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT"
START=$(date +%s)
BUDGET=570

{
  date -u +"%Y-%m-%d %H:%M UTC"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
  if [ -d bench/wheels ] && ! "$PY" -c "import diffusers" 2>/dev/null; then
    "$PY" -m pip install -q --no-index --find-links bench/wheels diffusers 2>&1 | tail -1
  fi
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
  grep -E '^(\||#|check|[a-z-]+ /|[A-Z].*(repeats|batches|torch))' "$OUT/$name.txt" >> "$OUT/summary.md"
  (( rc != 0 )) && printf 'exit status %s (124: timed out); see %s.txt\n' "$rc" "$name" >> "$OUT/summary.md"
}

# 1. Finite difference against forward-mode AD, and bf16 / TF32 against fp32, on B/2 itself (flash and
#    memory-efficient attention in the finite-difference passes).
run tangents_b2 150 bench/tangent_accuracy.py --device cuda --b2-shape hidden_size=768,num_heads=12 --batch 32
TRAIN="bench/train_step.py --device cuda --dtype bf16 --model B/2 --batch"
# 2. Step time, peak memory and activations per image of every way of taking du/dt (eager).
run train_eager_b128 170 $TRAIN 128 --which fm,fast,fd,sdpa,explicit,ref,ref-fd --repeats 3
run train_eager_b256 70 $TRAIN 256 --which fm,fast,fd --no-check --no-memory --repeats 3
run sample_b256 100 bench/sample.py --device cuda --dtype bf16 --model B/2 --batch 256 --vae sd \
  --decode-batch 64 --compile
# 3. Compiled last (minutes of compilation); the check compares the compiled rows with eager ref first.
run train_compiled_b128 300 $TRAIN 128 --which fm,fast,fd --compile --warmup 3 --repeats 3
cat "$OUT/summary.md"
