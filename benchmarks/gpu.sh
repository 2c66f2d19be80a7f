#!/usr/bin/env bash
# Throughput of ResNet-20/56/110 at batch 128 on a GPU, in float32 and bfloat16, with 1 and
# several train steps per dispatch, against PyTorch (fp32, bf16 autocast, channels_last) in
# the float32 single-step runs, and of ResNet-56 with 4 seeds in one step; ends with one table that projects the wall time of the
# paper's full 64k-step recipe from each run's median ms/step.
#
#   bash benchmarks/gpu.sh [RESULTS_DIR]          # default: $OUT if set, else runs/bench-gpu
#
# It leaves three files in RESULTS_DIR: gpu.log (every run's console output), summary.md (the
# table) and results.json (every run's bench.py JSON, in a list). Runs go most important first
# (the float32 single-step runs with PyTorch, then bfloat16, then several steps per dispatch)
# and all of them end within BUDGET_S seconds of the start (a run still going then is stopped,
# one that would have under 30 s is skipped), so the script ends inside a fixed time limit with
# a table of what it measured. Settings (environment): PYTHON (python3), DEPTHS ("20 56 110"), DISPATCH ("1 10"), SEEDS ("4"),
# WINDOWS (3), STEPS (30, a multiple of every DISPATCH), BUDGET_S (520), WHEELS (a folder of
# wheels to install first, for an offline machine).
set -uo pipefail
cd "$(dirname "$0")/.."
results=${1:-${OUT:-runs/bench-gpu}}
py=${PYTHON:-python3}
mkdir -p "$results"
log="$results/gpu.log"
runs=$(mktemp -d)  # one JSON per run, gathered into results.json at the end
trap 'rm -rf "$runs"' EXIT
start=$SECONDS

if [ -n "${WHEELS:-}" ]; then  # an offline machine: what requirements.txt would bring, as wheels
  "$py" -m pip install -q --no-index --no-deps --target /tmp/bench-site "$WHEELS"/*.whl || exit 1
  export PYTHONPATH="/tmp/bench-site${PYTHONPATH:+:$PYTHONPATH}"
fi
# PyTorch shares the GPU with JAX in one process: JAX must not claim 75% of it up front.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
"$py" - <<'PY' || exit 1
import jax
import bench  # noqa: F401  (fails here, naming the missing package, before any run)
if jax.default_backend() != "gpu":
  raise SystemExit(f"JAX sees no GPU: {jax.devices()}")
try:
  import torch
  print(f"JAX {jax.__version__} on {jax.devices()[0].device_kind}; PyTorch {torch.__version__}, "
        f"CUDA available: {torch.cuda.is_available()}")
except ImportError:
  print("PyTorch is not installed: the runs go without the baseline.")
PY
torch_available=$("$py" -c "import importlib.util; print(int(importlib.util.find_spec('torch') is not None))")

skipped=()
# run_one NAME TORCH BENCH_ARGS...: one bench.py run within what is left of BUDGET_S.
run_one() {
  local name=$1 torch=$2
  shift 2
  local left=$(( ${BUDGET_S:-520} - (SECONDS - start) ))
  if (( left < 30 )); then
    skipped+=("$name")
    return
  fi
  echo "== $name (torch: $torch) at $((SECONDS - start))s" | tee -a "$log"
  timeout "$left" "$py" bench.py --config.batch_size=128 --windows="${WINDOWS:-3}" \
    --steps_per_window="${STEPS:-30}" --torch="$torch" --out="$runs/$name.json" "$@" 2>&1 \
    | grep -v -E '^[IW][0-9]{4} ' | tee -a "$log"
  local status=${PIPESTATUS[0]}
  if [ "$status" != 0 ]; then echo "$name failed or was stopped (status $status)" | tee -a "$log"; fi
}

for dispatch in ${DISPATCH:-1 10}; do
  for dtype in float32 bfloat16; do
    for depth in ${DEPTHS:-20 56 110}; do
      torch=none
      if [ "$dispatch" = 1 ] && [ "$dtype" = float32 ] && [ "$torch_available" = 1 ]; then torch=all; fi
      run_one "resnet${depth}-${dtype}-x${dispatch}" "$torch" --config="configs/resnet${depth}.py" \
        --config.dtype="$dtype" --config.steps_per_dispatch="$dispatch"
    done
  done
  # Several seeds in one vmapped step (config.num_seeds): compare its ms/step with one seed's.
  for seeds in ${SEEDS:-4}; do
    run_one "resnet56-float32-x${dispatch}-seeds${seeds}" none --config=configs/resnet56.py \
      --config.steps_per_dispatch="$dispatch" --config.num_seeds="$seeds"
  done
done

echo "== summary after $((SECONDS - start))s" | tee -a "$log"
if [ ${#skipped[@]} -gt 0 ]; then echo "not run (past BUDGET_S): ${skipped[*]}" | tee -a "$log"; fi
shopt -s nullglob
jsons=("$runs"/*.json)
if [ ${#jsons[@]} -eq 0 ]; then echo "no run finished" | tee -a "$log"; exit 1; fi
"$py" -m benchmarks.summarize "${jsons[@]}" --combined="$results/results.json" 2>&1 | grep -v -E '^[IW][0-9]{4} ' | tee "$results/summary.md"
