#!/usr/bin/env bash
# The first GPU lease's check in 7 minutes of device time (benchmarks/gpu_check.py says
# what it runs): environment, the carried wheels from .whl/ (benchmarks/fetch_wheels.sh),
# a handful of one-device tests, benchmarks/bench.py for ResNet-20/56/110 in float32 and bfloat16 at
# 1 and 10 steps per dispatch, 4 seeds in one step (vmap and loop), PyTorch beside the
# float32 ResNet-56 if it is installed, and a summary with the ratios; all of it under $OUT
# (else runs/gpu-check) as it goes.
#
#   bash benchmarks/gpu_check.sh --dry-run     # the plan, in order, within the budget; runs nothing
#   bash benchmarks/gpu_check.sh               # on the GPU machine
#
# Options: --out DIR, --wheels DIR (.whl), --budget_s SECONDS (420). PYTHON: the interpreter (python3).
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" -m benchmarks.gpu_check "$@"
