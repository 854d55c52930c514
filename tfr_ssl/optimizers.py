"""Optimizers whose cost per step does not grow with the embedding tables.

Keras's Adam, given the sparse gradient of an embedding lookup, still decays
the first and second moments of *every* row and moves every row by its
momentum: three full passes over each table per step. Training time then
grows with items x steps, that is quadratically in the corpus when the
interactions grow with it (at 200k items it was 86% of the step).

`LazyAdam` applies Adam to the rows a batch touches only, the usual choice
for embedding tables (rows that are not in the batch keep their moments and
values until they next appear). Dense gradients (tower weights) get Keras's
Adam unchanged.
"""

from __future__ import annotations

import tensorflow as tf
import tf_keras

OPTIMIZERS = ("adam", "adam_dense", "adagrad")


class LazyAdam(tf_keras.optimizers.Adam):
  """Adam that updates only the rows present in a sparse gradient.

  For a sparse gradient with rows `i` and values `g_i` (duplicate rows are
  summed first, as every replica's rows may repeat after an all-reduce):

    m_i <- b1 m_i + (1 - b1) g_i;   v_i <- b2 v_i + (1 - b2) g_i^2
    w_i <- w_i - lr sqrt(1 - b2^t) / (1 - b1^t) m_i / (sqrt(v_i) + eps)

  which is Keras's Adam restricted to rows `i` (with the same bias
  correction by the global step `t`); all other rows are left as they are.

  Example:
    >>> optimizer = LazyAdam(0.003)
    >>> model.compile(optimizer=optimizer)
  """

  def _deduplicate_sparse_grad(self, grads):
    # `update_step` sums duplicate rows itself (it must: an all-reduce
    # after this point can repeat rows), so Keras's pass would be a second
    # unique + segment sum over every sparse gradient.
    return grads

  def update_step(self, gradient, variable):
    if not isinstance(gradient, tf.IndexedSlices) or self.amsgrad:
      return super().update_step(gradient, variable)
    dtype = variable.dtype
    step = tf.cast(self.iterations + 1, dtype)
    beta_1 = tf.cast(self.beta_1, dtype)
    beta_2 = tf.cast(self.beta_2, dtype)
    beta_2_power = tf.pow(beta_2, step)
    alpha = (
      tf.cast(self.learning_rate, dtype)
      * tf.sqrt(1 - beta_2_power)
      / (1 - tf.pow(beta_1, step))
    )
    epsilon = self.epsilon
    if self.adaptive_epsilon:
      epsilon = self.epsilon * tf.sqrt(1 - beta_2_power)
    rows, position = tf.unique(gradient.indices)
    values = tf.math.unsorted_segment_sum(
      gradient.values, position, tf.shape(rows)[0]
    )
    index = self._index_dict[self._var_key(variable)]
    m, v = self._momentums[index], self._velocities[index]
    m_rows = beta_1 * tf.gather(m, rows) + (1 - beta_1) * values
    v_rows = beta_2 * tf.gather(v, rows) + (1 - beta_2) * tf.square(values)
    m.scatter_update(tf.IndexedSlices(m_rows, rows))
    v.scatter_update(tf.IndexedSlices(v_rows, rows))
    variable.scatter_sub(
      tf.IndexedSlices(alpha * m_rows / (tf.sqrt(v_rows) + epsilon), rows)
    )


def make_optimizer(name: str, learning_rate: float):
  """The optimizer `name` (one of `OPTIMIZERS`) at `learning_rate`.

  `adam` is `LazyAdam`; `adam_dense` is Keras's Adam, whose cost per step
  grows with the tables (kept to reproduce results trained with it);
  `adagrad` is the paper's optimizer (sparse updates already).
  """
  if name == "adam":
    return LazyAdam(learning_rate)
  if name == "adam_dense":
    return tf_keras.optimizers.Adam(learning_rate)
  if name == "adagrad":
    return tf_keras.optimizers.Adagrad(learning_rate)
  raise ValueError(
    f"optimizer must be one of {list(OPTIMIZERS)}, got {name!r}."
  )
