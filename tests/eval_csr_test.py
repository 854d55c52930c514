"""Tests of the per-query CSR lists: row selection, entries, targets."""

import numpy as np

from tfr_ssl.data import csr as eval_csr


def test_select_csr_rows_renumbers_the_csr():
  # Rows: 0 -> [5], 1 -> [], 2 -> [7, 8].
  indptr = np.array([0, 1, 1, 3])
  indices = np.array([5, 7, 8])
  new_indptr, new_indices = eval_csr.select_csr_rows(
    (indptr, indices), np.array([2, 0])
  )
  np.testing.assert_array_equal(new_indptr, [0, 2, 3])
  np.testing.assert_array_equal(new_indices, [7, 8, 5])
  empty = eval_csr.select_csr_rows((indptr, indices), np.array([1]))
  np.testing.assert_array_equal(empty[0], [0, 0])
  assert empty[1].size == 0


def test_exclusion_without_targets_keeps_the_pairs_own_items():
  # Query 0 excludes items 4 and 7, query 1 excludes 7. Pairs (0, 7) and
  # (1, 5): item 7 leaves query 0's list only; one pair had its item listed.
  exclude, target_excluded = eval_csr.exclusion_without_targets(
    (np.array([0, 2, 3]), np.array([4, 7, 7])), [0, 1], [7, 5]
  )
  np.testing.assert_array_equal(exclude[0], [0, 1, 2])
  np.testing.assert_array_equal(exclude[1], [4, 7])
  assert target_excluded == 1


def test_csr_entries_are_coordinates_in_the_block():
  # Rows: 0 -> [5], 1 -> [], 2 -> [7, 8]. The block is rows [2, 0], so
  # row 2's entries sit at block row 0 and row 0's at block row 1.
  rows, cols = eval_csr.csr_entries(
    (np.array([0, 1, 1, 3]), np.array([5, 7, 8])), np.array([2, 0])
  )
  np.testing.assert_array_equal(rows, [0, 0, 1])
  np.testing.assert_array_equal(cols, [7, 8, 5])


def test_sorted_distinct_matches_np_unique():
  values = np.random.default_rng(0).integers(0, 50, 200)
  np.testing.assert_array_equal(
    eval_csr.sorted_distinct(values), np.unique(values)
  )
  assert eval_csr.sorted_distinct(np.array([3])).tolist() == [3]


def test_contains_and_from_entries():
  # Entries (row, col): (1, 4), (0, 7), (1, 4) again, (0, 2).
  csr = eval_csr.from_entries(np.array([1, 0, 1, 0]), np.array([4, 7, 4, 2]), 3)
  # Row 0: 2, 7; row 1: 4 (once); row 2: empty.
  np.testing.assert_array_equal(csr[0], [0, 2, 3, 3])
  np.testing.assert_array_equal(csr[1], [2, 7, 4])
  np.testing.assert_array_equal(
    eval_csr.contains(csr, [0, 0, 1, 2], [7, 4, 4, 4]),
    [True, False, True, False],
  )
