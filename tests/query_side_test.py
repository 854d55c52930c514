"""Tests of the one object that says how a query is formed per task."""

import numpy as np
import pytest

from tests import eval_pairs_test, model_fakes
from tfr_ssl.data import query_side


def test_user_to_item_queries_are_users_of_every_interaction():
  data = model_fakes.tiny_dataset()
  side = query_side.query_side("user_to_item")
  train = data.splits["train"]
  assert not side.is_item
  np.testing.assert_array_equal(side.usable(train), np.arange(len(train)))
  np.testing.assert_array_equal(side.query_of(train), train.query_index)
  assert side.table(data) is data.queries
  assert side.features(data.schema) == data.schema.query_features


def test_item_to_item_queries_are_items_of_interactions_that_have_one():
  data = model_fakes.tiny_dataset()
  side = query_side.query_side("item_to_item")
  train = data.splits["train"]
  # Mark every third interaction as having no query item.
  prev = train.prev_item_index.copy()
  prev[::3] = -1
  train.prev_item_index = prev
  usable = side.usable(train)
  assert side.is_item
  assert len(usable) == len(train) - len(range(0, len(train), 3))
  assert np.all(usable % 3 != 0)
  assert side.table(data) is data.items
  assert side.features(data.schema) == data.schema.item_features


def test_an_unknown_task_is_refused_by_name():
  with pytest.raises(ValueError, match="'session'"):
    query_side.query_side("session")


def test_training_counts_follow_the_rows_the_task_trains_on():
  prepared = eval_pairs_test.item_to_item_dataset()
  # Every training row: i0 once, i1 twice, i2 once, i3 once, i4 never.
  users = query_side.query_side("user_to_item").item_train_count(prepared)
  np.testing.assert_array_equal(users, [1, 2, 1, 1, 0])
  assert users is prepared.item_train_count
  # Rows with a query item only: (i0 -> i1) twice and (i1 -> i2).
  seeds = query_side.query_side("item_to_item").item_train_count(prepared)
  np.testing.assert_array_equal(seeds, [0, 2, 1, 0, 0])
  # The dataset a model of each task would be built from carries its counts.
  assert query_side.query_side("user_to_item").trained_on(prepared) is prepared
  view = query_side.query_side("item_to_item").trained_on(prepared)
  np.testing.assert_array_equal(view.item_train_count, seeds)
  assert view.splits is prepared.splits
  np.testing.assert_array_equal(prepared.item_train_count, users)
