#!/usr/bin/env bash
# One command on a machine with a CUDA GPU: the sync checks, then every-step overhead on the transformer.
# Without a GPU both skip with their reason and the script exits 0. Usage: bash benchmarks/gpu_bench.sh [args]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
"$PY" -m pytest -q -rs tests/test_gpu_sync.py -s
"$PY" benchmarks/gpu_overhead.py "$@"
