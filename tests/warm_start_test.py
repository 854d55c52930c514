"""Tests of warm starting across a changed vocabulary."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

import tfr_ssl  # noqa: F401  (sets up Keras 2 before TensorFlow is used)
from tfr_ssl.training import warm_start


def test_remap_rows_copies_known_values_by_name():
  old = np.array([[0.0], [1.0], [2.0], [3.0]])  # rows: OOV, a, b, c
  new = np.full((4, 1), -1.0)  # rows: OOV, c, d, a
  table, carried = warm_start.remap_rows(
    old, new, ["a", "b", "c"], ["c", "d", "a"]
  )
  # OOV <- OOV; c <- row 3; d is new (keeps -1); a <- row 1.
  np.testing.assert_array_equal(table[:, 0], [0.0, 3.0, -1.0, 1.0])
  assert carried == 2


class _Tiny(tf_keras.Model):
  def __init__(self, vocabulary_size):
    super().__init__()
    self.table = tf_keras.layers.Embedding(vocabulary_size, 2)
    self.dense = tf_keras.layers.Dense(1)

  def call(self, ids):
    return self.dense(self.table(ids))


def test_warm_start_copies_weights_and_remaps_the_table(tmp_path):
  old = _Tiny(3)  # vocabulary ["x", "y"] + OOV
  old(tf.constant([0]))
  prefix = tf.train.Checkpoint(model=old).save(str(tmp_path / "ckpt"))

  new = _Tiny(4)  # vocabulary ["y", "z", "x"] + OOV
  new(tf.constant([0]))
  fresh_z = new.table.embeddings.numpy()[2].copy()
  counts = warm_start.warm_start(
    tf.train.Checkpoint(model=new),
    prefix,
    tables={"f": [new.table.embeddings]},
    old_vocabularies={"f": ["x", "y"]},
    new_vocabularies={"f": ["y", "z", "x"]},
  )
  old_table = old.table.embeddings.numpy()
  new_table = new.table.embeddings.numpy()
  np.testing.assert_array_equal(new_table[1], old_table[2])  # y
  np.testing.assert_array_equal(new_table[3], old_table[1])  # x
  np.testing.assert_array_equal(new_table[2], fresh_z)  # z is new
  np.testing.assert_array_equal(
    new.dense.kernel.numpy(), old.dense.kernel.numpy()
  )
  assert counts["remapped"] == 1 and counts["carried"] == 2
  assert counts["new_values"] == 1 and counts["copied"] == 2


def test_changed_architecture_is_refused(tmp_path):
  old = _Tiny(3)
  old(tf.constant([0]))
  prefix = tf.train.Checkpoint(model=old).save(str(tmp_path / "ckpt"))
  new = _Tiny(3)
  new.dense = tf_keras.layers.Dense(5)
  new(tf.constant([0]))
  with pytest.raises(ValueError, match="dense/kernel: shape"):
    warm_start.warm_start(tf.train.Checkpoint(model=new), prefix, {}, {}, {})
