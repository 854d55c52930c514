"""Benchmark of data preparation, cached loading and tf.data throughput.

    .venv/bin/python bench/prepare_bench.py --ml1m=../shared/data/ml-1m

Measures, for the synthetic default and (when given) MovieLens 1M:
  * prepare: reading the source and building everything, plus TFDS storage
    (a fresh cache directory each repetition);
  * load: reading the cached version, in this process and in a fresh one;
and on the synthetic default the interactions/s of `main_dataset` (both
tasks) and of `train_dataset` (main + SSL item stream, what training reads).
Writes bench/results/prepare.md (or --output).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

from tfr_ssl import data
from tfr_ssl.config import (
  DataConfig,
)

_LOAD_SNIPPET = """
import time, tfr_ssl, json
from tfr_ssl import data
from tfr_ssl.config import Config
config = Config.from_dict({{"data": json.loads({config!r})}}).data
start = time.perf_counter()
data.load(config)
print(time.perf_counter() - start)
"""


def _median_seconds(function, repeats: int) -> tuple[float, list[float]]:
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    function()
    times.append(time.perf_counter() - start)
  return statistics.median(times), times


def _fresh_process_load(config: DataConfig) -> float:
  values = json.dumps(dataclasses.asdict(config))
  code = _LOAD_SNIPPET.format(config=values)
  output = subprocess.run(
    [sys.executable, "-c", code],
    capture_output=True,
    text=True,
    check=True,
    env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
  )
  return float(output.stdout.strip().splitlines()[-1])


def _prepare_rows(name: str, config: DataConfig, repeats: int) -> list[str]:
  root = config.cache_dir

  def prepare():
    config.cache_dir = tempfile.mkdtemp(dir=root)
    data.prepare(config, force=True)

  prepare_median, prepare_all = _median_seconds(prepare, repeats)
  load_median, load_all = _median_seconds(lambda: data.load(config), repeats)
  fresh = _fresh_process_load(config)
  prepared = data.load(config)
  total = sum(len(s) for s in prepared.splits.values())
  return [
    f"| {name} | {prepared.num_items:,} | {total:,} | "
    f"{prepare_median:.2f} ({', '.join(f'{t:.2f}' for t in prepare_all)}) | "
    f"{load_median:.2f} ({', '.join(f'{t:.2f}' for t in load_all)}) | "
    f"{fresh:.2f} |"
  ]


def _throughput(dataset, batch: int, steps: int) -> float:
  iterator = iter(dataset)
  for _ in range(20):  # warm-up: tracing, prefetch buffers
    next(iterator)
  start = time.perf_counter()
  for _ in range(steps):
    next(iterator)
  return batch * steps / (time.perf_counter() - start)


def _stream_rows(prepared, batch_size: int, ssl_batch: int, steps: int):
  import tensorflow as tf

  rows = []
  for task in ("user_to_item", "item_to_item"):
    dataset = data.main_dataset(
      prepared, "train", batch_size, task=task, repeat=True
    ).prefetch(tf.data.AUTOTUNE)
    rate = _throughput(dataset, batch_size, steps)
    rows.append(f"| main_dataset, {task} | {batch_size} | {rate:,.0f} |")
  dataset = data.train_dataset(
    prepared, batch_size=batch_size, ssl_batch_size=ssl_batch, repeat=True
  )
  rate = _throughput(dataset, batch_size, steps)
  rows.append(
    f"| train_dataset (main + {ssl_batch} SSL items) | {batch_size} | "
    f"{rate:,.0f} |"
  )
  return rows


def main() -> None:
  import tensorflow as tf

  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--ml1m", default="", help="ML-1M directory.")
  parser.add_argument(
    "--output",
    default=os.path.join(os.path.dirname(__file__), "results", "prepare.md"),
  )
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--batch_size", type=int, default=1024)
  parser.add_argument("--ssl_batch_size", type=int, default=512)
  parser.add_argument("--steps", type=int, default=1000)
  args = parser.parse_args()

  with tempfile.TemporaryDirectory() as root:
    prepare_rows = []
    synthetic = DataConfig(cache_dir=root)
    prepare_rows += _prepare_rows("synthetic default", synthetic, args.repeats)
    if args.ml1m:
      ml1m = DataConfig(source="movielens", data_dir=args.ml1m, cache_dir=root)
      prepare_rows += _prepare_rows("MovieLens 1M", ml1m, args.repeats)
    prepared = data.load(synthetic)
    stream_rows = _stream_rows(
      prepared, args.batch_size, args.ssl_batch_size, args.steps
    )

  command = ".venv/bin/python bench/prepare_bench.py " + shlex.join(
    sys.argv[1:]
  )
  lines = [
    "# Data preparation and tf.data throughput",
    "",
    f"Command: `{command.strip()}`",
    "",
    f"Machine: {platform.processor() or platform.machine()}, "
    f"{os.cpu_count()} CPU cores (shared with other jobs while measured), "
    f"Python {platform.python_version()}, TensorFlow {tf.__version__}.",
    "",
    "## Preparation and cached loading (seconds)",
    "",
    "Prepare = read the source, build ids/splits/statistics and store the",
    "TFDS version (fresh cache each repetition). Load = read the cached",
    "version (median and every repetition, in this process; and once in a",
    "fresh process, timing the `load` call only: the TensorFlow import is",
    "excluded, the first import of tensorflow_datasets is included).",
    "",
    "| dataset | items | interactions | prepare | load | load, fresh process |",
    "| --- | ---: | ---: | ---: | ---: | ---: |",
    *prepare_rows,
    "",
    "## Stream throughput on the synthetic default (interactions/s)",
    "",
    f"{args.steps} batches after 20 warm-up batches, read by a Python loop",
    "over the iterator (prefetched; no model attached).",
    "",
    "| stream | batch | interactions/s |",
    "| --- | ---: | ---: |",
    *stream_rows,
    "",
  ]
  os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
  with open(args.output, "w") as f:
    f.write("\n".join(lines))
  print("\n".join(lines))


if __name__ == "__main__":
  main()
