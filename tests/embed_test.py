"""Tests of batched tower application and CSR row selection."""

import numpy as np
import tensorflow as tf

import tfr_ssl  # noqa: F401
from tfr_ssl import embed, evaluate


def test_select_csr_rows_renumbers_the_csr():
  # Rows: 0 -> [5], 1 -> [], 2 -> [7, 8].
  indptr = np.array([0, 1, 1, 3])
  indices = np.array([5, 7, 8])
  new_indptr, new_indices = evaluate.select_csr_rows(
    (indptr, indices), np.array([2, 0])
  )
  np.testing.assert_array_equal(new_indptr, [0, 2, 3])
  np.testing.assert_array_equal(new_indices, [7, 8, 5])
  empty = evaluate.select_csr_rows((indptr, indices), np.array([1]))
  np.testing.assert_array_equal(empty[0], [0, 0])
  assert empty[1].size == 0


def test_embed_rows_batches_in_order():
  table = {"a": np.arange(10, dtype=np.int32)}

  def tower(features):
    return tf.cast(features["a"], tf.float32)[:, None] * [1.0, 2.0]

  out = embed.embed_rows(tower, table, rows=np.array([9, 3, 4]), batch_size=2)
  np.testing.assert_array_equal(out, [[9, 18], [3, 6], [4, 8]])
