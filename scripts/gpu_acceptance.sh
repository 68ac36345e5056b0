#!/usr/bin/env bash
# Whether the GPU path works and how fast it is, in one call of at most 8 minutes on one H100/H200.
#   [WHEELS=DIR] scripts/gpu_acceptance.sh [--out DIR] [--only STEP,..] [--skip STEP,..] [--dry-run]
# It installs nothing from the network: it uses the Python it finds (PYTHON, else python3) with
# its torch and triton, plus the wheels carried in WHEELS (e.g. megatron-core for cp312; see the
# README's "GPU acceptance" section for the pip download line). The repository need not be
# installed: it runs from this checkout. The steps and their budgets are in
# scripts/gpu_acceptance/run.py.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
if [ -n "${WHEELS:-}" ]; then
  compgen -G "$WHEELS/*.whl" >/dev/null || { echo "gpu_acceptance: no wheels in WHEELS=$WHEELS"; exit 2; }
  site=$(mktemp -d /tmp/chord-wheels.XXXXXX)
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$WHEELS"/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD:$PWD/kernels${PYTHONPATH:+:$PYTHONPATH}"
exec "$py" -m scripts.gpu_acceptance.run "$@"
