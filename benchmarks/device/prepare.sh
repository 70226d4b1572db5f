#!/usr/bin/env bash
# Here, before a lent GPU machine is started: put into .whl/ every wheel that benchmarks/device/run.sh installs
# there. That machine reaches no registry; it has Python 3.12 with torch, transformers, accelerate, pluggy,
# attrs, PyYAML, SciPy and OpenCV, but not diffusers, cattrs or DeepCache, and not ralu. The ralu packages are
# built from this tree, and a fingerprint of their sources is written beside them, so that run.sh refuses
# wheels older than the code it would measure.
#   RALU_DEVICE_PYTHON_VERSION   the Python of the GPU machine (3.12)
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python3}
PY=${RALU_DEVICE_PYTHON_VERSION:-3.12}
# The versions tested here; pure-Python wheels, so one file each whatever the platform.
# bitsandbytes (43 MB, for benchmarks/gpu_user_stack.py) is the one platform wheel.
THIRD_PARTY=(diffusers==0.42.1 cattrs==26.2.1 attrs==26.1.0 DeepCache==0.1.1 importlib_metadata==8.7.0
  bitsandbytes==0.50.2)

rm -rf .whl && mkdir -p .whl
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version "$PY" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux2014_x86_64 --platform any -d .whl "${THIRD_PARTY[@]}"
"$PYTHON" -m pip wheel -q --no-deps -w .whl packages/ralu-core packages/ralu-flux packages/ralu-sd3 packages/ralu-caching \
  packages/ralu-qwenimage packages/ralu-flux2
bash benchmarks/device/fingerprint.sh >.whl/SOURCES
du -sh .whl >&2
ls .whl >&2
