"""Tests of histories, random and temporal splits, and train_fraction."""

import numpy as np
import pytest

from tfr_ssl.data import splits
from tfr_ssl.data.contract import PAD
from tfr_ssl.data.errors import DataError


def test_previous_items_by_timestamp():
  # query 0: items 5 @ t=30, 6 @ t=10, 7 @ t=20 -> order 6, 7, 5
  # query 1: item 8 alone.
  previous = splits.previous_items(
    np.array([0, 0, 1, 0]),
    np.array([5, 6, 8, 7]),
    np.array([30, 10, 0, 20]),
  )
  np.testing.assert_array_equal(previous, [7, PAD, PAD, 6])


def test_previous_items_by_file_order_without_timestamps():
  previous = splits.previous_items(
    np.array([1, 0, 1, 1]), np.array([3, 4, 5, 6]), None
  )
  np.testing.assert_array_equal(previous, [PAD, PAD, 3, 5])


def test_previous_items_ties_keep_file_order():
  previous = splits.previous_items(
    np.array([0, 0, 0]), np.array([1, 2, 3]), np.array([5, 5, 1])
  )
  # order: item 3 (t=1), item 1 (t=5, first in file), item 2 (t=5).
  np.testing.assert_array_equal(previous, [3, 1, PAD])


def test_previous_items_by_split_look_only_within_the_split():
  # Interactions (row: query, item), no timestamps (file order):
  #   0: q0 10   1: q0 11   2: q0 12   3: q0 13   4: q1 20   5: q1 21
  #   6: q1 22
  # split: train [0, 2, 3, 5], validation [1, 6], test [4].
  # Over the whole history q0 sees 10, 11, 12, 13 and q1 20, 21, 22, so the
  # train rows would get [PAD, 11, 12, 20]: 11 is a validation item and 20 a
  # test item (leakage). Within each split:
  #   train: q0 10, 12, 13 -> PAD, 10, 12; q1 21 -> PAD   = [PAD, 10, 12, PAD]
  #   validation: q0 11 -> PAD; q1 22 -> PAD              = [PAD, PAD]
  #   test: q1 20 -> PAD                                  = [PAD]
  rows = {
    "train": np.array([0, 2, 3, 5]),
    "validation": np.array([1, 6]),
    "test": np.array([4]),
  }
  previous = splits.previous_items_by_split(
    rows,
    np.array([0, 0, 0, 0, 1, 1, 1]),
    np.array([10, 11, 12, 13, 20, 21, 22]),
    None,
  )
  np.testing.assert_array_equal(previous["train"], [PAD, 10, 12, PAD])
  np.testing.assert_array_equal(previous["validation"], [PAD, PAD])
  np.testing.assert_array_equal(previous["test"], [PAD])
  for name in rows:
    assert previous[name].dtype == np.int32


def test_previous_items_by_split_follow_timestamps_within_the_split():
  # q0: rows 0 (item 1, t=30), 1 (item 2, t=10), 2 (item 3, t=20), 3 (item
  # 4, t=5). Train rows [0, 1, 2]: by time 2, 3, 1 -> prev of row 0 is 3, of
  # row 1 PAD, of row 2 is 2. Row 3 (test, t=5) precedes all of them, but it
  # is in another split, so it is nobody's previous item here.
  previous = splits.previous_items_by_split(
    {"train": np.array([0, 1, 2]), "test": np.array([3])},
    np.array([0, 0, 0, 0]),
    np.array([1, 2, 3, 4]),
    np.array([30, 10, 20, 5]),
  )
  np.testing.assert_array_equal(previous["train"], [3, PAD, 2])
  np.testing.assert_array_equal(previous["test"], [PAD])


def _split(kind="random", n=1000, seed=0, **overrides):
  """split_rows of n interactions: 70% train, 10% validation, 20% test."""
  arguments = {
    "timestamp": None,
    "validation_fraction": 0.1,
    "test_fraction": 0.2,
    "train_fraction": 1.0,
    **overrides,
  }
  return splits.split_rows(kind, num_interactions=n, seed=seed, **arguments)


def test_random_split_partitions_and_is_deterministic():
  rows = _split(seed=3)
  assert [len(rows[s]) for s in ("train", "validation", "test")] == [
    700,
    100,
    200,
  ]
  everything = np.concatenate(list(rows.values()))
  np.testing.assert_array_equal(np.sort(everything), np.arange(1000))
  for name, r in _split(seed=3).items():
    np.testing.assert_array_equal(r, rows[name])
  assert not np.array_equal(_split(seed=4)["test"], rows["test"])


def test_temporal_split_cuts_by_global_time():
  rng = np.random.default_rng(0)
  timestamp = rng.integers(0, 50, 200)
  rows = _split("temporal", n=200, timestamp=timestamp, test_fraction=0.1)
  assert [len(rows[s]) for s in ("train", "validation", "test")] == [
    160,
    20,
    20,
  ]
  assert timestamp[rows["train"]].max() <= timestamp[rows["validation"]].min()
  assert timestamp[rows["validation"]].max() <= timestamp[rows["test"]].min()


def test_temporal_split_without_timestamps_is_a_data_error():
  with pytest.raises(DataError, match=r"ratings\.dat has 3 fields"):
    _split(
      "temporal",
      n=10,
      path="ratings.dat",
      no_timestamp_reason="ratings.dat has 3 fields",
    )


def test_train_fraction_subsamples_train_only():
  full = _split(seed=1)
  rows = _split(seed=1, train_fraction=0.1)
  assert len(rows["train"]) == 70
  assert np.isin(rows["train"], full["train"]).all()
  np.testing.assert_array_equal(rows["test"], full["test"])
  np.testing.assert_array_equal(rows["validation"], full["validation"])


@pytest.mark.parametrize(
  "validation,test,train", [(0.5, 0.5, 1.0), (-0.1, 0.1, 1.0), (0.1, 0.1, 0.0)]
)
def test_bad_fractions(validation, test, train):
  with pytest.raises(ValueError, match="fraction"):
    splits.check_fractions(validation, test, train)
