"""Tests of item frequencies, the seen-items CSR, MI and skew statistics."""

import numpy as np
import pytest

from tfr_ssl.data import stats
from tfr_ssl.data.contract import PAD


def test_item_train_count():
  # rows 0, 2, 2, 1, 2 over 4 items: [1, 1, 3, 0]
  counts = stats.item_train_count(np.array([0, 2, 2, 1, 2]), 4)
  np.testing.assert_array_equal(counts, [1, 1, 3, 0])
  assert counts.dtype == np.int64


def test_items_by_query_is_distinct_and_sorted():
  # q0 saw items 2, 1, 2 -> {1, 2}; q1 saw {2}; q2 saw nothing.
  indptr, indices = stats.items_by_query(
    np.array([0, 0, 1, 0]), np.array([2, 1, 2, 2]), num_queries=3
  )
  np.testing.assert_array_equal(indptr, [0, 2, 3, 3])
  np.testing.assert_array_equal(indices, [1, 2, 2])
  assert indices.dtype == np.int32


def _corpus():
  # 4 items:  a = [x, x, y, y]   b = [p, q, r, r]   c = [{u}, {u, v}, {v}, {v}]
  # ids:      x=1 y=2            p=1 q=2 r=3        u=1 v=2
  return {
    "a": np.array([1, 1, 2, 2], np.int32),
    "b": np.array([1, 2, 3, 3], np.int32),
    "c": np.array([[1, PAD], [1, 2], [2, PAD], [2, PAD]], np.int32),
  }


def _expected():
  ln = np.log
  # H(a) = ln 2.  H(b): P = (1/4, 1/4, 1/2) -> 1.5 ln 2.
  # c, spread marginal: u = (1 + 1/2) / 4 = 3/8, v = 5/8.
  h_c = -(3 / 8 * ln(3 / 8) + 5 / 8 * ln(5 / 8))
  # b determines a: MI(a, b) = H(a) = ln 2.
  # Joint (a, c): item 1 spreads 1/2 to (x, u) and 1/2 to (x, v):
  #   (x, u) = 3/8, (x, v) = 1/8, (y, v) = 1/2; P(x) = P(y) = 1/2.
  mi_ac = 3 / 8 * ln(2) + 1 / 8 * ln((1 / 8) / (1 / 2 * 5 / 8))
  mi_ac += 1 / 2 * ln((1 / 2) / (1 / 2 * 5 / 8))
  # Joint (b, c): (p, u) = 1/4, (q, u) = 1/8, (q, v) = 1/8, (r, v) = 1/2.
  mi_bc = 1 / 4 * ln((1 / 4) / (1 / 4 * 3 / 8))
  mi_bc += 1 / 8 * ln((1 / 8) / (1 / 4 * 3 / 8))
  mi_bc += 1 / 8 * ln((1 / 8) / (1 / 4 * 5 / 8))
  mi_bc += 1 / 2 * ln((1 / 2) / (1 / 2 * 5 / 8))
  return np.array(
    [
      [ln(2), ln(2), mi_ac],
      [ln(2), 1.5 * ln(2), mi_bc],
      [mi_ac, mi_bc, h_c],
    ]
  )


def test_mutual_information_hand_computed():
  mi = stats.mutual_information(_corpus(), ["a", "b", "c"])
  assert mi.dtype == np.float32
  np.testing.assert_allclose(mi, _expected(), rtol=1e-5)


@pytest.mark.parametrize("chunk_rows", [1, 3])
def test_mutual_information_is_streamed_by_chunks(chunk_rows):
  mi = stats.mutual_information(
    _corpus(), ["a", "b", "c"], chunk_rows=chunk_rows
  )
  np.testing.assert_allclose(mi, _expected(), rtol=1e-5)


def test_mutual_information_sparse_accumulation(monkeypatch):
  # Large joint tables use (code, weight) lists; force that path.
  monkeypatch.setattr(stats, "_DENSE_CELLS", 0)
  monkeypatch.setattr(stats, "_COMPACT_AT", 2)
  mi = stats.mutual_information(_corpus(), ["a", "b", "c"], chunk_rows=1)
  np.testing.assert_allclose(mi, _expected(), rtol=1e-5)


def test_mutual_information_of_independent_features_is_zero():
  # a and b form a full 2x2 grid: independent, MI = 0; each entropy ln 2.
  items = {"a": np.array([1, 1, 2, 2]), "b": np.array([1, 2, 1, 2])}
  mi = stats.mutual_information(items, ["a", "b"])
  np.testing.assert_allclose(mi, [[np.log(2), 0], [0, np.log(2)]], atol=1e-6)


def test_gini_and_top_share():
  # sorted [0, 0, 0, 4]: sum (2i - n - 1) x_i = (8 - 5) * 4 = 12; / (4 * 4)
  assert stats.gini(np.array([0, 4, 0, 0])) == pytest.approx(0.75)
  assert stats.gini(np.array([2, 2, 2])) == pytest.approx(0.0)
  # top 10% of 4 items = 1 item (ceil): 3 of 5.
  assert stats.top_share(np.array([1, 1, 3, 0]), 0.1) == pytest.approx(0.6)
  assert stats.top_share(np.zeros(3), 0.1) == 0.0
