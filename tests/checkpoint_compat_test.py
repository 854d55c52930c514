"""Runs saved before a layout change still restore into today's code.

`tests/data/checkpoint_v1` was written by the code of commit 9397cc4 (see
its README): every value in it must find its variable in today's model and
optimizer, and the restored model must compute what the saved one did.
"""

import json
import os

import numpy as np
import tensorflow as tf

import tfr_ssl  # noqa: F401
from tests import model_fakes
from tfr_ssl import config as config_lib
from tfr_ssl.model import optimizers
from tfr_ssl.model import two_tower as model_lib

HERE = os.path.dirname(os.path.abspath(__file__))
SAVED = os.path.join(HERE, "data", "checkpoint_v1")


def _keys(prefix: str) -> dict[str, list[int]]:
  return {
    name: shape
    for name, shape in tf.train.list_variables(prefix)
    if name != "_CHECKPOINTABLE_OBJECT_GRAPH"
  }


def test_a_checkpoint_of_the_flat_layout_restores_exactly(tmp_path):
  with open(os.path.join(SAVED, "expected.json")) as f:
    expected = json.load(f)
  dataset = model_fakes.tiny_dataset()
  # The fields that run's config did not have take what they meant then
  # (an id-only query tower), as `Config.from_saved_json` reads a workdir.
  # Its overrides list what differed from the defaults of its day, when
  # logQ was streaming by default.
  config = config_lib.Config().override(
    {
      **config_lib.BEFORE_FIELD,
      "model.logq": "streaming",
      **expected["overrides"],
    }
  )
  model = model_lib.TwoTowerModel(config, dataset)
  model.compile(optimizer=optimizers.make_optimizer("adam", 0.01))
  checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer)
  # Restored as the training loop restores: before the optimizer is built,
  # so its slots (float32 update counters then, int64 now) are restored
  # when they are created.
  status = checkpoint.read(os.path.join(SAVED, "ckpt"))
  model.optimizer.build(model.trainable_variables)
  # Every saved value is matched to a variable of today's objects ...
  status.assert_consumed()
  # The optimizer's own step counter is restored as saved.
  reader = tf.train.load_checkpoint(os.path.join(SAVED, "ckpt"))
  saved_step = reader.get_tensor(
    "optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE"
  )
  assert int(model.optimizer.iterations) == int(saved_step) > 0
  # ... and today's code saves the same keys with the same shapes (so runs
  # saved before and after a layout change are interchangeable).
  written = checkpoint.write(str(tmp_path / "ckpt"))
  assert _keys(written) == _keys(os.path.join(SAVED, "ckpt"))
  items = {k: tf.constant(v) for k, v in dataset.items.items()}
  queries = {k: tf.constant(v) for k, v in dataset.queries.items()}
  np.testing.assert_allclose(
    model.item_tower(items).numpy(), expected["item_embeddings"], atol=2e-6
  )
  np.testing.assert_allclose(
    model.query_tower(queries).numpy(), expected["query_embeddings"], atol=2e-6
  )
  np.testing.assert_allclose(
    model.sampling.expected_counts(tf.range(24)).numpy(),
    expected["sampling_probabilities"],
    rtol=1e-6,
  )
  assert int(model.seed_step.numpy()) == expected["seed_step"]
