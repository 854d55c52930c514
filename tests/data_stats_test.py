"""Tests of item frequencies, the seen-items CSR, MI and skew statistics."""

import numpy as np
import pytest

from tests import eval_pairs_test
from tfr_ssl import config as config_lib
from tfr_ssl.data import report, stats
from tfr_ssl.data.contract import PAD
from tfr_ssl.evaluation import embed


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


def test_plug_in_mi_is_zero_only_where_the_sample_factorises():
  # a and b form a full 2x2 grid: the empirical joint is the product of the
  # marginals, so the plug-in MI is exactly 0; each entropy ln 2.
  items = {"a": np.array([1, 1, 2, 2]), "b": np.array([1, 2, 1, 2])}
  mi = stats.mutual_information(items, ["a", "b"])
  np.testing.assert_allclose(mi, [[np.log(2), 0], [0, np.log(2)]], atol=1e-6)


def test_plug_in_mi_of_independent_random_columns_is_its_known_bias():
  # Independent uniform columns with |A| = |B| = 50 values over N = 100,000
  # rows. The plug-in MI is the G statistic over 2N: 2N MI = G, and for
  # independent columns G is asymptotically chi-square with
  # k = (|A| - 1)(|B| - 1) = 2401 degrees of freedom (40 rows a cell, well
  # inside the approximation). So
  #   E[MI] = k / 2N = 0.0120 nats,  sd[MI] = sqrt(2k) / 2N,
  # a relative sd of sqrt(2 / k) = 2.9%. The next order (Williams 1976)
  # scales E[G] by 1 + (|A| + 1)(|B| + 1) / 6N, +0.4% here (20 seeds:
  # mean ratio 1.013, sd 0.029). +-15% is five sds: a wrong log base (0.69),
  # a lost or doubled marginal, or a miscounted joint fails it, while a
  # test asking for MI 0 could only pass on a balanced grid.
  n, size = 100_000, 50
  rng = np.random.default_rng(0)
  items = {name: rng.integers(1, size + 1, n).astype(np.int32) for name in "ab"}
  mi = stats.mutual_information(items, ["a", "b"])
  bias = (size - 1) ** 2 / (2 * n)
  assert mi[0, 1] == mi[1, 0]
  assert 0.85 * bias < mi[0, 1] < 1.15 * bias
  # The diagonal is the plug-in entropy: ln 50 less its own small bias
  # (|A| - 1) / 2N = 2.5e-4, with a sampling sd sqrt(2(|A| - 1)) / 2N = 5e-5.
  np.testing.assert_allclose(np.diag(mi), np.log(size), atol=1e-3)


def test_gini_and_top_share():
  # sorted [0, 0, 0, 4]: sum (2i - n - 1) x_i = (8 - 5) * 4 = 12; / (4 * 4)
  assert stats.gini(np.array([0, 4, 0, 0])) == pytest.approx(0.75)
  assert stats.gini(np.array([2, 2, 2])) == pytest.approx(0.0)
  # top 10% of 4 items = 1 item (ceil): 3 of 5.
  assert stats.top_share(np.array([1, 1, 3, 0]), 0.1) == pytest.approx(0.6)
  assert stats.top_share(np.zeros(3), 0.1) == 0.0


def test_describe_counts_cold_items_as_the_evaluation_does():
  # Training counts (every row) [1, 2, 1, 1, 0]; of the rows with a query
  # item [0, 2, 1, 0, 0]. Test items i1, i2, i2, i3, i4.
  prepared = eval_pairs_test.item_to_item_dataset()
  described = stats.describe(prepared)
  assert described["cold_items"] == 1  # i4
  assert described["cold_test_items"] == 1  # i4, in 1 of 5 test rows
  assert described["cold_test_interactions"] == 1
  assert described["cold_test_share"] == pytest.approx(0.2)
  assert described["item_to_item_train"] == 3
  assert described["item_to_item_cold_items"] == 3  # i0, i3, i4
  text = report.format_description(described)
  assert (
    "1 corpus items are in no training interaction; 1 of them are test "
    "items, in 1 test interactions (20.00%)"
  ) in text
  assert "3 corpus items are in none of them" in text
  # The evaluation's cold slice is the same set: its corpus items, and the
  # held-out ones among them when every test pair is scored.
  eval_config = config_lib.EvalConfig(ks=(1,), head_fraction=0.5)
  users = embed.evaluate_model(
    eval_pairs_test.positive_query,
    eval_pairs_test.item_tower,
    prepared,
    "test",
    eval_config,
  )["slices"]["cold"]
  assert users["num_items"] == described["cold_items"]
  assert users["num_held_out_items"] == described["cold_test_items"]
  seeds = embed.evaluate_model(
    eval_pairs_test.positive_query,
    eval_pairs_test.item_tower,
    prepared,
    "test",
    eval_config,
    task="item_to_item",
  )["slices"]["cold"]
  assert seeds["num_items"] == described["item_to_item_cold_items"]
