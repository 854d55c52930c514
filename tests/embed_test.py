"""Tests of tower application and scoring on a split."""

import numpy as np
import tensorflow as tf

import tfr_ssl  # noqa: F401
from tests.model_fakes import interactions as _interactions
from tfr_ssl import config as config_lib
from tfr_ssl.data import contract
from tfr_ssl.evaluation import embed
from tfr_ssl.evaluation import metrics as evaluate
from tfr_ssl.evaluation import pairs as eval_pairs


def test_embed_rows_batches_in_order():
  table = {"a": np.arange(10, dtype=np.int32)}

  def tower(features):
    return tf.cast(features["a"], tf.float32)[:, None] * [1.0, 2.0]

  out = embed.embed_rows(tower, table, rows=np.array([9, 3, 4]), batch_size=2)
  np.testing.assert_array_equal(out, [[9, 18], [3, 6], [4, 8]])


def known_positives_dataset():
  """Two users, four items; every split knows something about both.

  u0 trained on i0, validated on i1 and is tested on i2 (its previous item
  i1); u1 trained on i0 and has i3 in validation and in test (no previous
  item).
  """
  schema = contract.Schema(
    features=(
      contract.Feature("user_id", contract.CATEGORICAL, contract.QUERY),
      contract.Feature("item_id", contract.CATEGORICAL, contract.ITEM),
    ),
    item_id="item_id",
    query_id="user_id",
  )
  train = _interactions([0, 1], [0, 0])
  return contract.PreparedDataset(
    schema=schema,
    vocabularies={"user_id": ["u0", "u1"], "item_id": ["a", "b", "c", "d"]},
    items={"item_id": np.arange(1, 5, dtype=np.int32)},
    queries={"user_id": np.arange(1, 3, dtype=np.int32)},
    splits={
      "train": train,
      "validation": _interactions([0, 1], [1, 3]),
      "test": _interactions([0, 1], [2, 3], prev_item_index=[1, -1]),
    },
    item_train_count=np.array([2, 0, 0, 0], np.int64),
    train_items_by_query=(np.array([0, 1, 2]), np.array([0, 0], np.int32)),
  )


# Scores: item embeddings [4], [3], [2], [1]; u0 = [1] ranks i0, i1, i2, i3
# and u1 = [-1] ranks i3, i2, i1, i0.
def _item_tower(features):
  table = tf.constant([[4.0], [3.0], [2.0], [1.0]])
  return tf.gather(table, features["item_id"] - 1)


def _query_tower(features):
  table = tf.constant([[1.0], [-1.0]])
  return tf.gather(table, features["user_id"] - 1)


def test_select_pairs_excludes_the_positives_of_the_earlier_splits():
  prepared = known_positives_dataset()
  test = eval_pairs.select_pairs(prepared, "test")
  assert test.exclusion_sources == ("train", "validation")
  np.testing.assert_array_equal(test.queries, [0, 1])
  np.testing.assert_array_equal(test.query_of_pair, [0, 1])
  np.testing.assert_array_equal(test.targets, [2, 3])
  # u0: i0 (train), i1 (validation); u1: i0 (train), i3 (validation).
  np.testing.assert_array_equal(test.excluded_items[0], [0, 2, 4])
  np.testing.assert_array_equal(test.excluded_items[1], [0, 1, 0, 3])
  validation = eval_pairs.select_pairs(prepared, "validation")
  assert validation.exclusion_sources == ("train",)
  np.testing.assert_array_equal(validation.excluded_items[0], [0, 1, 2])
  np.testing.assert_array_equal(validation.excluded_items[1], [0, 0])
  # Item-to-item: u1's test pair has no previous item; u0's seed i1 excludes
  # itself only (no earlier row has a query item, so nothing followed it).
  seeds = eval_pairs.select_pairs(prepared, "test", "item_to_item")
  assert seeds.exclusion_sources == ("seed_item", "train", "validation")
  np.testing.assert_array_equal(seeds.pair_rows, [0])
  np.testing.assert_array_equal(seeds.queries, [1])
  np.testing.assert_array_equal(seeds.excluded_items[1], [1])
  # A seeded sample of whole queries, the same every time: two queries of
  # one pair each and a budget of one pair -> round(1 * 2 / 2) = 1 query.
  sample = eval_pairs.select_pairs(prepared, "test", max_pairs=1, seed=3)
  again = eval_pairs.select_pairs(prepared, "test", max_pairs=1, seed=3)
  assert len(sample) == 1
  np.testing.assert_array_equal(sample.pair_rows, again.pair_rows)
  row = sample.pair_rows[0]
  np.testing.assert_array_equal(sample.query_rows, [row])  # user = row here


def test_validation_positive_does_not_outrank_the_test_item():
  prepared = known_positives_dataset()
  eval_config = config_lib.EvalConfig(ks=(1,), head_fraction=0.5)
  metrics = embed.evaluate_model(
    _query_tower, _item_tower, prepared, "test", eval_config
  )
  # u0 without i0 and i1 ranks i2 first: a hit. Excluding training items
  # only, i1 (its validation item) would take position 0 and i2 drop to 1.
  # u1's test item i3 is also its validation item: it stays scoreable and
  # is first (num_pairs_target_in_train counts it).
  assert metrics["recall@1"] == 1.0
  assert metrics["num_pairs_target_in_train"] == 1
  assert metrics["excluded"] == ["train", "validation"]
  train_only = evaluate.evaluate_embeddings(
    np.array([[1.0], [-1.0]], np.float32),
    np.array([[4.0], [3.0], [2.0], [1.0]], np.float32),
    np.array([0, 1]),
    np.array([2, 3]),
    exclude=prepared.train_items_by_query,
    ks=(1,),
  )
  assert train_only["recall@1"] == 0.5
  # On validation only the training items are excluded: u0's i1 and u1's i3
  # are first once i0 is gone.
  validation = embed.evaluate_model(
    _query_tower, _item_tower, prepared, "validation", eval_config
  )
  assert validation["recall@1"] == 1.0
  assert validation["excluded"] == ["train"]


def test_item_to_item_excludes_the_seed_item():
  prepared = known_positives_dataset()
  eval_config = config_lib.EvalConfig(ks=(1, 2))

  def seed_tower(features):  # the seed's own embedding
    return _item_tower(features)

  metrics = embed.evaluate_model(
    seed_tower, _item_tower, prepared, "test", eval_config, "item_to_item"
  )
  # Seed i1 ([3]) ranks i0, i1, i2, i3; without i1 the target i2 is at 1.
  assert metrics["num_pairs"] == 1
  assert (metrics["recall@1"], metrics["recall@2"]) == (0.0, 1.0)
  assert metrics["excluded"] == ["seed_item", "train", "validation"]
