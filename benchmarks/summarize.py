"""One table from several bench.py JSON files: each run's throughput, PyTorch's, and the projected run time.

    python -m benchmarks.summarize runs/bench/*.json
    python -m benchmarks.summarize runs/bench/*.json --combined=all.json   # also all results in one file

Images/s count every seed's images (bench.py --config.num_seeds). The projection is total_steps (64k for the paper's recipe) times the median ms/step: train
steps only, no evaluation or checkpoints.
"""

import argparse
import json

import bench
import writers

COLUMNS = ("net", "dtype", "steps/dispatch", "seeds", "images/s", "ms/step", "compile s", "peak device",
           "torch fp32", "torch bf16", "torch channels_last", "ours/torch fp32", "projected")


def row(result: dict) -> list[str]:
  """The table's cells for one bench.py result; '-' where the run did not measure it."""
  ours, theirs = result[bench.OURS], result["torch"]
  torch_speed = [f"{theirs[v]['images_per_sec']:.0f}" if v in theirs else "-" for v in bench.TORCH_VARIANTS]
  ratio = f"{theirs['fp32']['ours_over_torch_median']:.2f}" if "fp32" in theirs else "-"
  return [result["net"], result["dtype"], str(result["steps_per_dispatch"]), str(result.get("num_seeds", 1)),
          f"{ours['images_per_sec']:.0f}",
          f"{ours['ms_per_step']:.2f}", f"{ours['compile_s']:.1f}", bench.format_bytes(ours["peak_device_bytes"]),
          *torch_speed, ratio,
          f"{writers.format_duration(result['projected_total_s'])} for {result['total_steps']:,} steps"]


def markdown_table(results: list[dict]) -> str:
  lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
  lines += ["| " + " | ".join(row(r)) + " |" for r in results]
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("results", nargs="+", help="JSON files written by bench.py --out")
  parser.add_argument("--combined", help="also write the results, in the table's order, as one JSON list here")
  args = parser.parse_args()
  results = []
  for path in args.results:
    with open(path) as f:
      results.append(json.load(f))
  results.sort(key=lambda r: (r["num_params"], r["dtype"], r["steps_per_dispatch"], r.get("num_seeds", 1)))
  device = results[0]["device"]
  print(f"{device['count']} x {device['kind']} ({device['platform']}), batch {results[0]['batch_size']}")
  print(markdown_table(results))
  if args.combined:
    bench.write_json(results, args.combined)


if __name__ == "__main__":
  main()
