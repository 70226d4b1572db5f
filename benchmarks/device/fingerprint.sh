#!/usr/bin/env bash
# One line that changes whenever a source file of the packages the GPU machine runs changes (prepare.sh, run.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
find packages/ralu-core packages/ralu-flux packages/ralu-sd3 packages/ralu-caching -type f \
  \( -name '*.py' -o -name '*.yaml' -o -name '*.json' -o -name 'pyproject.toml' \) -not -path '*/build/*' \
  -not -path '*.egg-info/*' -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1
