#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py): flcore's round vs a hand-written loop for the LeNet CNN,
# FedAvg CNN, ResNet-20 and VGG-16 with bf16 AMP and channels-last, and LeNet clients in 1/2/4
# worker processes sharing the GPU. Synthetic CIFAR-shaped data; about 5 minutes on one GPU.
#   bash benchmarks/gpu_check.sh          # on a GPU machine: writes benchmarks/results/gpu_check.json
#   bash benchmarks/gpu_check.sh --dry    # on any machine: every code path on the CPU in seconds
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
if [ "${1:-}" = "--dry" ]; then
  exec "$PY" benchmarks/gpu_check.py --dry
fi
exec timeout 480 "$PY" benchmarks/gpu_check.py --out benchmarks/results/gpu_check.json "$@"
