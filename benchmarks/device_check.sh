#!/usr/bin/env bash
# The GPU path in one run, about 5 minutes on one GPU: CUDA checks, P1/P3, the cost benchmark's short form, float32
# against bfloat16 and TF32, and the inversion kernel at the default settings, then a summary table (benchmarks/device_check.py). Runs rgi_core from
# this source tree under the machine's own torch: no install, no Prefect.
# Usage: benchmarks/device_check.sh [--device cuda] [--quick]
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec "${PYTHON:-python3}" benchmarks/device_check.py "$@"
