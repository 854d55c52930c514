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


def test_follows_keras_adam_after_sync():
  # Fixed gradients (not depending on the weights), so the two optimizers
  # see the same ones: LazyAdam must reach Keras's Adam on every row once
  # synced, though it only touched the rows of each step. Table `a` gets a
  # gradient every step (rows come and go); table `b` only at steps 1 and
  # 4, and Keras's Adam leaves a variable without a gradient alone.
  rng = np.random.default_rng(0)
  init = {n: rng.normal(size=[6, 3]).astype(np.float32) for n in "ab"}
  lazy_vars = {n: tf.Variable(x) for n, x in init.items()}
  dense_vars = {n: tf.Variable(x) for n, x in init.items()}
  lazy = optimizers.LazyAdam(0.05)
  dense = tf_keras.optimizers.Adam(0.05)
  a_rows = [[0, 3, 4], [0, 1], [5], [0, 1], [2, 3]]
  for step, rows in enumerate(a_rows, start=1):
    grads = {"a": (rows, rng.normal(size=[len(rows), 3]))}
    if step in (1, 4):
      grads["b"] = ([1, 2], rng.normal(size=[2, 3]))
    for optimizer, variables in ((lazy, lazy_vars), (dense, dense_vars)):
      optimizer.apply_gradients(
        [
          (
            tf.IndexedSlices(
              tf.constant(values, tf.float32),
              tf.constant(r, tf.int64),
              tf.constant([6, 3], tf.int64),
            ),
            variables[name],
          )
          for name, (r, values) in grads.items()
        ]
      )
    if step == 3:
      # Row 4 sat out steps 2-3 and Keras's Adam moved it by momentum;
      # LazyAdam has not yet.
      assert np.abs(lazy_vars["a"][4] - dense_vars["a"][4]).max() > 1e-3
  lazy.sync(list(lazy_vars.values()))
  for name in "ab":
    np.testing.assert_allclose(
      lazy_vars[name].numpy(), dense_vars[name].numpy(), rtol=1e-4, atol=1e-5
    )
  # And it keeps following after a sync (row 4 again, row 0 skipped).
  for optimizer, variables in ((lazy, lazy_vars), (dense, dense_vars)):
    optimizer.apply_gradients(
      [
        (
          tf.IndexedSlices(
            tf.constant([[0.3, -0.2, 0.1]]), tf.constant([4], tf.int64)
          ),
          variables["a"],
        )
      ]
    )
  lazy.sync([lazy_vars["a"]])
  np.testing.assert_allclose(
    lazy_vars["a"].numpy(), dense_vars["a"].numpy(), rtol=1e-4, atol=1e-5
  )


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
