r"""Trains a two-tower retrieval model (or resumes an interrupted run).

Every config field is a flag (--help lists them by section); rerunning the
same command resumes from the last checkpoint in --workdir. One process at a
time may use a workdir, and settings that change what a resumed run computes
(data, model, SSL, optimizer, batch sizes, seed, schedule) are fixed for it.

On several devices or machines (`--strategy`, see README "Running on a
cluster"), every worker runs the same command with its own TF_CONFIG; the
global batch (--train_batch_size, --ssl_batch_size) is split over the
replicas and trains on the same softmax as one process would.

Example:
  python -m pipelines.train --workdir=runs/cfm --masking=cfm --alpha=1 \
      --logq=streaming
  python -m pipelines.train --workdir=runs/ml1m --source=movielens \
      --data_dir=$HOME/data/ml-1m
  TF_CONFIG='{"cluster": {"worker": ["h1:2222", "h2:2222"]},
      "task": {"type": "worker", "index": 0}}' \
    python -m pipelines.train --workdir=/shared/runs/a --strategy=multi_worker
"""

import json

from absl import app, flags

from pipelines import common
from tfr_ssl.training import distribute, train

_WORKDIR = flags.DEFINE_string("workdir", None, "Directory of the run.")
flags.mark_flag_as_required("workdir")
_STRATEGY = flags.DEFINE_enum(
  "strategy",
  "default",
  list(distribute.STRATEGIES),
  "tf.distribute strategy: default (one device), mirrored (the devices of "
  "this host), multi_worker (the workers of TF_CONFIG). Not a fixed "
  "setting: a run may resume under another strategy.",
)
_LOCAL_DEVICES = flags.DEFINE_integer(
  "local_devices",
  0,
  "With mirrored or multi_worker: split this host's CPU into this many "
  "logical devices, one replica each (0 = the devices found).",
)
common.define_config_flags()
common.grouped_help("data", "model", "ssl", "train", "eval", "index")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config = common.config_from_flags()
  strategy = common.run_or_fail(
    distribute.make_strategy, _STRATEGY.value, _LOCAL_DEVICES.value
  )
  summary = common.run_or_fail(
    train.train_and_evaluate, config, _WORKDIR.value, strategy
  )
  if distribute.role(strategy).chief:
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
  common.run(main)
