#!/usr/bin/env bash
# Fills .whl/ (ignored by git) with the wheels benchmarks/gpu_check.sh installs on a GPU
# image that lacks them (benchmarks/gpu-wheels.txt), for Python 3.12 on x86-64 Linux:
#
#   bash benchmarks/fetch_wheels.sh            # then copy .whl with the check (docs/performance.md, "The GPU check")
#
# Run it where PyPI can be reached; it needs no Python 3.12. promise has no wheel on PyPI:
# it is pure Python, so a wheel built here installs there.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
mkdir -p .whl
"$py" -m pip download --quiet --only-binary=:all: --no-deps --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform linux_x86_64 -r benchmarks/gpu-wheels.txt -d .whl
"$py" -m pip wheel --quiet --no-deps --no-build-isolation promise==2.3 -w .whl
du -sh .whl && ls .whl
