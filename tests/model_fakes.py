"""Tiny hand-built datasets and batches for the model tests.

The data is structured so that a model can learn it: every user likes one
category, and an item's tags are drawn from its category's tags, so query
and item features both carry signal (and item features are correlated, which
CFM exploits).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tfr_ssl.data import contract

NUM_ITEMS = 24
NUM_USERS = 12
NUM_CATEGORIES = 4
NUM_TAGS = 8
MAX_TAGS = 3


def tiny_dataset(seed: int = 0, num_interactions: int = 400):
  """A PreparedDataset with item features `item_id`, `category`, `tags`.

  Returns:
    A `contract.PreparedDataset` (query features: `user_id`).
  """
  rng = np.random.default_rng(seed)
  schema = contract.Schema(
    features=(
      contract.Feature("user_id", contract.CATEGORICAL, contract.QUERY),
      contract.Feature("item_id", contract.CATEGORICAL, contract.ITEM),
      contract.Feature("category", contract.CATEGORICAL, contract.ITEM),
      contract.Feature("tags", contract.MULTI_CATEGORICAL, contract.ITEM),
    ),
    item_id="item_id",
    query_id="user_id",
  )
  vocabularies = {
    "user_id": [f"u{i}" for i in range(NUM_USERS)],
    "item_id": [f"i{i}" for i in range(NUM_ITEMS)],
    "category": [f"c{i}" for i in range(NUM_CATEGORIES)],
    "tags": [f"t{i}" for i in range(NUM_TAGS)],
  }
  category = np.arange(NUM_ITEMS) % NUM_CATEGORIES
  tags = np.full([NUM_ITEMS, MAX_TAGS], contract.PAD, np.int32)
  for row in range(NUM_ITEMS):
    # Category c owns tags 2c and 2c+1 (ids +1 for the OOV bucket).
    n = 1 + row % MAX_TAGS
    own = [2 * category[row] + 1, 2 * category[row] + 2]
    tags[row, :n] = rng.choice(own, size=n)
  items = {
    "item_id": np.arange(1, NUM_ITEMS + 1, dtype=np.int32),
    "category": (category + 1).astype(np.int32),
    "tags": tags,
  }
  queries = {"user_id": np.arange(1, NUM_USERS + 1, dtype=np.int32)}
  user_category = np.arange(NUM_USERS) % NUM_CATEGORIES
  query_index = rng.integers(0, NUM_USERS, size=num_interactions)
  # Zipf-like popularity inside each category.
  choice = []
  for user in query_index:
    rows = np.flatnonzero(category == user_category[user])
    weights = 1.0 / np.arange(1, rows.size + 1)
    choice.append(rng.choice(rows, p=weights / weights.sum()))
  item_index = np.asarray(choice, np.int32)
  train = contract.Interactions(
    query_index=query_index.astype(np.int32),
    item_index=item_index,
    weight=np.ones(num_interactions, np.float32),
    timestamp=None,
    prev_item_index=np.roll(item_index, 1),
  )
  count = np.bincount(item_index, minlength=NUM_ITEMS).astype(np.int64)
  return contract.PreparedDataset(
    schema=schema,
    vocabularies=vocabularies,
    items=items,
    queries=queries,
    splits={"train": train},
    item_train_count=count,
    train_items_by_query=(np.zeros(NUM_USERS + 1, np.int64), np.zeros(0)),
  )


def _rows(table: dict, rows: np.ndarray) -> dict:
  return {name: tf.constant(values[rows]) for name, values in table.items()}


def batch(
  dataset,
  rows: np.ndarray,
  ssl_rows: np.ndarray,
  task: str = "user_to_item",
) -> dict:
  """One batch in the training format from interaction and corpus rows."""
  train = dataset.splits["train"]
  if task == "item_to_item":
    query = _rows(dataset.items, train.prev_item_index[rows])
  else:
    query = _rows(dataset.queries, train.query_index[rows])
  return {
    "query": query,
    "item": _rows(dataset.items, train.item_index[rows]),
    "item_index": tf.constant(train.item_index[rows]),
    "weight": tf.constant(train.weight[rows]),
    "ssl_item": _rows(dataset.items, ssl_rows),
    "ssl_item_index": tf.constant(ssl_rows.astype(np.int32)),
  }


def batches(
  dataset,
  batch_size: int = 32,
  ssl_batch_size: int = 16,
  num_batches: int = 20,
  task: str = "user_to_item",
  seed: int = 0,
) -> list[dict]:
  """`num_batches` shuffled training batches plus uniform SSL items."""
  rng = np.random.default_rng(seed)
  n = len(dataset.splits["train"])
  out = []
  for _ in range(num_batches):
    rows = rng.choice(n, size=batch_size, replace=False)
    ssl_rows = rng.choice(dataset.num_items, size=ssl_batch_size)
    out.append(batch(dataset, rows, ssl_rows, task))
  return out


def as_dataset(batch_list: list[dict]) -> tf.data.Dataset:
  """A tf.data stream of precomputed batches (same shapes each)."""

  def gen():
    yield from batch_list

  spec = tf.nest.map_structure(
    lambda t: tf.TensorSpec(t.shape, t.dtype), batch_list[0]
  )
  return tf.data.Dataset.from_generator(gen, output_signature=spec)


def interactions(query_index, item_index, prev_item_index=None):
  """A split of (query, item) rows, weight 1, no timestamps; no query items
  unless `prev_item_index` gives them."""
  n = len(query_index)
  if prev_item_index is None:
    prev_item_index = [contract.PAD] * n
  return contract.Interactions(
    query_index=np.array(query_index, np.int32),
    item_index=np.array(item_index, np.int32),
    weight=np.ones(n, np.float32),
    timestamp=None,
    prev_item_index=np.array(prev_item_index, np.int32),
  )
