"""Optimizers whose cost per step does not grow with the embedding tables.

Keras's Adam, given the sparse gradient of an embedding lookup, still decays
the first and second moments of *every* row and moves every row by its
momentum: three full passes over each table per step. Training time then
grows with items x steps, that is quadratically in the corpus when the
interactions grow with it (at 200k items it was 86% of the step).

`LazyAdam` touches only the rows of a batch, and still follows Keras's
Adam: the steps a row sat out (zero gradient: its moments decay and its
momentum keeps moving it) are applied in closed form when the row next
appears, and for every row by `sync()`, which the training loop calls before
it validates or saves. Dense gradients (tower weights) get Keras's Adam
unchanged.
"""

from __future__ import annotations

import tensorflow as tf
import tf_keras
from tf_keras.src.optimizers.optimizer import _ShardedVariableBuilder

OPTIMIZERS = ("adam", "adam_dense", "adagrad")

# Steps of momentum a skipped row is caught up on: the move of the j-th
# skipped step shrinks as r^j, r = beta_1 / sqrt(beta_2) = 0.9005 at the
# defaults, so the steps past 64 hold r^64 = 1.2e-3 of a full catch-up's
# r / (1 - r) = 9.05 steps' worth (bound derived and tested in
# tests/optimizers_test.py).
CATCH_UP_STEPS = 64
# Rows per chunk when `sync` catches up a whole table.
_SYNC_ROWS = 1 << 16


class LazyAdam(tf_keras.optimizers.Adam):
  """Adam on the rows in a sparse gradient, with skipped steps caught up.

  At step `t`, Keras's Adam updates a row `i` that the batch does not touch
  with a zero gradient: `m_i <- b1 m_i`, `v_i <- b2 v_i` and
  `w_i <- w_i - alpha_t m_i / (sqrt(v_i) + eps)`. `LazyAdam` counts each
  variable's updates and records, per row, the update it last had (int64,
  so the count of skipped updates is exact at any length of run); when the
  row is next in a gradient after `k` skipped updates, it applies them at
  once:

    w_i <- w_i - sum_{j=1..k} alpha_{s+j} (b1 / sqrt(b2))^j
                 m_i / (sqrt(v_i) + eps)
    m_i <- b1^k m_i;   v_i <- b2^k v_i

  (`s` the row's last step), then the usual update with its gradient;
  duplicate rows are summed first. `sync()` applies the pending updates of
  every row. With gradients that do not depend on the weights this is
  Keras's Adam but for two approximations of the moves (the moments are
  exact), both derived and tested against Keras's Adam in
  tests/optimizers_test.py:

  - the sum stops at `CATCH_UP_STEPS`: the moves left out are at most
    lr r^65 / (1 - r) |m| / sqrt(v) = 0.011 lr |m| / sqrt(v) (r =
    b1 / sqrt(b2));
  - the closed form needs eps scaled with sqrt(v), b2^(j/2) eps for Keras's
    eps: each move is larger by at most (1 - b2^32) = 3.2% times
    eps / (b2^32 sqrt(v) + eps), which matters only for gradients near
    eps.

  In training a row's gradient is taken before its pending updates are
  applied, the one other difference.

  Example:
    >>> optimizer = LazyAdam(0.003)
    >>> model.compile(optimizer=optimizer)
    >>> ...; optimizer.sync(model.trainable_variables)  # before reading
  """

  def build(self, var_list):
    super().build(var_list)
    if getattr(self, "_lazy_built", False):
      return
    self._lazy_built = True
    # Per variable: how many updates it has had (a variable without a
    # gradient in a step, e.g. the query tower in SSL pretraining, is not
    # updated by Keras's Adam either), and per row the update it last had.
    # Integers, so a row's count of skipped updates is exact at any length
    # of run (float32 counts stopped at 2^24).
    self._updates, self._last = [], []
    for var in var_list:
      rows = var.shape[0] if var.shape.rank else 1
      # [1], not a scalar: a counter of a table sharded over parameter
      # servers is sharded too, which needs a first dimension.
      self._updates.append(self._add_counter(var, "updates", [1]))
      self._last.append(self._add_counter(var, "last_update", [rows]))

  def _add_counter(self, variable, name: str, shape: list[int]):
    """An int64 variable kept for `variable`, tracked as Keras's slots are.

    Keras's `add_variable_from_reference` gives a slot its variable's
    dtype, so this places (next to `variable`), names, shards and tracks
    (in `self._variables`, at the position the slot would have) the same
    way, with int64 values.
    """
    value, restore_uid = self._saved_counter(variable, shape)
    strategy = tf.distribute.get_strategy()
    with strategy.extended.colocate_vars_with(variable):
      counter = tf.Variable(
        value,
        name=f"{name}/{variable._shared_name}",
        dtype=tf.int64,
        trainable=False,
      )
    if restore_uid is not None:
      # Already restored: tracking it must not read the value again.
      counter._maybe_initialize_trackable()
      counter._update_uid = restore_uid
    if hasattr(variable, "_sharded_container"):
      sharded = variable._sharded_container()
      builder = self._sharded_variable_builders.setdefault(
        (sharded._unique_id, name),
        _ShardedVariableBuilder(len(sharded.variables)),
      )
      builder.add_shard(counter)
      if builder.has_all_shards():
        self._variables.append(builder.build())
    else:
      self._variables.append(counter)
    return counter

  def _saved_counter(self, variable, shape: list[int]):
    """(initial value, restore id) of the counter about to be tracked.

    A checkpoint restored before the optimizer is built (the training loop
    restores, then the first step builds) assigns each variable its saved
    value when it is tracked, read with the variable's dtype. Checkpoints
    written while the counters were float32 hold them at the same
    positions, so that read would fail on the dtype: the value is taken
    here instead, through TensorFlow's restore-on-create (as Keras's
    layers take their weights), read with the dtype it was saved with,
    and cast; the restore's id on the counter marks it done. Zeros when no
    restore is pending. Not covered: a float32 checkpoint restored into a
    built optimizer, and the counters of a table sharded over parameter
    servers; both fail on the dtype.
    """
    zeros = tf.zeros(shape, tf.int64)
    if hasattr(variable, "_sharded_container"):
      return zeros, None
    pending = self._variables._preload_simple_restoration(
      str(len(self._variables))
    )
    if pending is None:
      return zeros, None
    saved = pending()
    value = saved.wrapped_value
    if value.shape != shape:
      raise ValueError(
        f"The checkpoint's {variable.name} counter has shape {value.shape}, "
        f"the optimizer's {shape}."
      )
    if value.dtype.is_floating:
      value = tf.round(value)
    return tf.cast(value, tf.int64), saved.checkpoint_position.restore_uid

  def _deduplicate_sparse_grad(self, grads):
    # `update_step` sums duplicate rows itself (it must: an all-reduce
    # after this point can repeat rows), so Keras's pass would be a second
    # unique + segment sum over every sparse gradient.
    return grads

  def _slots(self, variable):
    index = self._index_dict[self._var_key(variable)]
    return (
      self._momentums[index],
      self._velocities[index],
      self._updates[index],
      self._last[index],
    )

  def _alpha(self, beta_1_power, beta_2_power, dtype):
    """Keras's Adam step size at the step(s) `t` with these `b1^t`, `b2^t`."""
    return (
      tf.cast(self.learning_rate, dtype)
      * tf.sqrt(1 - beta_2_power)
      / (1 - beta_1_power)
    )

  def _catch_up(self, m, v, last, now, offset, dtype):
    """Rows' (move, m, v) after the updates `last + 1 .. now` they sat out.

    Update number `n` of the variable ran at global step `n + offset`
    (`last`, `now` and `offset` are int64).
    """
    beta_1 = tf.cast(self.beta_1, dtype)
    beta_2 = tf.cast(self.beta_2, dtype)
    skipped = tf.maximum(now - last, 0)[:, tf.newaxis]
    j = tf.range(1, CATCH_UP_STEPS + 1, dtype=tf.int64)
    # The j-th skipped update ran at global step s + j (s the row's last):
    # b^(s + j) = b^s b^j takes two powers per row and a table of the 64
    # b^j, not two powers per row and skipped step.
    power = tf.cast(j, dtype)
    start = tf.cast(last + offset, dtype)[:, tf.newaxis]
    alpha = self._alpha(
      tf.pow(beta_1, start) * tf.pow(beta_1, power),
      tf.pow(beta_2, start) * tf.pow(beta_2, power),
      dtype,
    )
    weights = alpha * tf.pow(beta_1 / tf.sqrt(beta_2), power)
    weights = tf.where(j <= skipped, weights, 0.0)
    # A row never updated has m = v = 0: no move (also with epsilon 0).
    move = tf.reduce_sum(weights, axis=1, keepdims=True) * (
      tf.math.divide_no_nan(m, tf.sqrt(v) + self.epsilon)
    )
    skipped = tf.cast(skipped, dtype)
    return move, m * tf.pow(beta_1, skipped), v * tf.pow(beta_2, skipped)

  def update_step(self, gradient, variable):
    dtype = variable.dtype
    step = self.iterations + 1
    m, v, updates, last = self._slots(variable)
    update = updates[0] + 1
    if not isinstance(gradient, tf.IndexedSlices) or self.amsgrad:
      super().update_step(gradient, variable)
      last.assign(tf.fill(tf.shape(last), update))
      updates.assign(update[tf.newaxis])
      return
    beta_1 = tf.cast(self.beta_1, dtype)
    beta_2 = tf.cast(self.beta_2, dtype)
    beta_1_power = tf.pow(beta_1, tf.cast(step, dtype))
    beta_2_power = tf.pow(beta_2, tf.cast(step, dtype))
    epsilon = self.epsilon
    if self.adaptive_epsilon:
      epsilon = self.epsilon * tf.sqrt(1 - beta_2_power)
    rows, position = tf.unique(gradient.indices)
    values = tf.math.unsorted_segment_sum(
      gradient.values, position, tf.shape(rows)[0]
    )
    move, m_rows, v_rows = self._catch_up(
      tf.gather(m, rows),
      tf.gather(v, rows),
      tf.gather(last, rows),
      update - 1,
      step - update,
      dtype,
    )
    m_rows = beta_1 * m_rows + (1 - beta_1) * values
    v_rows = beta_2 * v_rows + (1 - beta_2) * tf.square(values)
    move += (
      self._alpha(beta_1_power, beta_2_power, dtype)
      * m_rows
      / (tf.sqrt(v_rows) + epsilon)
    )
    m.scatter_update(tf.IndexedSlices(m_rows, rows))
    v.scatter_update(tf.IndexedSlices(v_rows, rows))
    last.scatter_update(tf.IndexedSlices(tf.fill(tf.shape(rows), update), rows))
    updates.assign(update[tf.newaxis])
    variable.scatter_sub(tf.IndexedSlices(move, rows))

  def sync(self, variables) -> None:
    """Applies the skipped updates of every row of `variables`.

    They then hold what Keras's Adam would hold after the same gradients.
    Call it outside a step, in the strategy's cross-replica context (the
    training loop does, before it validates or saves).
    """
    if not getattr(self, "_lazy_built", False):
      return
    for variable in variables:
      key = self._var_key(variable)
      if key not in self._index_dict or variable.shape.rank != 2:
        continue  # only tables get sparse gradients
      m, v, updates, last = self._slots(variable)
      dtype = variable.dtype
      now = tf.convert_to_tensor(updates)[0]
      offset = tf.convert_to_tensor(self.iterations) - now
      num_rows = int(variable.shape[0])
      for start in range(0, num_rows, _SYNC_ROWS):
        rows = tf.range(start, min(start + _SYNC_ROWS, num_rows))
        move, m_rows, v_rows = self._catch_up(
          tf.gather(m, rows),
          tf.gather(v, rows),
          tf.gather(last, rows),
          now,
          offset,
          dtype,
        )
        m.scatter_update(tf.IndexedSlices(m_rows, rows))
        v.scatter_update(tf.IndexedSlices(v_rows, rows))
        last.scatter_update(
          tf.IndexedSlices(tf.fill(tf.shape(rows), now), rows)
        )
        variable.scatter_sub(tf.IndexedSlices(move, rows))


def make_optimizer(name: str, learning_rate: float):
  """The optimizer `name` (one of `OPTIMIZERS`) at `learning_rate`.

  `adam` is `LazyAdam`; `adam_dense` is Keras's Adam, whose cost per step
  grows with the tables; `adagrad` is the paper's optimizer (sparse updates
  already).
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
