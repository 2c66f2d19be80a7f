"""One table from several benchmark (benchmarks/bench.py) JSON files: each run's throughput,
PyTorch's, and the projected run time.

    python -m benchmarks.bench_table runs/bench/*.json
    python -m benchmarks.bench_table runs/bench/*.json --combined=all.json   # also all results in one file

Images/s count every seed's images (--config.num_seeds). The projection is total_steps (64k for
the paper's recipe) times the median ms/step: train steps only, no evaluation or checkpoints.
Below the table, the ratios that matter (`key_ratios`): ResNet-56's projected run, ours /
PyTorch, and several seeds in one step against one.
"""

import argparse
import json

from benchmarks import bench
from configs import default
from depthlab import writers

COLUMNS = (
  "net",
  "dtype",
  "steps/dispatch",
  "seeds",
  "images/s",
  "ms/step",
  "compile s",
  "peak device",
  "torch fp32",
  "torch bf16",
  "torch channels_last",
  "ours/torch fp32",
  "projected",
)


def with_defaults(result: dict) -> dict:
  """A benchmark result with the config fields it was written before (several seeds) as their
  defaults."""
  config = default.get_config()
  return {"num_seeds": config.num_seeds, "seed_batching": config.seed_batching, **result}


def seeds_cell(result: dict) -> str:
  seeds = result["num_seeds"]
  return str(seeds) if seeds == 1 else f"{seeds} ({result['seed_batching']})"


def row(result: dict) -> list[str]:
  """The table's cells for one benchmarks/bench.py result; '-' where the run did not measure it."""
  ours, theirs = result[bench.OURS], result["torch"]
  torch_speed = [f"{theirs[v]['images_per_sec']:.0f}" if v in theirs else "-" for v in bench.TORCH_VARIANTS]
  ratio = f"{theirs['fp32']['ours_over_torch_median']:.2f}" if "fp32" in theirs else "-"
  return [
    result["net"],
    result["dtype"],
    str(result["steps_per_dispatch"]),
    seeds_cell(result),
    f"{ours['images_per_sec']:.0f}",
    f"{ours['ms_per_step']:.2f}",
    f"{ours['compile_s']:.1f}",
    bench.format_bytes(ours["peak_device_bytes"]),
    *torch_speed,
    ratio,
    f"{writers.format_duration(result['projected_total_s'])} for {result['total_steps']:,} steps",
  ]


def markdown_table(results: list[dict]) -> str:
  lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
  lines += ["| " + " | ".join(row(r)) + " |" for r in results]
  return "\n".join(lines)


def key_ratios(results: list[dict], net: str = "resnet56") -> list[str]:
  """One line each: `net`'s projected run (fastest single-seed run, and fp32 at one step per
  dispatch), ours / PyTorch per variant, and each several-seed run's step against one seed's."""
  lines = []
  single = [r for r in results if r["net"] == net and r["num_seeds"] == 1]
  if single:
    fastest = min(single, key=lambda r: r[bench.OURS]["ms_per_step"])
    lines.append(
      f"{net}, {fastest['total_steps']:,} steps projected: "
      f"{writers.format_duration(fastest['projected_total_s'])} at the fastest "
      f"({fastest['dtype']}, {fastest['steps_per_dispatch']} steps/dispatch, "
      f"{fastest[bench.OURS]['ms_per_step']:.2f} ms/step)"
    )
  for r in single:
    for variant, theirs in r["torch"].items():
      lines.append(
        f"{net} {r['dtype']} x{r['steps_per_dispatch']}: ours / PyTorch {variant} = "
        f"{theirs['ours_over_torch_median']:.2f} (images/s; above 1: ours faster)"
      )
  for several in [r for r in results if r["num_seeds"] > 1]:
    alone = [
      r
      for r in results
      if r["num_seeds"] == 1 and all(r[k] == several[k] for k in ("net", "dtype", "steps_per_dispatch"))
    ]
    if alone:
      k, step_ratio = several["num_seeds"], several[bench.OURS]["ms_per_step"] / alone[0][bench.OURS]["ms_per_step"]
      lines.append(
        f"{several['net']} {several['dtype']} x{several['steps_per_dispatch']}: {k} seeds "
        f"({several['seed_batching']}) take {step_ratio:.2f}x one seed's step: "
        f"{k / step_ratio:.2f}x the throughput of {k} one-seed runs"
      )
  return lines


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("results", nargs="+", help="JSON files written by benchmarks/bench.py --out")
  parser.add_argument("--combined", help="also write the results, in the table's order, as one JSON list here")
  args = parser.parse_args()
  results = []
  for path in args.results:
    with open(path) as f:
      results.append(with_defaults(json.load(f)))
  results.sort(key=lambda r: (r["num_params"], r["dtype"], r["steps_per_dispatch"], r["num_seeds"], r["seed_batching"]))
  device = results[0]["device"]
  print(f"{device['count']} x {device['kind']} ({device['platform']}), batch {results[0]['batch_size']}")
  print(markdown_table(results))
  print()
  print("\n".join(f"- {line}" for line in key_ratios(results)))
  if args.combined:
    bench.write_json(results, args.combined)


if __name__ == "__main__":
  main()
