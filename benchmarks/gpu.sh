#!/usr/bin/env bash
# Every GPU number of docs/benchmarks.md section 5, in one run of about 8 minutes on one H100, and the checks of
# docs/compatibility.md that need a GPU (benchmarks/gpu_user_stack.py).
#
# Full-size FLUX.1-dev and SD3-medium built in bfloat16 with random weights on the GPU (`flux-dev-random`,
# `sd3-medium-random`: no download; a step costs what it costs with the real weights), each recipe set timed
# side by side by `ralu bench` (interleaved, CUDA-synchronised, after a warm-up, peak memory per recipe),
# first eager, then with the denoiser's blocks compiled (the graphs each recipe compiles are counted); the eager
# runs also record where each recipe's sampling loop makes the host wait for the GPU. Then
# `summary.py` gathers the reports into one Markdown table and JSON, with the issue's goals checked.
#
# Needs ralu installed (`pip install -e packages/ralu-core -e packages/ralu-flux ...`). Every setting can be
# overridden from the environment; tests/ralu_bench/test_gpu_script.py runs it on the CPU with tiny models.
#   RALU_BENCH_OUT      folder for everything (default gpu-bench)
#   RALU_BENCH_BUDGET   seconds the whole script may take; a run that would start past it is skipped (480)
#   RALU_BENCH_EXTRA    extra `ralu bench` options for every run, e.g. "--device cpu --dtype float32"
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
OUT=${RALU_BENCH_OUT:-gpu-bench}
BUDGET=${RALU_BENCH_BUDGET:-480}
SIZE=${RALU_BENCH_SIZE:-1024}
PROMPTS=${RALU_BENCH_PROMPTS:-2}
COMPILE=${RALU_BENCH_COMPILE:-"off default"}
BACKEND=${RALU_BENCH_COMPILE_BACKEND:-inductor}
EXTRA=${RALU_BENCH_EXTRA:-"--device cuda --dtype bfloat16"}
FLUX_MODEL=${RALU_BENCH_FLUX_MODEL:-flux-dev-random}
SD3_MODEL=${RALU_BENCH_SD3_MODEL:-sd3-medium-random}
# FLUX.1-schnell (4 steps) under RALU's 1/1/2-step plan: a short run (seconds on an H100).
FLUX_SCHNELL_MODEL=${RALU_BENCH_FLUX_SCHNELL_MODEL:-flux-schnell-random}
# SD3.5-large (15 GiB) fits an H100 but not the 8-minute budget beside the rest: opt in with sd35-large-random.
SD35_MODEL=${RALU_BENCH_SD35_MODEL:-}
SD35_RECIPES=${RALU_BENCH_SD35_RECIPES:-"sd3-baseline ralu-sd3-2x ralu-sd3-3x ras-sd3"}
# Qwen-Image (41 GiB of weights, 50 true-CFG steps) fits an H100 but not the budget beside the rest: opt in with
# qwen-image-random.
QWEN_MODEL=${RALU_BENCH_QWEN_MODEL:-}
QWEN_RECIPES=${RALU_BENCH_QWEN_RECIPES:-"qwenimage-baseline ralu-qwenimage-4x ras-qwenimage"}
# FLUX.2-dev (64 GB of weights in bfloat16: an H200) is opt-in too: flux2-dev-random.
FLUX2_MODEL=${RALU_BENCH_FLUX2_MODEL:-}
FLUX2_RECIPES=${RALU_BENCH_FLUX2_RECIPES:-"flux2-baseline ralu-flux2-4x ras-flux2"}
FLUX_RECIPES=${RALU_BENCH_FLUX_RECIPES:-"flux-baseline ralu-flux-4x ralu-flux-5x ralu-flux-7x ras-flux ralu-ras-flux-7x ralu-flux-5x-taylorseer"}
SD3_RECIPES=${RALU_BENCH_SD3_RECIPES:-"sd3-baseline ralu-sd3-2x ralu-sd3-3x ras-sd3 ralu-ras-sd3-3x ralu-sd3-3x-deepcache"}
# Compiling every recipe's shapes would not fit the budget: compiled runs time the baseline and the fastest recipe.
FLUX_COMPILED=${RALU_BENCH_FLUX_COMPILED:-"flux-baseline ralu-flux-7x"}
SD3_COMPILED=${RALU_BENCH_SD3_COMPILED:-"sd3-baseline ralu-sd3-3x"}

mkdir -p "$OUT"
start=$(date +%s)
prompt_args=()
for ((i = 0; i < PROMPTS; i++)); do
  prompt_args+=(--prompt "a photograph of a red fox in the snow, number $i")
done

bench() {  # NAME MODEL STEPS COMPILE RECIPES...
  local name=$1 model=$2 steps=$3 mode=$4 syncs=()
  shift 4
  [ "$mode" = off ] && syncs=(--host-syncs)  # where each recipe's loop waits for the GPU, found once, eager
  local left=$((BUDGET - ($(date +%s) - start)))
  if ((left < 30)); then
    echo "skipped $name: ${left}s of the budget left" | tee -a "$OUT/skipped.txt" >&2
    return 0
  fi
  echo "== $name ($model, compile $mode; ${left}s of the budget left)" >&2
  # shellcheck disable=SC2086  # EXTRA is a list of options
  if ! timeout "$left" "$PYTHON" -m ralu_core.cli bench --model "$model" --height "$SIZE" --width "$SIZE" \
    --steps "$steps" --no-decode --warmup 1 --seeds 0 --compile "$mode" --compile-backend "$BACKEND" \
    "${syncs[@]}" $EXTRA "${prompt_args[@]}" --recipes "$@" --out "$OUT/$name" >"$OUT/$name.log" 2>&1; then
    echo "failed or timed out: $name (see $OUT/$name.log)" | tee -a "$OUT/skipped.txt" >&2
    tail -5 "$OUT/$name.log" >&2 || true
  fi
}

for mode in $COMPILE; do
  if [ "$mode" = off ]; then
    # shellcheck disable=SC2086
    bench "flux-eager" "$FLUX_MODEL" 50 off $FLUX_RECIPES
    # shellcheck disable=SC2086
    bench "sd3-eager" "$SD3_MODEL" 28 off $SD3_RECIPES
    bench "flux-schnell-eager" "$FLUX_SCHNELL_MODEL" 4 off flux-baseline ralu-flux-schnell
    if [ -n "$SD35_MODEL" ]; then
      # shellcheck disable=SC2086
      bench "sd35-eager" "$SD35_MODEL" 28 off $SD35_RECIPES
    fi
    if [ -n "$QWEN_MODEL" ]; then
      # shellcheck disable=SC2086
      bench "qwenimage-eager" "$QWEN_MODEL" 50 off $QWEN_RECIPES
    fi
    if [ -n "$FLUX2_MODEL" ]; then
      # shellcheck disable=SC2086
      bench "flux2-eager" "$FLUX2_MODEL" 50 off $FLUX2_RECIPES
    fi
  else
    # shellcheck disable=SC2086
    bench "flux-compile-$mode" "$FLUX_MODEL" 50 "$mode" $FLUX_COMPILED
    # shellcheck disable=SC2086
    bench "sd3-compile-$mode" "$SD3_MODEL" 28 "$mode" $SD3_COMPILED
  fi
done

# What users load that only a GPU runs (docs/compatibility.md): sequential CPU offload and bitsandbytes weights on
# the tiny models, every line expected "ok" (seconds; not part of the budget's timings).
if ! "$PYTHON" benchmarks/gpu_user_stack.py --out "$OUT/user-stack.json" >"$OUT/user-stack.txt" 2>"$OUT/user-stack.log"; then
  echo "a user-stack check failed (see $OUT/user-stack.txt)" | tee -a "$OUT/skipped.txt" >&2
fi

"$PYTHON" benchmarks/summary.py "$OUT"
echo "done in $(($(date +%s) - start)) s: $OUT/summary.md, $OUT/summary.json" >&2
