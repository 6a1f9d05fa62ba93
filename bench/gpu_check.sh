#!/usr/bin/env bash
# Runs on the lent GPU machine (no network): installs the wheels its image lacks, carried in .whl/
# (grpcio, protobuf, grpcio-health-checking, grpcio-reflection and tuneyard's own wheel), then runs
# bench/gpu_check.py and prints its table. About 5 minutes on one H100 (part (d), fused trials vs
# packed processes with and without MPS, about 3 of them; estimated), under 8.
set -uo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 bench/gpu_check.py "$@" 2>&1 | tee "${OUT:-/tmp}/gpu_check.txt"
