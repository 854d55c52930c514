"""Prepares a dataset (or loads it from the cache) and prints its statistics.

    python -m pipelines.prepare_data --source=synthetic
    python -m pipelines.prepare_data --source=movielens \
        --data_dir=$HOME/data/ml-1m --cache_dir=/tmp/tfr_ssl_cache

--force rebuilds a cached version. Bad input data ends with a one-line error
naming the file, line and column, and exit status 1.
"""

from __future__ import annotations

import time

from absl import app, flags

import tfr_ssl  # noqa: F401  (sets up Keras 2 before TensorFlow loads)
from pipelines import common
from tfr_ssl import data
from tfr_ssl.data.report import format_description

flags.DEFINE_bool("force", False, "Rebuild the dataset even if it is cached.")
FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config = common.config_from_flags().data
  start = time.perf_counter()
  cached = not FLAGS.force and common.run_or_fail(data.is_cached, config)
  prepared = common.run_or_fail(data.prepare, config, force=FLAGS.force)
  seconds = time.perf_counter() - start
  how = "loaded from the cache" if cached else "prepared"
  print(f"{how} in {seconds:.2f} s: {data.cache_path(config)}")
  print(format_description(data.describe(prepared), prepared.schema.query_item))


if __name__ == "__main__":
  common.define_config_flags()
  common.grouped_help("data")
  common.run(main)
