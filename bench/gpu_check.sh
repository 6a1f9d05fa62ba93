#!/usr/bin/env bash
# Runs on the lent GPU machine: installs the few wheels its image lacks (carried in .whl/),
# then runs the digits search on CUDA and on CPU slots and prints a table.
set -uo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'cuda', torch.cuda.is_available())"
python3 bench/gpu_check.py --devices "${DEVICES:-all,cpu}" --trials "${TRIALS:-8}" --epochs "${EPOCHS:-6}" 2>&1 | tee "${OUT:-/tmp}/gpu_check.txt"
