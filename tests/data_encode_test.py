"""Tests of vocabularies and ids (0 = OOV, entry v has id v + 1)."""

import numpy as np
import pytest

from tfr_ssl.data import encode
from tfr_ssl.data.contract import PAD
from tfr_ssl.data.errors import DataError
from tfr_ssl.data.raw import Bags, RawTable


def test_categorical_vocabulary_by_frequency_and_missing_is_oov():
  ids, vocab = encode.encode_categorical(np.array(["b", "a", "b", "", "c"]))
  # counts b=2, a=1, c=1 -> ["b", "a", "c"] (ties by value); "" -> OOV.
  assert vocab == ["b", "a", "c"]
  np.testing.assert_array_equal(ids, [1, 2, 1, 0, 3])
  assert ids.dtype == np.int32


def test_bags_are_padded_and_empty_bag_is_oov():
  bags = Bags(np.array(["x", "y", "y", "z"]), np.array([2, 0, 2]))
  dense, vocab = encode.encode_bags(bags)
  assert vocab == ["y", "x", "z"]  # y twice
  np.testing.assert_array_equal(dense, [[2, 1], [0, PAD], [1, 3]])


def test_row_ids_follow_table_order():
  table = RawTable(
    "t.csv", {"id": np.array(["k", "a", "m"])}, np.array([2, 3, 4])
  )
  ids, vocab = encode.encode_row_ids(table, "id")
  np.testing.assert_array_equal(ids, [1, 2, 3])
  assert vocab == ["k", "a", "m"]


def test_duplicate_row_id_names_line_of_second_occurrence():
  table = RawTable(
    "t.csv", {"id": np.array(["k", "a", "k"])}, np.array([2, 3, 5])
  )
  with pytest.raises(DataError) as error:
    encode.encode_row_ids(table, "id")
  assert (error.value.path, error.value.line, error.value.column) == (
    "t.csv",
    5,
    "id",
  )
  assert "duplicate id 'k'" in str(error.value)


def test_lookup_mixed_key_types():
  rows = encode.lookup(np.array([10, 30, 20]), np.array([20, 10, 99, 30]))
  np.testing.assert_array_equal(rows, [2, 0, -1, 1])
  rows = encode.lookup(np.array(["1", "2"]), np.array([2, 3]))
  np.testing.assert_array_equal(rows, [1, -1])
