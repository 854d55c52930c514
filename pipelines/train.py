r"""Trains a two-tower retrieval model (or resumes an interrupted run).

Every config field is a flag (see --helpfull); rerunning the same command
resumes from the last checkpoint in --workdir.

Example:
  python -m pipelines.train --workdir=runs/cfm --masking=cfm --alpha=1 \
      --logq=streaming
  python -m pipelines.train --workdir=runs/ml1m --source=movielens \
      --data_dir=../shared/data/ml-1m
"""

import json

from absl import app, flags

from pipelines import common
from tfr_ssl import train

_WORKDIR = flags.DEFINE_string("workdir", None, "Directory of the run.")
flags.mark_flag_as_required("workdir")
common.define_config_flags()


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config = common.config_from_flags()
  summary = common.run_or_fail(train.train_and_evaluate, config, _WORKDIR.value)
  print(json.dumps(summary, indent=2))


if __name__ == "__main__":
  app.run(main)
