"""Tests of the tf.data streams: shapes, gathered features, uniform items."""

import collections
import os

import numpy as np
import pytest

from tfr_ssl import data
from tfr_ssl.config import (
  DataConfig,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def prepared():
  # 12 books, 6 users, 25 interactions: 17 train, 4 validation, 4 test.
  return data.build(
    DataConfig(
      source="csv",
      data_dir=os.path.join(REPO, "data", "example"),
      cache_dir="/nonexistent",
      validation_fraction=0.16,
      test_fraction=0.16,
    )
  )


def numpy_batches(dataset, count=None):
  batches = dataset if count is None else dataset.take(count)
  return [
    {
      k: {n: t.numpy() for n, t in v.items()}
      if isinstance(v, dict)
      else v.numpy()
      for k, v in batch.items()
    }
    for batch in batches
  ]


def triples(prepared, batches):
  """(query row, item row, weight) of every streamed interaction."""
  query_id = prepared.schema.query_id
  return sorted(
    (int(q) - 1, int(i), float(w))  # query id = query row + 1
    for b in batches
    for q, i, w in zip(
      b["query"][query_id], b["item_index"], b["weight"], strict=True
    )
  )


def test_main_batches_have_static_shapes_and_dtypes(prepared):
  dataset = data.main_dataset(prepared, "train", 4)
  spec = dataset.element_spec
  assert spec["item_index"].shape == (4,)
  assert spec["weight"].dtype.name == "float32"
  assert spec["item"]["tags"].shape == (4, prepared.items["tags"].shape[1])
  assert set(spec["query"]) == {"user_id", "age_group", "country"}
  assert spec["query"]["age_group"].dtype.name == "int32"
  batches = numpy_batches(dataset)
  assert len(batches) == len(prepared.splits["train"]) // 4


def test_gathered_features_equal_the_tables(prepared):
  batches = numpy_batches(
    data.main_dataset(prepared, "train", 5, drop_remainder=False)
  )
  for batch in batches:
    rows = batch["item_index"]
    for name, values in batch["item"].items():
      np.testing.assert_array_equal(values, prepared.items[name][rows])
    query_rows = batch["query"]["user_id"] - 1
    for name, values in batch["query"].items():
      np.testing.assert_array_equal(values, prepared.queries[name][query_rows])
  split = prepared.splits["train"]
  expected = sorted(
    zip(
      split.query_index.tolist(),
      split.item_index.tolist(),
      split.weight.tolist(),
      strict=True,
    )
  )
  # One epoch streams every interaction exactly once.
  assert triples(prepared, batches) == expected


def test_unshuffled_stream_keeps_split_order(prepared):
  batches = numpy_batches(
    data.main_dataset(prepared, "test", 3, shuffle=False, drop_remainder=False)
  )
  streamed = np.concatenate([b["item_index"] for b in batches])
  np.testing.assert_array_equal(streamed, prepared.splits["test"].item_index)
  assert [len(b["item_index"]) for b in batches] == [3, 1]


def test_shuffling_is_seeded_and_fresh_on_every_pass(prepared):
  def order(dataset):
    return np.concatenate([b["item_index"] for b in numpy_batches(dataset)])

  dataset = data.main_dataset(prepared, "train", 1, seed=3)
  first = order(dataset)
  again = order(data.main_dataset(prepared, "train", 1, seed=3))
  np.testing.assert_array_equal(first, again)
  assert not np.array_equal(first, order(dataset))  # second pass
  other = order(data.main_dataset(prepared, "train", 1, seed=4))
  assert not np.array_equal(first, other)


def test_item_to_item_queries_are_previous_items(prepared):
  split = prepared.splits["train"]
  batches = numpy_batches(
    data.main_dataset(
      prepared, "train", 2, task="item_to_item", drop_remainder=False
    )
  )
  previous, items = [], []
  for batch in batches:
    assert set(batch["query"]) == set(batch["item"])
    prev_rows = batch["query"]["book_id"] - 1  # item id = row + 1
    for name, values in batch["query"].items():
      np.testing.assert_array_equal(values, prepared.items[name][prev_rows])
    previous += prev_rows.tolist()
    items += batch["item_index"].tolist()
  has_previous = split.prev_item_index >= 0
  assert sorted(zip(previous, items, strict=True)) == sorted(
    zip(
      split.prev_item_index[has_previous].tolist(),
      split.item_index[has_previous].tolist(),
      strict=True,
    )
  )


def test_item_stream_covers_the_corpus_uniformly(prepared):
  # 12 items, batches of 5: 12 batches = 60 draws = exactly 5 epochs.
  dataset = data.item_dataset(prepared, 5, seed=1)
  assert dataset.element_spec["item_index"].shape == (5,)
  batches = numpy_batches(dataset, 12)
  drawn = np.concatenate([b["item_index"] for b in batches])
  counts = collections.Counter(drawn.tolist())
  assert counts == {row: 5 for row in range(12)}
  # Each epoch is a permutation, and the next one is a different one.
  assert sorted(drawn[:12]) == list(range(12))
  assert not np.array_equal(drawn[:12], drawn[12:24])
  for batch in batches:
    for name, values in batch["item"].items():
      np.testing.assert_array_equal(
        values, prepared.items[name][batch["item_index"]]
      )


def test_corpus_in_order(prepared):
  batches = numpy_batches(data.corpus_dataset(prepared, 5))
  assert [len(b["item_index"]) for b in batches] == [5, 5, 2]
  rows = np.concatenate([b["item_index"] for b in batches])
  np.testing.assert_array_equal(rows, np.arange(12))
  tags = np.concatenate([b["item"]["tags"] for b in batches])
  np.testing.assert_array_equal(tags, prepared.items["tags"])


def test_train_dataset_zips_main_and_uniform_items(prepared):
  dataset = data.train_dataset(
    prepared, batch_size=4, ssl_batch_size=3, task="user_to_item", seed=0
  )
  spec = dataset.element_spec
  assert set(spec) == {
    "query",
    "item",
    "item_index",
    "weight",
    "ssl_item",
    "ssl_item_index",
  }
  assert spec["ssl_item_index"].shape == (3,)
  assert spec["ssl_item"]["tags"].shape[0] == 3
  batches = numpy_batches(dataset)
  assert len(batches) == 17 // 4  # one epoch of the main stream
  for batch in batches:
    np.testing.assert_array_equal(
      batch["ssl_item"]["genre"],
      prepared.items["genre"][batch["ssl_item_index"]],
    )
  repeated = data.train_dataset(
    prepared, batch_size=4, ssl_batch_size=3, task="item_to_item", repeat=True
  )
  assert len(numpy_batches(repeated, 10)) == 10


@pytest.mark.parametrize(
  "kwargs",
  [{"split": "dev"}, {"task": "both"}, {"batch_size": 0}],
)
def test_bad_arguments(prepared, kwargs):
  arguments = {"split": "train", "batch_size": 4, **kwargs}
  with pytest.raises(ValueError):
    data.main_dataset(prepared, **arguments)
