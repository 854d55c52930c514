"""Tests of the lazy (row-sparse) Adam used for embedding tables."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

import tfr_ssl  # noqa: F401
from tfr_ssl.model import optimizers


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


# Keras's Adam defaults as float32 holds them. Keras casts a Python beta
# through float32 for its powers b^t but not for its moment updates, which
# in float64 is a 1e-7 difference of its own; betas exact in float32 keep
# the float64 comparisons below down to the approximations.
_B1, _B2, _EPS = float(np.float32(0.9)), float(np.float32(0.999)), 1e-7
_R = _B1 / np.sqrt(_B2)  # a skipped update's momentum ratio per step


def _moments(grads):
  """A row's (m, v) after Adam steps 1..len(grads) with these gradients."""
  m = v = 0.0
  for g in grads:
    m = _B1 * m + (1 - _B1) * g
    v = _B2 * v + (1 - _B2) * np.square(g)
  return m, v


def _skipped_moves(lr, m, v, last, skipped):
  """Keras's Adam moves of a row in the `skipped` updates after step `last`.

  One per skipped update j = 1..skipped (rows), per column: at step
  `last + j` the zero gradient leaves m b1^j and v b2^j, so the move is
  alpha_t b1^j m / (b2^(j/2) sqrt(v) + eps).
  """
  j = np.arange(1, skipped + 1)[:, np.newaxis]
  t = last + j
  alpha = lr * np.sqrt(1 - _B2**t) / (1 - _B1**t)
  return alpha * _B1**j * m / (_B2 ** (j / 2) * np.sqrt(v) + _EPS)


def _lazy_error(lr, m, v, last, skipped):
  """LazyAdam's catch-up minus Keras's moves, exactly, and its bound.

  LazyAdam moves the j-th skipped update by alpha_t r^j m / (sqrt(v) + eps)
  (r = b1 / sqrt(b2)) = alpha_t b1^j m / (c sqrt(v) + c eps), c = b2^(j/2),
  for j <= 64 only. Against Keras's move alpha_t b1^j m / (c sqrt(v) + eps):
  - epsilon: each of the first 64 moves is larger by the factor
    (c sqrt(v) + eps) / (c sqrt(v) + c eps), that is by
    lazy_j eps (1 - c) / (c sqrt(v) + eps). With c >= b2^32 = 0.9685 at
    j <= 64, that is at most 3.15% of the move, times
    eps / (c sqrt(v) + eps): nothing for |g| >> eps, all of it for
    |g| << eps.
  - the cut: the moves j > 64 are left out. Each is at most
    alpha_t b1^j |m| / (c sqrt(v)) = alpha_t r^j |m| / sqrt(v), and
    alpha_t <= lr (sqrt(1 - b2^t) <= 1 - b1^t at these betas), so all of
    them are at most lr r^65 / (1 - r) |m| / sqrt(v) = 0.0110 lr |m| /
    sqrt(v): r^64 = 1.22e-3 of the lr r / (1 - r) = 9.05 lr that an
    unbounded catch-up of a row at |m| / sqrt(v) = 1 moves.

  Returns:
    (error, bound): the move LazyAdam adds to Keras's, exactly (eps part
    minus the moves cut), and the bound above on its size.
  """
  keras = _skipped_moves(lr, m, v, last, skipped)
  c = _B2 ** (np.arange(1, skipped + 1)[:, np.newaxis] / 2)
  kept = slice(0, optimizers.CATCH_UP_STEPS)
  lazy = (
    keras[kept]
    * (c * np.sqrt(v) + _EPS)[kept]
    / (c * (np.sqrt(v) + _EPS))[kept]
  )
  eps_part = lazy * _EPS * (1 - c[kept]) / (c[kept] * np.sqrt(v) + _EPS)
  error = eps_part.sum(0) - keras[optimizers.CATCH_UP_STEPS :].sum(0)
  c_64 = _B2 ** (optimizers.CATCH_UP_STEPS / 2)
  eps_bound = (
    (1 - c_64) * _EPS / (c_64 * np.sqrt(v) + _EPS) * np.abs(lazy.sum(0))
  )
  cut_bound = 0.0
  if skipped > optimizers.CATCH_UP_STEPS:
    cut_bound = (
      lr
      * _R ** (optimizers.CATCH_UP_STEPS + 1)
      / (1 - _R)
      * np.abs(m)
      / np.sqrt(v)
    )
  return error, eps_bound + cut_bound


def _run_both(steps, init, lr):
  """Tables after LazyAdam (synced) and Keras's Adam on the same gradients.

  `steps`: per step, (rows, values) of the table's sparse gradient.
  """
  lazy_table, dense_table = tf.Variable(init), tf.Variable(init)
  lazy = optimizers.LazyAdam(lr, beta_1=_B1, beta_2=_B2, epsilon=_EPS)
  dense = tf_keras.optimizers.Adam(lr, beta_1=_B1, beta_2=_B2, epsilon=_EPS)
  # Graphs, as in training (and a step costs less than eagerly).
  apply = {
    lazy: tf.function(lambda g: lazy.apply_gradients([(g, lazy_table)])),
    dense: tf.function(lambda g: dense.apply_gradients([(g, dense_table)])),
  }
  for rows, values in steps:
    gradient = tf.IndexedSlices(
      tf.constant(values, init.dtype),
      tf.constant(rows, tf.int64),
      tf.constant(init.shape, tf.int64),
    )
    for step in apply.values():
      step(gradient)
  before_sync = lazy_table.numpy()
  lazy.sync([lazy_table])
  return before_sync, lazy_table.numpy(), dense_table.numpy()


@pytest.mark.parametrize("skip", [63, 64, 65, 300])
@pytest.mark.parametrize("scale", [1.0, 3e-8])
def test_long_skips_follow_keras_adam_within_the_derived_bound(skip, scale):
  # Float64, so the comparison shows the two approximations and not
  # rounding (both optimizers' float64 rounding over 300 steps of moves
  # of about 0.01 stays well below the 1e-12 allowed). Row 0 has a
  # gradient at every step; rows 1 and 2 at steps 1-3; row 1 comes back
  # at step 4 + skip (its catch-up runs in the update), row 2 never does
  # (caught up by sync after skip + 1 updates).
  # scale 3e-8: |g| in about 1e-8..1e-7, so sqrt(v) << eps and
  # m / (sqrt(v) + eps) is far from sign(g) (checked below).
  rng = np.random.default_rng(skip)
  lr, dim = float(np.float32(0.01)), 3  # float32 holds the rate
  init = rng.normal(size=[3, dim])
  early = scale * rng.normal(size=[3, 3, dim])  # steps 1-3, rows 0-2
  back = scale * rng.normal(size=[1, dim])
  steps = [([0, 1, 2], early[t]) for t in range(3)]
  steps += [([0], scale * rng.normal(size=[1, dim])) for _ in range(skip)]
  steps.append(
    ([0, 1], np.concatenate([scale * rng.normal(size=[1, dim]), back]))
  )
  before_sync, lazy, dense = _run_both(steps, init, lr)
  for row, skipped, table in ((1, skip, before_sync), (2, skip + 1, lazy)):
    m, v = _moments(early[:, row])
    if scale < 1:
      assert np.abs(m / (np.sqrt(v) + _EPS)).max() < 0.5
    error, bound = _lazy_error(lr, m, v, 3, skipped)
    # The weight moves opposite to the updates: LazyAdam's row is at
    # Keras's minus the error, |error| <= bound, up to float64 rounding.
    diff = table[row] - dense[row]
    assert np.all(np.abs(diff) <= bound + 1e-12), (diff, bound)
    np.testing.assert_allclose(-diff, error, rtol=1e-6, atol=1e-12)
    if skipped > optimizers.CATCH_UP_STEPS:
      assert np.all(np.abs(diff) > 1e-9)  # the cut is there to see


@pytest.mark.parametrize(
  "now, last",
  [
    (4, 1),  # 3 skipped updates at steps 2-4, where alpha_t is far below lr
    (70, 2),  # 68 skipped: the cut
    (2**24 + 8, 2**24 + 5),  # 3 skipped past 2^24 updates
  ],
)
def test_sync_applies_the_closed_form_catch_up_in_float32(now, last):
  # Float32, as trained. Row 0 is up to date, row 1 sat out updates
  # last + 1 .. now. Its catch-up must be the closed form of the class
  # docstring: m b1^k, v b2^k and a move of
  # sum_{j <= min(k, 64)} alpha_{last + j} r^j m / (sqrt(v) + eps), here
  # in float64 with one power per row and step. In float32, b2^t =
  # b2^s b2^j carries three roundings, at most 3 * 2^-24 = 1.8e-7
  # relative; 1 - b2^t >= 0.002 (t >= 2 here) turns that into at most
  # 1.8e-7 / 0.002 = 9e-5 relative, halved by the sqrt: rtol 1e-4 on the
  # move (1 - b1^t >= 0.19 adds little). A float32 count of updates would
  # be off by one past 2^24: 2^24 + 5 is not a float32.
  table = tf.Variable(np.zeros([2, 2], np.float32))
  optimizer = optimizers.LazyAdam(0.01)
  optimizer.build([table])
  m, v, updates, last_update = optimizer._slots(table)
  assert updates.dtype == last_update.dtype == tf.int64
  optimizer.iterations.assign(now)
  updates.assign([now])
  last_update.assign([now, last])
  m0, v0 = np.array([0.05, -0.02]), np.array([0.004, 1e-4])
  m.assign([[0.0, 0.0], m0])
  v.assign([[0.0, 0.0], v0])
  optimizer.sync([table])
  k = now - last
  j = np.arange(1, min(k, optimizers.CATCH_UP_STEPS) + 1)
  b1, b2, lr = _B1, _B2, float(np.float32(0.01))
  alpha = lr * np.sqrt(1 - b2 ** (last + j)) / (1 - b1 ** (last + j))
  move = (alpha * (b1 / np.sqrt(b2)) ** j).sum() * m0 / (np.sqrt(v0) + _EPS)
  np.testing.assert_allclose(table.numpy()[1], -move, rtol=1e-4)
  np.testing.assert_array_equal(table.numpy()[0], [0.0, 0.0])
  np.testing.assert_allclose(m.numpy()[1], m0 * b1**k, rtol=1e-5)
  np.testing.assert_allclose(v.numpy()[1], v0 * b2**k, rtol=1e-5)
  np.testing.assert_array_equal(last_update.numpy(), [now, now])


class _FloatCounterLazyAdam(tf_keras.optimizers.Adam):
  """The state LazyAdam had while its counters were float32.

  Keras's Adam slots, then per variable a [1] count of its updates and a
  per-row last update, as slots of the variable's dtype, tracked under
  the same names. Only its state is used, to write such a checkpoint.
  """

  def build(self, var_list):
    super().build(var_list)
    if getattr(self, "_lazy_built", False):
      return
    self._lazy_built = True
    self._updates, self._last = [], []
    for var in var_list:
      rows = var.shape[0] if var.shape.rank else 1
      self._updates.append(
        self.add_variable_from_reference(
          var, "updates", initial_value=tf.zeros([1], var.dtype)
        )
      )
      self._last.append(
        self.add_variable_from_reference(
          var, "last_update", initial_value=tf.zeros([rows], var.dtype)
        )
      )


@pytest.mark.parametrize("counters", ["float32", "int64"])
def test_resumes_from_a_checkpoint_with_pending_rows(tmp_path, counters):
  # A run saved mid-way, with rows 2 and 3 behind (not synced), resumes the
  # way the training loop does (restore, then the first step builds the
  # optimizer) and goes on exactly as the run that never stopped. With
  # float32 counters, the checkpoints written before they were int64.
  rng = np.random.default_rng(1)
  init = rng.normal(size=[4, 2]).astype(np.float32)
  steps = [
    ([0, 1, 2, 3], rng.normal(size=[4, 2])),
    ([0, 3], rng.normal(size=[2, 2])),
    ([0], rng.normal(size=[1, 2])),
    ([1, 2], rng.normal(size=[2, 2])),
    ([3, 0], rng.normal(size=[2, 2])),
  ]
  table = tf.Variable(init)
  optimizer = optimizers.LazyAdam(0.05)
  for rows, values in steps[:3]:
    _sparse_step(optimizer, table, rows, values)
  m, v, updates, last = optimizer._slots(table)
  assert list(last.numpy()) == [3, 1, 1, 2]
  saved = optimizer
  if counters == "float32":
    saved = _FloatCounterLazyAdam(0.05)
    saved.build([table])
    saved.iterations.assign(optimizer.iterations)
    for name, value in (
      ("_momentums", m),
      ("_velocities", v),
      ("_updates", updates),
      ("_last", last),
    ):
      getattr(saved, name)[0].assign(tf.cast(value, tf.float32))
  path = tf.train.Checkpoint(table=table, optimizer=saved).save(
    str(tmp_path / "ckpt")
  )

  resumed_table = tf.Variable(np.zeros_like(init))
  resumed = optimizers.LazyAdam(0.05)
  status = tf.train.Checkpoint(table=resumed_table, optimizer=resumed).restore(
    path
  )
  status.assert_existing_objects_matched()
  for rows, values in steps[3:]:
    _sparse_step(optimizer, table, rows, values)
    _sparse_step(resumed, resumed_table, rows, values)
  status.assert_existing_objects_matched()  # also the optimizer's, now built
  _, _, resumed_updates, resumed_last = resumed._slots(resumed_table)
  assert resumed_last.dtype == tf.int64
  np.testing.assert_array_equal(resumed_last.numpy(), last.numpy())
  np.testing.assert_array_equal(resumed_updates.numpy(), updates.numpy())
  optimizer.sync([table])
  resumed.sync([resumed_table])
  np.testing.assert_array_equal(resumed_table.numpy(), table.numpy())
