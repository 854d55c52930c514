"""Tests of the popularity slices: head, tail, cold and deciles."""

import numpy as np
import pytest

from tfr_ssl.evaluation import metrics as evaluate
from tfr_ssl.evaluation import slices as eval_slices


def test_item_slices_head_tail_cold_and_deciles():
  count = np.array([5, 0, 9, 1, 1, 0, 2, 3, 4, 7])
  slices = eval_slices.item_slices(count, head_fraction=0.2)
  # 8 items are seen (rows 1 and 5 are cold): round(0.2 * 8 = 1.6) = 2 head
  # items, counts 9 (row 2) and 7 (row 9).
  np.testing.assert_array_equal(np.flatnonzero(slices["head"]), [2, 9])
  np.testing.assert_array_equal(np.flatnonzero(slices["cold"]), [1, 5])
  np.testing.assert_array_equal(
    np.flatnonzero(slices["tail"]), [0, 3, 4, 6, 7, 8]
  )
  # Ascending by count, ties to the lower row: rows 1, 5 (0), 3, 4 (1),
  # 6 (2), 7 (3), 8 (4), 0 (5), 9 (7), 2 (9); one item per decile.
  np.testing.assert_array_equal(
    slices["decile"], [7, 0, 9, 2, 3, 1, 4, 5, 6, 8]
  )


def test_item_slices_ties_and_cold_items_never_head():
  # Ties go to the lower row: 3 seen items, 0.5 * 3 = 1.5 rounds up to 2
  # head items among the three 3s.
  slices = eval_slices.item_slices(np.array([3, 3, 3, 0]), head_fraction=0.5)
  np.testing.assert_array_equal(slices["head"], [True, True, False, False])
  # One seen item: 0.5 * 1 rounds up to 1; the cold ones stay cold.
  slices = eval_slices.item_slices(np.array([1, 0, 0, 0]), head_fraction=0.5)
  np.testing.assert_array_equal(slices["head"], [True, False, False, False])
  np.testing.assert_array_equal(slices["cold"], [False, True, True, True])
  assert not slices["tail"].any()
  # 20 items: two per decile.
  deciles = eval_slices.item_slices(np.arange(20), 0.1)["decile"]
  np.testing.assert_array_equal(deciles, np.arange(20) // 2)


def test_head_is_a_share_of_the_seen_items_not_of_the_corpus():
  # A 10%-fraction dataset: 1,000 corpus rows of which only 100 were seen
  # in training (counts 1..100 on rows 0, 10, 20, ...). The head is
  # round(0.1 * 100) = 10 items, the counts 91..100 on rows 900..990; over
  # the whole corpus it would have been 100, i.e. every seen item.
  count = np.zeros(1000, np.int64)
  count[::10] = np.arange(1, 101)
  slices = eval_slices.item_slices(count, head_fraction=0.1)
  np.testing.assert_array_equal(
    np.flatnonzero(slices["head"]), np.arange(900, 1000, 10)
  )
  assert slices["tail"].sum() == 90 and slices["cold"].sum() == 900
  # The same seen items in a corpus without cold rows: the same head.
  seen_only = eval_slices.item_slices(count[::10], head_fraction=0.1)
  np.testing.assert_array_equal(
    np.flatnonzero(seen_only["head"]), np.arange(90, 100)
  )
  # 0.1 * 25 = 2.5 rounds up to 3 whatever the float rounding of 0.1 * 25.
  assert eval_slices.item_slices(np.arange(1, 26), 0.1)["head"].sum() == 3
  # Nothing seen: no head and no tail.
  empty = eval_slices.item_slices(np.zeros(5, np.int64), 0.5)
  assert not empty["head"].any() and empty["cold"].all()


def test_head_fraction_outside_0_1_is_refused():
  with pytest.raises(ValueError, match="head_fraction"):
    eval_slices.item_slices(np.array([1, 2]), head_fraction=1.5)
  # Through the metrics it is one more input error of the evaluation.
  with pytest.raises(evaluate.EvaluationInputError, match="head_fraction"):
    evaluate.evaluate_most_popular(
      np.array([1, 2]), [0], [1], head_fraction=-0.1
    )
