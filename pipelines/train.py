r"""Trains a two-tower retrieval model (or resumes an interrupted run).

Every config field is a flag (--help lists them by section); rerunning the
same command resumes from the last checkpoint in --workdir. One process at a
time may use a workdir, and settings that change what a resumed run computes
(data, model, SSL, optimizer, batch sizes, seed, schedule) are fixed for it.

Example:
  python -m pipelines.train --workdir=runs/cfm --masking=cfm --alpha=1 \
      --logq=streaming
  python -m pipelines.train --workdir=runs/ml1m --source=movielens \
      --data_dir=$HOME/data/ml-1m
"""

import json

from absl import app, flags

from pipelines import common
from tfr_ssl import train

_WORKDIR = flags.DEFINE_string("workdir", None, "Directory of the run.")
flags.mark_flag_as_required("workdir")
common.define_config_flags()
common.grouped_help("data", "model", "ssl", "train", "eval", "index")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config = common.config_from_flags()
  summary = common.run_or_fail(train.train_and_evaluate, config, _WORKDIR.value)
  print(json.dumps(summary, indent=2))


if __name__ == "__main__":
  app.run(main)
