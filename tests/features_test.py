"""Tests of the feature encoders and towers."""

import os

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

import tfr_ssl  # noqa: F401
from tests import model_fakes
from tfr_ssl.model import features

SPECS = [
  {"name": "id", "vocabulary_size": 4, "multi": False},
  {"name": "tags", "vocabulary_size": 5, "multi": True},
]


def _encoder():
  encoder = features.FeatureEncoder(SPECS, embedding_dim=2)
  # Table rows chosen so means are easy to read: row r of `id` = [r, -r],
  # row r of `tags` = [r, 10 r]; defaults = [[100, 100], [200, 200]].
  encoder.tables[0].assign([[r, -r] for r in range(4)])
  encoder.tables[1].assign([[r, 10 * r] for r in range(5)])
  encoder.defaults.assign([[100, 100], [200, 200]])
  return encoder


def _inputs():
  return {
    "id": tf.constant([1, 3, -1]),
    "tags": tf.constant([[1, 3, -1], [2, -1, -1], [-1, -1, -1]]),
  }


def test_lookup_and_masked_mean_pooling():
  out = _encoder().embed(_inputs())
  # id: rows 1, 3, then -1 = missing -> default [100, 100].
  # tags: mean(rows 1, 3) = [2, 20]; row 2 = [2, 20]; all-PAD -> default.
  expected = [
    [[1, -1], [2, 20]],
    [[3, -3], [2, 20]],
    [[100, 100], [200, 200]],
  ]
  np.testing.assert_allclose(out.numpy(), expected)


def test_bag_mean_of_bags_with_no_known_value():
  # The sorted segment sum stops at the last bag holding a value; the bags
  # after it, and a batch of empty bags only, must still be zero rows.
  table = tf.constant([[0.0, 0.0], [1.0, 10.0], [3.0, 30.0]])
  for ids, mean, missing in (
    ([[1, 2], [0, -1], [-1, -1]], [[2, 20], [0, 0], [0, 0]], [0, 1, 1]),
    ([[-1, -1], [0, -1]], [[0, 0], [0, 0]], [1, 1]),
  ):
    got, none = features._bag_mean(table, tf.constant(ids))
    np.testing.assert_array_equal(got.numpy(), mean)
    np.testing.assert_array_equal(none.numpy(), np.array(missing, bool))


def test_call_concatenates_features():
  out = _encoder()(_inputs())
  assert out.shape == (3, 4)
  np.testing.assert_allclose(out.numpy()[0], [1, -1, 2, 20])


def test_feature_mask_replaces_masked_features_by_their_default():
  mask = tf.constant([[True, False], [False, True], [False, False]])
  out = _encoder().embed(_inputs(), feature_mask=mask)
  np.testing.assert_allclose(out.numpy()[0], [[100, 100], [2, 20]])
  np.testing.assert_allclose(out.numpy()[1], [[3, -3], [200, 200]])
  np.testing.assert_allclose(out.numpy()[2], [[100, 100], [200, 200]])
  # A [F] mask applies to every row.
  per_batch = _encoder().embed(_inputs(), feature_mask=tf.constant([0, 1]))
  np.testing.assert_allclose(per_batch.numpy()[:, 1], [[200, 200]] * 3)


def test_choose_is_a_select_gradients_included():
  # `choose` writes the default into the missing rows of a copy, so its
  # output and the embedding's gradient equal the select's bit for bit;
  # the default's gradient is the same sum in another order.
  rng = np.random.default_rng(3)
  embedding = tf.constant(rng.normal(size=(6, 4, 5)).astype(np.float32))
  missing = tf.constant(rng.random((6, 4)) < 0.4)
  upstream = tf.constant(rng.normal(size=(6, 4, 5)).astype(np.float32))
  # One default for every feature ([1, 1, D]) or one per feature.
  for shape in ((1, 1, 5), (1, 4, 5)):
    default = tf.constant(rng.normal(size=shape).astype(np.float32))

    def run(pick, default=default):
      with tf.GradientTape() as tape:
        tape.watch([embedding, default])
        out = pick()
        loss = tf.reduce_sum(out * upstream)
      grads = tape.gradient(loss, [embedding, default])
      return [out.numpy()] + [tf.convert_to_tensor(g).numpy() for g in grads]

    got = run(lambda d=default: features.choose(missing, d, embedding))
    want = run(
      lambda d=default: tf.where(missing[..., tf.newaxis], d, embedding)
    )
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_allclose(got[2], want[2], rtol=1e-5, atol=1e-6)
    # And the rows really switch.
    b, f = np.argwhere(missing.numpy())[0]
    np.testing.assert_array_equal(
      got[0][b, f], default[0, f if shape[1] > 1 else 0]
    )
    b, f = np.argwhere(~missing.numpy())[0]
    np.testing.assert_array_equal(got[0][b, f], embedding[b, f])


def test_padding_gets_no_gradient():
  encoder = _encoder()
  with tf.GradientTape() as tape:
    loss = tf.reduce_sum(encoder(_inputs()))
  grads = tape.gradient(loss, encoder.tables[1])
  # Only the known values are looked up: the gradient holds one row per
  # known value of the batch (tags 1, 3 of bag 0 and 2 of bag 1), none for
  # the padding, so the optimizer dedups 3 rows, not 9.
  np.testing.assert_array_equal(grads.indices.numpy(), [1, 3, 2])
  dense = tf.convert_to_tensor(grads).numpy()
  np.testing.assert_allclose(dense[0], [0, 0])
  # Row 1 is in bag 0 only, with weight 1/2 per output unit.
  np.testing.assert_allclose(dense[1], [0.5, 0.5])
  # Row 2 is alone in bag 1: weight 1.
  np.testing.assert_allclose(dense[2], [1.0, 1.0])


def test_missing_feature_and_wrong_rank_are_clear_errors():
  encoder = _encoder()
  with pytest.raises(ValueError, match="'tags' is missing"):
    encoder({"id": tf.constant([1])})
  with pytest.raises(ValueError, match=r"'tags' must have shape \[B, L\]"):
    encoder({"id": tf.constant([1]), "tags": tf.constant([1])})


def test_feature_specs_follow_the_schema():
  dataset = model_fakes.tiny_dataset()
  specs = features.feature_specs(dataset, "item")
  assert [s["name"] for s in specs] == ["item_id", "category", "tags"]
  # Vocabulary plus the OOV row.
  assert [s["vocabulary_size"] for s in specs] == [25, 5, 9]
  assert [s["multi"] for s in specs] == [False, False, True]


def test_encoder_get_config_round_trip():
  encoder = _encoder()
  clone = features.FeatureEncoder.from_config(encoder.get_config())
  clone.set_weights(encoder.get_weights())
  np.testing.assert_allclose(clone(_inputs()), encoder(_inputs()))
  assert clone.get_config() == encoder.get_config()


def _tower():
  tf_keras.utils.set_random_seed(1)
  return features.Tower(_encoder(), layer_sizes=(8,), output_dim=3)


def test_tower_outputs_unit_vectors():
  out = _tower()(_inputs()).numpy()
  assert out.shape == (3, 3)
  np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)


def test_tower_get_config_round_trip():
  tower = _tower()
  expected = tower(_inputs())
  clone = features.Tower.from_config(tower.get_config())
  clone(_inputs())  # builds the dense layers
  clone.set_weights(tower.get_weights())
  np.testing.assert_allclose(clone(_inputs()), expected, rtol=1e-6)
  assert clone.get_config()["encoder"] == tower.get_config()["encoder"]


def test_tower_saved_model_round_trip(tmp_path):
  tower = _tower()
  expected = tower(_inputs())
  module = tf.Module()
  module.tower = tower
  module.serve = tf.function(
    lambda x: tower(x),
    input_signature=[
      {
        "id": tf.TensorSpec([None], tf.int32),
        "tags": tf.TensorSpec([None, None], tf.int32),
      }
    ],
  )
  path = os.path.join(tmp_path, "tower")
  tf.saved_model.save(module, path)
  loaded = tf.saved_model.load(path)
  np.testing.assert_allclose(loaded.serve(_inputs()), expected, rtol=1e-6)


def test_tower_trains_with_gradient_steps():
  tower = _tower()
  inputs = _inputs()
  target = tf.constant([[1.0, 0.0, 0.0]] * 3)
  optimizer = tf_keras.optimizers.SGD(0.5)
  losses = []
  for _ in range(5):
    with tf.GradientTape() as tape:
      loss = tf.reduce_mean(tf.square(tower(inputs) - target))
    grads = tape.gradient(loss, tower.trainable_variables)
    optimizer.apply_gradients(
      zip(grads, tower.trainable_variables, strict=True)
    )
    losses.append(float(loss))
  assert losses[-1] < losses[0]


@pytest.mark.parametrize("dense_values", [0, 512])
@pytest.mark.parametrize("weighted", [False, True])
def test_pool_equals_summing_the_call_embeddings(
  monkeypatch, dense_values, weighted
):
  # `pool` must give, per output row, the sum (weighted or not) of what
  # `call` gives for the slots' entries, with every unknown rule in play:
  # an OOV id (0), padding (-1), an id marked untrained (id 2), a bag with
  # one unknown value and an all-padding bag. Both ways of summing (the
  # dense count matrix, for few values, and the sparse one) are run, and
  # the table gradients must agree with those of the plain sum too.
  monkeypatch.setattr(features, "DENSE_POOL_VALUES", dense_values)
  encoder = features.FeatureEncoder(
    SPECS, 2, known_values={"id": np.array([True, True, False, True])}
  )
  entries_features = {
    "id": tf.constant([1, 3, -1, 2, 0]),
    "tags": tf.constant(
      [[1, 3, -1], [2, 0, -1], [-1, -1, -1], [4, 4, 1], [3, -1, -1]]
    ),
  }
  entries = tf.constant([0, 1, 1, 3, 2, 4, 0, 3])
  rows = tf.constant([0, 0, 0, 1, 1, 1, 3, 3])  # row 2 holds no slot
  weights = tf.constant([0.5, 1, 2, 0.25, 1, 3, 1, 0.1]) if weighted else None
  with tf.GradientTape(persistent=True) as tape:
    pooled = encoder.pool(entries_features, entries, rows, 4, weights)
    slots = tf.gather(encoder(entries_features), entries)
    if weighted:
      slots *= weights[:, tf.newaxis]
    expected = tf.math.unsorted_segment_sum(slots, rows, 4)
    upstream = tf.reshape(tf.range(16, dtype=tf.float32), [4, 4])
    loss_pool = tf.reduce_sum(pooled * upstream)
    loss_plain = tf.reduce_sum(expected * upstream)
  np.testing.assert_allclose(pooled, expected, rtol=1e-6)
  np.testing.assert_allclose(pooled[2], [0, 0, 0, 0])
  variables = encoder.trainable_variables
  for ours, theirs in zip(
    tape.gradient(loss_pool, variables),
    tape.gradient(loss_plain, variables),
    strict=True,
  ):
    np.testing.assert_allclose(
      tf.convert_to_tensor(ours), tf.convert_to_tensor(theirs), rtol=1e-5
    )
