"""Tests of the lazy (row-sparse) Adam used for embedding tables."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

import tfr_ssl  # noqa: F401
from tfr_ssl import optimizers


def _sparse_step(optimizer, table, rows, values):
  """One step on `table` with a gradient for `rows` only."""
  gradient = tf.IndexedSlices(
    tf.constant(values, tf.float32),
    tf.constant(rows, tf.int64),
    tf.constant(table.shape, tf.int64),
  )
  optimizer.apply_gradients([(gradient, table)])


def test_first_step_golden():
  table = tf.Variable(np.zeros([3, 2], np.float32))
  optimizer = optimizers.LazyAdam(0.1, epsilon=0.0)
  _sparse_step(optimizer, table, [1], [[2.0, -0.5]])
  # Step 1: m = 0.1 g, v = 0.001 g^2; alpha = 0.1 * sqrt(1 - 0.999) /
  # (1 - 0.9), so the move is alpha * m / sqrt(v) = 0.1 * sign(g).
  np.testing.assert_allclose(
    table.numpy(), [[0, 0], [-0.1, 0.1], [0, 0]], rtol=1e-5
  )


def test_equals_keras_adam_on_rows_in_every_batch_and_leaves_others():
  init = np.random.default_rng(0).normal(size=[5, 3]).astype(np.float32)
  lazy_table, dense_table = tf.Variable(init), tf.Variable(init)
  lazy = optimizers.LazyAdam(0.05)
  dense = tf_keras.optimizers.Adam(0.05)
  rng = np.random.default_rng(1)
  # Row 0 is in every batch; rows 3 and 4 are in the first batch only.
  batches = [[0, 3, 4], [0, 1], [0, 2, 1], [0, 1]]
  for rows in batches:
    values = rng.normal(size=[len(rows), 3]).astype(np.float32)
    _sparse_step(lazy, lazy_table, rows, values)
    _sparse_step(dense, dense_table, rows, values)
    if rows == [0, 3, 4]:
      after_first = lazy_table.numpy().copy()
  # A row present at every step sees the same moments in both.
  np.testing.assert_allclose(
    lazy_table[0], dense_table[0], rtol=1e-5, atol=1e-6
  )
  # Rows 3 and 4 stay where step 1 put them; Keras's Adam keeps moving them
  # by their decaying momentum.
  np.testing.assert_array_equal(lazy_table[3:], after_first[3:])
  assert np.all(np.abs(dense_table[3:] - after_first[3:]) > 1e-4)


def test_duplicate_rows_are_summed():
  # After a cross-replica all-reduce a row can appear twice in one
  # gradient (Keras deduplicates before the all-reduce, not after), so
  # update_step itself must sum them: [1] + [2] acts as one [3].
  once = tf.Variable(np.ones([2, 1], np.float32))
  twice = tf.Variable(np.ones([2, 1], np.float32))
  a, b = optimizers.LazyAdam(0.01), optimizers.LazyAdam(0.01)
  a.build([once])
  b.build([twice])
  a.update_step(tf.IndexedSlices(tf.constant([[3.0]]), tf.constant([1])), once)
  b.update_step(
    tf.IndexedSlices(tf.constant([[1.0], [2.0]]), tf.constant([1, 1])), twice
  )
  # Step 1 moves a touched row by lr * sign(g) (epsilon aside).
  np.testing.assert_allclose(once.numpy(), [[1.0], [0.99]], rtol=1e-6)
  np.testing.assert_allclose(twice.numpy(), once.numpy(), rtol=1e-6)


def test_dense_gradients_use_keras_adam():
  init = np.arange(4, dtype=np.float32).reshape([2, 2])
  lazy_var, dense_var = tf.Variable(init), tf.Variable(init)
  lazy = optimizers.LazyAdam(0.1)
  dense = tf_keras.optimizers.Adam(0.1)
  for gradient in ([[1.0, -1.0], [0.5, 0.0]], [[0.2, 0.3], [-1.0, 2.0]]):
    lazy.apply_gradients([(tf.constant(gradient), lazy_var)])
    dense.apply_gradients([(tf.constant(gradient), dense_var)])
  np.testing.assert_allclose(lazy_var.numpy(), dense_var.numpy(), rtol=1e-6)


def test_make_optimizer_names():
  assert isinstance(optimizers.make_optimizer("adam", 0.1), optimizers.LazyAdam)
  dense = optimizers.make_optimizer("adam_dense", 0.1)
  assert type(dense) is tf_keras.optimizers.Adam
  assert isinstance(
    optimizers.make_optimizer("adagrad", 0.1), tf_keras.optimizers.Adagrad
  )
  with pytest.raises(ValueError, match="adam_dense"):
    optimizers.make_optimizer("sgd", 0.1)
