"""Records the order in which wandb's own sweep engine starts the runs of each grid sweep in
sweeps/, into tests/wandb_grid_orders.json, which tests/test_sweeps.py holds sweeps/run.py to.

    pip install --target /tmp/wandb-sweeps sweeps==0.2.0   # wandb's engine; not a dependency
    PYTHONPATH=/tmp/wandb-sweeps:. python tests/record_wandb_grid_orders.py

Run it after adding or changing a sweep file's parameters.
"""

import glob
import json
import os

import yaml

import sweeps  # wandb's sweep engine (the `sweeps` package), which `wandb sweep` and its local controller run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def engine_order(sweep: dict) -> list[dict]:
  """The values of the swept parameters of each run, in the order the engine proposes them."""
  runs = []
  while (run := sweeps.next_run(sweep, runs)) is not None:
    run.state = sweeps.RunState.running
    runs.append(run)
  swept = [name for name, spec in sweep["parameters"].items() if "values" in spec]
  return [{name: run.config[name]["value"] for name in swept} for run in runs]


def main() -> None:
  orders = {}
  for path in sorted(glob.glob(os.path.join(REPO, "sweeps", "*.yaml"))):
    with open(path) as f:
      orders[os.path.basename(path)] = engine_order(yaml.safe_load(f))
  with open(os.path.join(REPO, "tests", "wandb_grid_orders.json"), "w") as f:
    json.dump(orders, f, indent=1)
    f.write("\n")


if __name__ == "__main__":
  main()
