#!/usr/bin/env bash
# On a lent GPU machine (the `device` tool's run, with `.whl` carried): install the wheels from prepare.sh,
# run benchmarks/gpu.sh, and leave summary.md, summary.json and every report in one archive under $OUT, within
# the few files that come back. Every gpu.sh setting passes through the environment (RALU_BENCH_*).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:?set OUT to the folder whose files come back}
SITE=${RALU_DEVICE_SITE:-/tmp/site}
PYTHON=${PYTHON:-python3}
if [ ! -f .whl/SOURCES ] || [ "$(cat .whl/SOURCES)" != "$(bash benchmarks/device/fingerprint.sh)" ]; then
  echo "error: .whl is missing or older than the sources; run bash benchmarks/device/prepare.sh here first" >&2
  exit 2
fi
"$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
"$PYTHON" - <<'PY' | tee "$OUT/environment.txt"
import diffusers, torch
import ralu_core, ralu_caching, ralu_flux, ralu_sd3  # noqa: F401  (each one installed and importable)
from ralu_core.plugins import Registry, create_plugin_manager

device = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device"
recipes = len(Registry.collect(create_plugin_manager()).recipes)
print(f"device {device}; torch {torch.__version__}; diffusers {diffusers.__version__}; {recipes} recipes")
PY
status=0
RALU_BENCH_OUT=${RALU_BENCH_OUT:-gpu-bench} PYTHON="$PYTHON" bash benchmarks/gpu.sh || status=$?
bench_out=${RALU_BENCH_OUT:-gpu-bench}
cp "$bench_out"/summary.md "$bench_out"/summary.json "$bench_out"/user-stack.txt "$OUT"/ 2>/dev/null || true
tar czf "$OUT/gpu-bench.tar.gz" -C "$(dirname "$bench_out")" "$(basename "$bench_out")"
exit "$status"
