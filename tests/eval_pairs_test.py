"""Tests of which pairs an evaluation scores: sampling, duplicates, known pairs.

Each test builds its own tiny dataset; the golden values are derived in the
comments.
"""

import numpy as np
import pytest
import tensorflow as tf

import tfr_ssl  # noqa: F401
from tests.model_fakes import interactions as _interactions
from tfr_ssl import config as config_lib
from tfr_ssl.data import contract, stats
from tfr_ssl.evaluation import embed
from tfr_ssl.evaluation import metrics as evaluate
from tfr_ssl.evaluation import pairs as eval_pairs


def _dataset(num_items, num_queries, train, validation, test):
  """A PreparedDataset of `item_id` / `user_id` only, counts from `train`."""
  schema = contract.Schema(
    features=(
      contract.Feature("user_id", contract.CATEGORICAL, contract.QUERY),
      contract.Feature("item_id", contract.CATEGORICAL, contract.ITEM),
    ),
    item_id="item_id",
    query_id="user_id",
  )
  return contract.PreparedDataset(
    schema=schema,
    vocabularies={
      "user_id": [f"u{i}" for i in range(num_queries)],
      "item_id": [f"i{i}" for i in range(num_items)],
    },
    items={"item_id": np.arange(1, num_items + 1, dtype=np.int32)},
    queries={"user_id": np.arange(1, num_queries + 1, dtype=np.int32)},
    splits={"train": train, "validation": validation, "test": test},
    item_train_count=stats.item_train_count(train.item_index, num_items),
    train_items_by_query=stats.items_by_query(
      train.query_index, train.item_index, num_queries
    ),
  )


def item_to_item_dataset():
  """Five items; test pairs that repeat, and that equal earlier pairs.

  train (query item -> item): (none -> i0), (i0 -> i1), (i1 -> i2),
    (i0 -> i1), (none -> i3)
  validation: (i1 -> i4)
  test: (i0 -> i1), (i0 -> i2), (i0 -> i2), (i1 -> i3), (i1 -> i4)
  """
  return _dataset(
    num_items=5,
    num_queries=2,
    train=_interactions([0, 0, 0, 1, 1], [0, 1, 2, 1, 3], [-1, 0, 1, 0, -1]),
    validation=_interactions([0], [4], [1]),
    test=_interactions([0, 0, 0, 1, 1], [1, 2, 2, 3, 4], [0, 0, 0, 1, 1]),
  )


def item_tower(features):
  # i0..i4 score 5, 4, 3, 2, 1 for a positive query: ranked in row order.
  table = tf.constant([[5.0], [4.0], [3.0], [2.0], [1.0]])
  return tf.gather(table, features["item_id"] - 1)


def positive_query(features):
  # [1] for every query, user or seed item: every ranking is i0, i1, ...
  return tf.ones([tf.shape(next(iter(features.values())))[0], 1])


def test_item_to_item_drops_test_pairs_that_are_earlier_pairs():
  prepared = item_to_item_dataset()
  pairs = eval_pairs.select_pairs(prepared, "test", "item_to_item")
  # Five test rows with a query item; (i0 -> i2) repeats once; (i0 -> i1)
  # is a training pair and (i1 -> i4) a validation pair: both dropped.
  # Left: row 1 (i0 -> i2) and row 3 (i1 -> i3).
  np.testing.assert_array_equal(pairs.pair_rows, [1, 3])
  np.testing.assert_array_equal(pairs.query_rows, [0, 1])
  np.testing.assert_array_equal(pairs.targets, [2, 3])
  assert pairs.selection["duplicates_removed"] == 1
  assert pairs.selection["known_pairs"] == "dropped"
  assert pairs.selection["known_pairs_dropped"] == 2
  # Known items, still excluded from the rankings: seed i0 -> itself and
  # i1 (train); seed i1 -> itself, i2 (train) and i4 (validation).
  indptr, indices = pairs.excluded_items
  np.testing.assert_array_equal(indices[indptr[0] : indptr[1]], [0, 1])
  np.testing.assert_array_equal(indices[indptr[1] : indptr[2]], [1, 2, 4])
  assert pairs.exclusion_sources == ("seed_item", "train", "validation")


def test_item_to_item_metrics_neither_rank_nor_score_known_pairs():
  prepared = item_to_item_dataset()
  metrics = embed.evaluate_model(
    positive_query,
    item_tower,
    prepared,
    "test",
    config_lib.EvalConfig(ks=(1, 2), head_fraction=0.5),
    task="item_to_item",
  )
  # Seed i0 ranks i2, i3, i4 once i0 and i1 are masked: (i0 -> i2) at 0.
  # Seed i1 ranks i0, i3 once i1, i2 and i4 are masked: (i1 -> i3) at 1.
  # Had (i0 -> i1) stayed, it would have been a hit at 0 (scored) and i1
  # would have pushed i2 to position 1.
  assert metrics["num_pairs"] == 2
  assert (metrics["recall@1"], metrics["recall@2"]) == (0.5, 1.0)
  protocol = metrics["protocol"]
  assert protocol["known_pairs_dropped"] == 2
  assert protocol["duplicates_removed"] == 1
  assert protocol["train_counts"] == (
    "training interactions that have a query item"
  )
  # The slices count the rows item-to-item trains on (those with a query
  # item): i1 twice, i2 once; i0, i3 and i4 are cold. Counting every
  # training row, i0 and i3 would be seen and (i1 -> i3) a tail pair.
  cold = metrics["slices"]["cold"]
  assert (cold["num_items"], cold["num_held_out_items"]) == (3, 1)
  assert cold["num_pairs"] == 1 and cold["recall@2"] == 1.0


def test_repeated_pairs_are_scored_once():
  # u0 has i1 twice in test and i2 once; u0's vector ranks i0, i1, i2.
  prepared = _dataset(
    num_items=3,
    num_queries=1,
    train=_interactions([0], [0]),
    validation=_interactions([0], [0]),
    test=_interactions([0, 0, 0], [1, 2, 1]),
  )
  pairs = eval_pairs.select_pairs(prepared, "test")
  np.testing.assert_array_equal(pairs.pair_rows, [0, 1])
  assert pairs.selection["duplicates_removed"] == 1

  def item_tower(features):
    return tf.gather(
      tf.constant([[3.0], [2.0], [1.0]]), features["item_id"] - 1
    )

  def user_tower(features):
    return tf.ones([tf.shape(features["user_id"])[0], 1])

  metrics = embed.evaluate_model(
    user_tower,
    item_tower,
    prepared,
    "test",
    config_lib.EvalConfig(ks=(1,), head_fraction=0.5),
  )
  # i0 is masked: i1 at 0 (a hit), i2 at 1. Scored once each: recall@1 =
  # 1/2; counting the repeat it would be 2/3.
  assert metrics["num_pairs"] == 2
  assert metrics["recall@1"] == 0.5


def _users_dataset(pairs_per_user):
  """One test pair per (user, item) listed; nothing known earlier."""
  users = [u for u, n in enumerate(pairs_per_user) for _ in range(n)]
  items = [i for n in pairs_per_user for i in range(n)]
  num_items = max(pairs_per_user) + 1
  empty = _interactions([0], [num_items - 1])
  return _dataset(
    num_items,
    len(pairs_per_user),
    empty,
    empty,
    _interactions(users, items),
  )


def test_max_pairs_samples_whole_queries():
  # Six users with 1, 2, 3, 1, 2, 3 pairs: 12 pairs, 2 per user on average.
  prepared = _users_dataset([1, 2, 3, 1, 2, 3])
  full = eval_pairs.select_pairs(prepared, "test")
  per_user = np.bincount(full.query_rows)
  for seed in range(20):
    sample = eval_pairs.select_pairs(prepared, "test", max_pairs=5, seed=seed)
    # round(5 pairs / 2 per user) = round(2.5) = 3 users, each with all
    # its pairs.
    assert sample.queries.shape[0] == 3
    np.testing.assert_array_equal(
      np.bincount(sample.query_rows, minlength=6)[sample.queries],
      per_user[sample.queries],
    )
    assert sample.selection["sampling"]["num_queries"] == 3
    assert sample.selection["sampling"]["num_pairs"] == len(sample)
  again = eval_pairs.select_pairs(prepared, "test", max_pairs=5, seed=19)
  np.testing.assert_array_equal(sample.pair_rows, again.pair_rows)
  # A budget at or above the pairs keeps them all.
  assert len(eval_pairs.select_pairs(prepared, "test", max_pairs=12)) == 12
  with pytest.raises(ValueError, match="max_pairs"):
    eval_pairs.select_pairs(prepared, "test", max_pairs=-1)


def test_query_sampling_keeps_map_unbiased_golden_two_pairs():
  # One query whose two held-out items are ranked first and second: AP@2 =
  # (1/1 + 2/2) / 2 = 1.
  prepared = _users_dataset([2])
  items = np.array([[2.0], [1.0]], np.float32)
  query = np.array([[1.0]], np.float32)
  full = evaluate.evaluate_embeddings(query, items, [0, 0], [0, 1], ks=(2,))
  assert full["map@2"] == 1.0
  # Sampling one of the two pairs, as a pair sample of max_pairs=1 does,
  # keeps i1 alone half of the time: AP@2 = (1/2) / min(2, 1) = 0.5.
  half = evaluate.evaluate_embeddings(query, items, [0], [1], ks=(2,))
  assert half["map@2"] == 0.5
  # A query sample of max_pairs=1 takes round(1 / 2 pairs per query) = 1
  # whole query: both pairs, AP 1.
  sample = eval_pairs.select_pairs(prepared, "test", max_pairs=1, seed=0)
  np.testing.assert_array_equal(sample.targets, [0, 1])
  sampled = evaluate.evaluate_embeddings(
    query, items, sample.query_of_pair, sample.targets, ks=(2,)
  )
  assert sampled["map@2"] == 1.0


def test_sampled_map_averages_to_the_full_map():
  # Eight users, 1 to 4 pairs each, random vectors. A sample of m whole
  # queries out of Q, uniform without replacement, holds each query with
  # probability m / Q, so E[sampled MAP] = sum_q AP_q (m / Q) / m = MAP.
  # Each sample's MAP is exactly the mean AP of its queries (every query
  # keeps all its pairs). Over 400 seeds the mean of the samples' MAP has a
  # standard deviation below sqrt(0.25 / m * (Q - m) / (Q - 1)) / sqrt(400)
  # = 0.011 (APs lie in [0, 1]; m = 4 of Q = 8); 0.05 is over 4 of them.
  pairs_per_user = [1, 2, 3, 4, 1, 2, 3, 4]
  prepared = _users_dataset(pairs_per_user)
  rng = np.random.default_rng(7)
  queries = rng.normal(size=(8, 3)).astype(np.float32)
  items = rng.normal(size=(5, 3)).astype(np.float32)
  full_pairs = eval_pairs.select_pairs(prepared, "test")
  full = evaluate.evaluate_embeddings(
    queries[full_pairs.queries],
    items,
    full_pairs.query_of_pair,
    full_pairs.targets,
    ks=(2,),
  )
  ap = {}
  for user in range(8):
    mine = full_pairs.query_rows == user
    ap[user] = evaluate.evaluate_embeddings(
      queries[[user]],
      items,
      np.zeros(mine.sum(), int),
      full_pairs.targets[mine],
      ks=(2,),
    )["map@2"]
  assert full["map@2"] == pytest.approx(np.mean(list(ap.values())))
  sampled = []
  for seed in range(400):
    # 10 of 20 pairs at 2.5 per user: round(4) = 4 users.
    sample = eval_pairs.select_pairs(prepared, "test", max_pairs=10, seed=seed)
    value = evaluate.evaluate_embeddings(
      queries[sample.queries],
      items,
      sample.query_of_pair,
      sample.targets,
      ks=(2,),
    )["map@2"]
    assert value == pytest.approx(np.mean([ap[q] for q in sample.queries]))
    sampled.append(value)
  assert np.mean(sampled) == pytest.approx(full["map@2"], abs=0.05)
  # The same budget spent on pairs (10 of the 20, uniform) splits the
  # queries' positives; here its mean MAP falls far below the full MAP.
  by_pairs = []
  for seed in range(400):
    rows = np.random.default_rng(seed).choice(20, 10, replace=False)
    by_pairs.append(
      evaluate.evaluate_embeddings(
        queries,
        items,
        full_pairs.query_rows[rows],
        full_pairs.targets[rows],
        ks=(2,),
      )["map@2"]
    )
  assert np.mean(by_pairs) < full["map@2"] - 0.1
