"""Tests of the history query tower and the user-side SSL task."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

import tfr_ssl  # noqa: F401
from tests import model_fakes
from tests.model_test import SMALL
from tfr_ssl import data
from tfr_ssl.config import Config, SSLConfig
from tfr_ssl.model import diagnostics, features, history, user_ssl
from tfr_ssl.model import two_tower as model_lib

P = -1


def _item_encoder():
  """item_id (4 rows + OOV) and category (2 + OOV), D = 2, with tables
  set by hand: id v embeds [v, 10 v], category c embeds [100 c, -c].
  Corpus rows 0..3 have ids 1..4 and categories 1, 2, 1, 2, so row r
  encodes to [r + 1, 10 (r + 1), 100 c, -c]:
    row 0: [1, 10, 100, -1]   row 1: [2, 20, 200, -2]
    row 2: [3, 30, 100, -1]   row 3: [4, 40, 200, -2]
  """
  encoder = features.FeatureEncoder(
    [
      {"name": "item_id", "vocabulary_size": 5, "multi": False},
      {"name": "category", "vocabulary_size": 3, "multi": False},
    ],
    2,
    name="item_encoder",
  )
  ids = np.arange(5, dtype=np.float32)
  encoder.tables[0].assign(np.stack([ids, 10 * ids], axis=1))
  cats = np.arange(3, dtype=np.float32)
  encoder.tables[1].assign(np.stack([100 * cats, -cats], axis=1))
  table = {
    "item_id": np.array([1, 2, 3, 4], np.int32),
    "category": np.array([1, 2, 1, 2], np.int32),
  }
  return encoder, table


def test_mean_pooling_averages_the_item_encoder_embeddings():
  encoder, table = _item_encoder()
  layer = history.HistoryEncoder(encoder, table, 3, "mean")
  out = layer(tf.constant([[0, 2, P], [3, P, P]]))
  # Row 0: mean of rows 0 and 2; row 1: row 3 alone.
  np.testing.assert_allclose(out, [[2, 20, 100, -1], [4, 40, 200, -2]])
  # Columns past N are not read; fewer columns are fine.
  two = history.HistoryEncoder(encoder, table, 2, "mean")
  np.testing.assert_allclose(two(tf.constant([[0, 2, 3]])), [[2, 20, 100, -1]])
  np.testing.assert_allclose(layer(tf.constant([[1]])), [[2, 20, 200, -2]])


def test_recency_pooling_weighs_positions_by_a_softmax():
  encoder, table = _item_encoder()
  mean = history.HistoryEncoder(encoder, table, 3, "mean")
  recency = history.HistoryEncoder(encoder, table, 3, "recency")
  rows = tf.constant([[0, 2, P], [3, P, P], [1, 0, 3]])
  # Zero logits (the initial value): every present item weighs the same.
  np.testing.assert_allclose(recency(rows), mean(rows), rtol=1e-6)
  # Logits [log 3, 0, 0]: the latest item weighs 3, the next 1 (over the
  # items present only): row 0 = 0.75 [1, 10, 100, -1] + 0.25 [3, 30, 100,
  # -1]; row 1 has one item; row 2 = (3 row1 + row0 + row3) / 5.
  recency.recency_logits.assign([np.log(3.0), 0.0, 0.0])
  np.testing.assert_allclose(
    recency(rows),
    [[1.5, 15, 100, -1], [4, 40, 200, -2], [2.2, 22, 180, -1.8]],
    rtol=1e-5,
  )


def test_an_empty_history_reads_the_learned_empty_vector():
  encoder, table = _item_encoder()
  for pooling in history.POOLINGS:
    layer = history.HistoryEncoder(encoder, table, 3, pooling)
    layer.empty.assign([7.0, 8.0, 9.0, 10.0])
    out = layer(tf.constant([[P, P, P], [0, P, P]]))
    np.testing.assert_allclose(out, [[7, 8, 9, 10], [1, 10, 100, -1]])


def test_the_item_tables_get_the_gradient_of_the_slots_present_only():
  # d(sum of outputs)/d(table rows): a row of the mean over k items gets
  # 1/k per use per column. Row 0 of the batch is [0, 2] (k = 2), row 1
  # is empty (reads `empty`, no table gradient), row 2 is [2] (k = 1):
  #   id 1 (corpus row 0): 1/2;  id 3 (corpus row 2): 1/2 + 1 = 3/2;
  #   category 1 (rows 0 and 2): 1/2 + 1/2 + 1 = 2; ids 0, 2, 4 and
  #   categories 0, 2: exactly 0.
  # An all-empty batch sends exactly 0 everywhere. (A pooling that also
  # embedded an item for the empty slots sent that row a gradient from
  # no slot: uninitialised memory, values up to 1e29.)
  encoder, table = _item_encoder()
  for pooling in history.POOLINGS:
    layer = history.HistoryEncoder(encoder, table, 3, pooling)
    for rows, ids, categories in (
      ([[0, 2, P], [P, P, P], [2, P, P]], [0, 0.5, 0, 1.5, 0], [0, 2, 0]),
      ([[P, P, P], [P, P, P]], [0] * 5, [0] * 3),
    ):
      with tf.GradientTape() as tape:
        total = tf.reduce_sum(layer(tf.constant(rows)))
      id_grad, category_grad = (
        tf.convert_to_tensor(g) for g in tape.gradient(total, encoder.tables)
      )
      np.testing.assert_allclose(
        id_grad, np.repeat(np.array(ids)[:, None], 2, 1), err_msg=pooling
      )
      np.testing.assert_allclose(
        category_grad,
        np.repeat(np.array(categories)[:, None], 2, 1),
        err_msg=pooling,
      )


def test_the_slot_sum_gradient_equals_tensorflows_own():
  # `features._sum_rows` replaces the registered gradient of
  # `tf.sparse.segment_sum` by a transposed segment sum; on random slots
  # (rows repeated across and within histories, an empty history) both
  # gradients must agree, as must the forward sums.
  rng = np.random.default_rng(0)
  embedded = tf.constant(rng.normal(size=(6, 3)), tf.float32)
  where = tf.constant([0, 3, 3, 1, 5, 0, 2, 4, 0, 3])
  segments = tf.constant([0, 0, 0, 1, 1, 3, 3, 3, 4, 4])  # row 2 empty
  upstream = tf.constant(rng.normal(size=(5, 3)), tf.float32)
  results = []
  for pool in (
    lambda e, w, s, n: features._sum_rows(e, w, s, n, None),
    lambda e, w, s, n: tf.sparse.segment_sum(e, w, s, num_segments=n),
  ):
    with tf.GradientTape() as tape:
      tape.watch(embedded)
      out = pool(embedded, where, segments, 5)
    results.append((out, tape.gradient(out, embedded, upstream)))
  (ours_out, ours_grad), (tf_out, tf_grad) = results
  np.testing.assert_allclose(ours_out, tf_out, rtol=1e-6)
  np.testing.assert_allclose(ours_grad, tf_grad, rtol=1e-6, atol=1e-6)
  assert np.abs(ours_grad.numpy()).min() > 0  # every row is read


def test_the_history_reads_the_item_encoder_variables_not_a_copy():
  encoder, table = _item_encoder()
  layer = history.HistoryEncoder(encoder, table, 3)
  rows = tf.constant([[0, 2, P]])
  before = layer(rows).numpy()
  # Id 3 (corpus row 2) now embeds [33, 330]: the mean moves by 15, 150.
  encoder.tables[0].scatter_update(tf.IndexedSlices([[33.0, 330.0]], [3]))
  np.testing.assert_allclose(layer(rows) - before, [[15, 150, 0, 0]])
  # Besides the encoder's, the layer owns one vector: `empty`.
  shared = {id(v) for v in encoder.trainable_weights}
  own = [v for v in layer.trainable_weights if id(v) not in shared]
  assert len(own) == 1 and own[0] is layer.empty


def test_bad_arguments_are_refused():
  encoder, table = _item_encoder()
  with pytest.raises(ValueError, match="pooling"):
    history.HistoryEncoder(encoder, table, 3, "max")
  with pytest.raises(ValueError, match="length"):
    history.HistoryEncoder(encoder, table, 0)


@pytest.fixture(scope="module")
def dataset():
  return model_fakes.tiny_dataset()


def _user_stream(dataset):
  """The training stream with histories of 4 and the user SSL sample."""
  return data.train_dataset(
    dataset,
    batch_size=32,
    ssl_batch_size=16,
    history_length=4,
    user_ssl=True,
    repeat=True,
  )


def _model(dataset, seed=0, **overrides):
  config = Config().override({**SMALL, "model.history_length": 4, **overrides})
  tf_keras.utils.set_random_seed(seed)
  return model_lib.TwoTowerModel(config, dataset)


def test_the_query_tower_history_shares_the_item_tables(dataset):
  model = _model(dataset)
  encoder = model.query_tower.history.item_encoder
  assert encoder is model.item_encoder
  # One item id table in the whole model.
  names = [v.name for v in model.trainable_variables]
  assert sum("item_id_embeddings" in n for n in names) == 1
  query = {
    "user_id": tf.constant([1, 2]),
    "history": tf.constant([[5, 6, P, P], [P, P, P, P]]),
  }
  before = model.query_tower(query).numpy()
  # Corpus row 5 has id 6 (and training interactions: not the cold
  # rule's unknown). A new embedding moves the user whose history holds it.
  assert dataset.item_train_count[5] > 0
  table = model.item_encoder.tables[0]
  table.scatter_update(tf.IndexedSlices(table[6:7] + 1.0, [6]))
  after = model.query_tower(query).numpy()
  assert np.abs(after[0] - before[0]).max() > 1e-4
  np.testing.assert_allclose(after[1], before[1], rtol=1e-6)


def test_query_id_off_makes_the_user_id_irrelevant(dataset):
  query = {
    "user_id": tf.constant([1, 2]),
    "history": tf.constant([[5, 6, P, P], [5, 6, P, P]]),
  }
  off = _model(dataset, **{"model.query_id": "off"}).query_tower(query)
  np.testing.assert_allclose(off[0], off[1], rtol=1e-6)
  # The contrast: with the id on, the same two users differ.
  on = _model(dataset, **{"model.query_id": "on"}).query_tower(query)
  assert np.abs(on[0] - on[1]).max() > 1e-4


def _views(history_rows, seed=(0, 1), length=3):
  task = user_ssl.UserSSL(SSLConfig(), ["user_id", "age"], "user_id", length)
  users = len(history_rows)
  batch = {
    "user_id": tf.range(1, users + 1),
    "age": tf.fill([users], 2),
    "history": tf.constant(history_rows),
  }
  stacked, masks = task.views(batch, tf.constant(seed, tf.int64))
  return stacked, masks


def test_user_ssl_views_are_two_disjoint_halves_of_the_history():
  rows = [
    [15, 14, 13, 12, 11, 10],
    [21, 20, P, P, P, P],
    [30, P, P, P, P, P],
    [44, 43, 42, P, P, P],
  ]
  stacked, masks = _views(rows)
  views = stacked["history"].numpy()
  assert views.shape == (8, 3)  # 2 U rows, cut to N = 3
  for user, original in enumerate(rows):
    first, second = views[user], views[user + 4]
    a, b = first[first != P], second[second != P]
    assert not set(a) & set(b)
    assert sorted([*a, *b]) == sorted(x for x in original if x != P)
    count = sum(x != P for x in original)
    # Alternating over a random order: halves of ceil and floor size.
    assert sorted([len(a), len(b)]) == [count // 2, (count + 1) // 2]
    for view in (a, b):  # latest first, as in the history
      order = [list(original).index(x) for x in view]
      assert order == sorted(order)
  # The user's own features in both views; the id masked in both.
  np.testing.assert_array_equal(stacked["user_id"], [1, 2, 3, 4] * 2)
  np.testing.assert_array_equal(masks, [[True, False]] * 8)
  # The halves are random: another seed splits user 0 otherwise.
  splits = {
    tuple(_views(rows, seed=(0, s))[0]["history"].numpy()[0]) for s in range(8)
  }
  assert len(splits) > 1


def test_user_ssl_trains_the_item_tables_through_the_history(dataset):
  batch = next(iter(_user_stream(dataset)))
  with_task = _model(dataset, **{"ssl.user_alpha": 0.5})
  without = _model(dataset, **{"ssl.user_alpha": 0.0})
  without.set_weights(with_task.get_weights())
  assert without.user_ssl is None

  def item_table_gradient(model, loss_fn):
    table = model.item_encoder.tables[0]
    with tf.GradientTape() as tape:
      loss = loss_fn(model)
    return tf.convert_to_tensor(tape.gradient(loss, table)).numpy()

  # The user SSL loss alone reaches exactly the item rows of the users'
  # histories (ids = rows + 1) through the shared item table.
  # The evaluation seed: the one compute_loss(training=False) draws with.
  seed = with_task.step_seed(False, anchor=batch["item_index"])
  alone = item_table_gradient(
    with_task, lambda m: m.user_ssl_loss(batch, False, seed)
  )
  in_history = np.unique(batch["ssl_user"]["history"].numpy())
  in_history = in_history[in_history != P] + 1
  touched = np.flatnonzero(np.abs(alone).sum(axis=1) > 0)
  assert set(touched) <= set(in_history) and touched.size > 0
  # The total loss's item-table gradient differs by it.
  total = item_table_gradient(
    with_task, lambda m: m.compute_loss(batch, training=False)
  )
  plain = item_table_gradient(
    without, lambda m: m.compute_loss(batch, training=False)
  )
  np.testing.assert_allclose(total - plain, 0.5 * alone, atol=1e-5)


def test_a_few_training_steps_report_a_finite_user_ssl_loss(dataset):
  batches = list(_user_stream(dataset).take(3))
  with_task = _model(dataset, **{"ssl.user_alpha": 0.5})
  without = _model(dataset, **{"ssl.user_alpha": 0.0})
  without.set_weights(with_task.get_weights())
  for model in (with_task, without):
    model.compile(optimizer=tf_keras.optimizers.Adagrad(0.1))
    # Keras's own train step, run eagerly (tracing `fit` costs seconds).
    for batch in batches:
      logs = model.train_step(batch)
    if model is with_task:
      assert np.isfinite(float(logs["user_ssl_loss"]))
      assert float(logs["user_ssl_loss"]) > 0
    else:
      assert "user_ssl_loss" not in logs
  # From the same weights on the same batches, the task moved the item
  # id table (through the histories) differently.
  moved = np.abs(
    with_task.item_encoder.tables[0].numpy()
    - without.item_encoder.tables[0].numpy()
  )
  assert moved.max() > 1e-6


def test_user_ssl_gradient_norms_scale_with_beta(dataset):
  # As for the item task: the user task's gradient on the query tower is
  # beta * dL_user/dw, so doubling beta doubles its norm and leaves the
  # main task's norm on the query tower and the cosine unchanged.
  batch = next(iter(_user_stream(dataset)))
  norms = []
  for beta in (0.5, 1.0):
    model = _model(dataset, **{"ssl.user_alpha": beta})
    norms.append(
      {k: float(v) for k, v in diagnostics.gradient_norms(model, batch).items()}
    )
  one, two = norms
  assert one["grad_norm/query_main"] > 0 and one["grad_norm/user_ssl"] > 0
  assert two["grad_norm/query_main"] == pytest.approx(
    one["grad_norm/query_main"], 1e-5
  )
  assert two["grad_norm/user_ssl"] == pytest.approx(
    2 * one["grad_norm/user_ssl"], 1e-5
  )
  assert two["grad_norm/user_cosine"] == pytest.approx(
    one["grad_norm/user_cosine"], abs=1e-4
  )
