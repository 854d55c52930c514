"""Tests of TwoTowerModel on a tiny hand-built dataset."""

import os

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

import tfr_ssl  # noqa: F401
from tests import model_fakes
from tfr_ssl.config import Config
from tfr_ssl.model import diagnostics
from tfr_ssl.model import two_tower as model_lib

SMALL = {
  "model.embedding_dim": 8,
  "model.query_layers": (16,),
  "model.item_layers": (16,),
  "model.output_dim": 8,
  "model.temperature": 0.2,
  # The streaming estimator: its state is what several tests inspect.
  "model.logq": "streaming",
  "model.estimator_buckets": 64,
  "model.estimator_lr": 0.1,
  "ssl.batch_size": 16,
  "ssl.temperature": 0.2,
  "train.batch_size": 32,
}


@pytest.fixture(scope="module")
def dataset():
  return model_fakes.tiny_dataset()


def _model(dataset, seed=0, **overrides):
  config = Config().override({**SMALL, **overrides})
  tf_keras.utils.set_random_seed(seed)
  return model_lib.TwoTowerModel(config, dataset)


def _batch(dataset, task="user_to_item", seed=0):
  return model_fakes.batches(dataset, num_batches=1, task=task, seed=seed)[0]


def _components(model, batch):
  """(returned loss, main_loss, ssl_loss) of one evaluation call."""
  model.reset_metrics()
  loss = model.compute_loss(batch, training=False)
  return (
    float(loss),
    float(model.retrieval.loss_tracker.result()),
    float(model.ssl_task.loss_tracker.result()),
  )


def test_towers_embed_id_dicts_to_unit_vectors(dataset):
  model = _model(dataset)
  batch = _batch(dataset)
  query = model.query_tower(batch["query"])
  item = model.item_tower(batch["item"])
  assert query.shape == (32, 8) and item.shape == (32, 8)
  np.testing.assert_allclose(np.linalg.norm(item, axis=1), 1.0, rtol=1e-5)
  # No augmentation at inference: the same input gives the same output.
  np.testing.assert_array_equal(model.item_tower(batch["item"]), item)


def test_item_to_item_query_tower_shares_the_item_encoder(dataset):
  model = _model(dataset, **{"model.task": "item_to_item"})
  assert model.query_tower.encoder is model.item_encoder
  assert model.query_tower.hidden[0] is not model.item_tower.hidden[0]
  batch = _batch(dataset, task="item_to_item")
  loss = model.compute_loss(batch, training=True)
  assert np.isfinite(float(loss))


def test_alpha_zero_is_exactly_the_main_only_loss(dataset):
  batch = _batch(dataset)
  joint = _model(dataset, **{"ssl.alpha": 1.0, "model.logq": "static"})
  plain = _model(dataset, **{"ssl.alpha": 0.0, "model.logq": "static"})
  plain.set_weights(joint.get_weights())
  loss, main, ssl = _components(joint, batch)
  # Joint = main + 1.0 * ssl, and the SSL part is not zero.
  assert loss == pytest.approx(main + ssl, rel=1e-6)
  assert ssl > 0.1
  joint.phase = "main_only"
  main_only = float(joint.compute_loss(batch, training=False))
  plain.reset_metrics()
  zero_alpha = float(plain.compute_loss(batch, training=False))
  assert zero_alpha == main_only == pytest.approx(main, rel=1e-6)
  # alpha = 0 skips the SSL computation: its metric never updated.
  assert int(plain.ssl_task.loss_tracker.count) == 0


def test_one_item_tower_pass_equals_two(dataset):
  # compute_loss embeds the main positives and both SSL views in one item
  # tower call; the loss and every gradient must equal those of the two
  # separate calls (main_loss, ssl_loss), as rows are independent.
  model = _model(dataset, **{"ssl.alpha": 0.5, "model.id_dropout": 0.3})
  batch = _batch(dataset)
  variables = model.trainable_variables

  def loss_and_grads(fn):
    with tf.GradientTape() as tape:
      loss = fn()
    grads = tape.gradient(loss, variables)
    return float(loss), [tf.convert_to_tensor(g) for g in grads]

  seed = model.step_seed(False, anchor=batch["item_index"])
  joint, joint_grads = loss_and_grads(
    lambda: model.compute_loss(batch, training=False)
  )
  separate, separate_grads = loss_and_grads(
    lambda: (
      model.main_loss(batch, False, seed)
      + 0.5 * model.ssl_loss(batch, False, seed)
    )
  )
  assert joint == pytest.approx(separate, rel=1e-5)
  for a, b in zip(joint_grads, separate_grads, strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_phases_pick_the_losses_and_the_trained_tower(dataset):
  model = _model(dataset)
  model.compile(optimizer=tf_keras.optimizers.Adagrad(0.1))
  data = model_fakes.as_dataset(model_fakes.batches(dataset, num_batches=3))
  query_before = [v.numpy().copy() for v in model.query_tower.hidden[0].weights]
  item_before = model.item_tower.hidden[0].kernel.numpy().copy()
  model.phase = "ssl_only"
  logs = []
  record = tf_keras.callbacks.LambdaCallback(
    on_train_batch_end=lambda _, batch_logs: logs.append(dict(batch_logs))
  )
  history = model.fit(data, epochs=1, verbose=0, callbacks=[record]).history
  # Pretraining the item tower only: the query tower does not move.
  for before, var in zip(
    query_before, model.query_tower.hidden[0].weights, strict=True
  ):
    np.testing.assert_array_equal(before, var.numpy())
  assert not np.array_equal(item_before, model.item_tower.hidden[0].kernel)
  assert history["main_loss"] == [0.0] and history["ssl_loss"][0] > 0
  # tfrs.Model.train_step logs the batch's own loss as "loss" and each
  # tracker's running mean over the epoch. In ssl_only the returned loss IS
  # the SSL loss (no alpha, no main part), so the SSL tracker's mean after
  # batch 1 is batch 1's loss, and after the epoch the mean of the three
  # batch losses. (history keeps the last batch's logs: its "loss" is batch
  # 3's alone, which is why comparing it to the epoch mean needed 50%.)
  batch_losses = [float(batch_logs["loss"]) for batch_logs in logs]
  assert len(batch_losses) == 3
  assert logs[0]["ssl_loss"] == pytest.approx(batch_losses[0], rel=1e-6)
  assert history["ssl_loss"][0] == pytest.approx(
    np.mean(batch_losses), rel=1e-6
  )
  # The estimator is not updated in ssl_only.
  assert int(model.sampling.step) == 0
  model.phase = "main_only"
  history = model.fit(data, epochs=1, verbose=0).history
  assert history["ssl_loss"] == [0.0] and history["main_loss"][0] > 0
  assert int(model.sampling.step) == 3
  with pytest.raises(ValueError, match="phase must be one of"):
    model.phase = "pretrain"


def test_phase_for_step_follows_the_schedule():
  config = Config().override(
    {"train.schedule": "pretrain", "train.pretrain_steps": 10}
  )
  assert model_lib.phase_for_step(config, 9) == "ssl_only"
  assert model_lib.phase_for_step(config, 10) == "joint"
  no_ssl = config.override({"ssl.alpha": 0.0})
  assert model_lib.phase_for_step(no_ssl, 10) == "main_only"
  assert model_lib.phase_for_step(Config(), 0) == "joint"


def test_short_fit_lowers_main_and_ssl_losses(dataset):
  model = _model(dataset, **{"ssl.alpha": 1.0, "ssl.masking": "cfm"})
  model.compile(optimizer=tf_keras.optimizers.Adagrad(0.2))
  held_out = _batch(dataset, seed=99)
  _, main_before, ssl_before = _components(model, held_out)
  train = model_fakes.batches(dataset, num_batches=12, seed=1)
  history = model.fit(
    model_fakes.as_dataset(train), epochs=4, verbose=0
  ).history
  _, main_after, ssl_after = _components(model, held_out)
  assert main_after < 0.9 * main_before
  assert ssl_after < 0.9 * ssl_before
  assert history["ssl_accuracy"][-1] > history["ssl_accuracy"][0]
  expected = {"main_loss", "ssl_loss", "ssl_accuracy", "spread_out_loss"}
  assert expected | {"loss", "regularization_loss", "total_loss"} <= set(
    history
  )
  # The seed step and the streaming estimator advance once per step.
  assert int(model.seed_step) == 48 and int(model.sampling.step) == 48


def _pair(dataset, overrides, contrast):
  """Models with `overrides` and with `contrast`, with the same towers."""
  model = _model(dataset, **overrides)
  other = _model(dataset, **contrast)
  other.item_tower.set_weights(model.item_tower.get_weights())
  other.query_tower.set_weights(model.query_tower.get_weights())
  return model, other


def _main(model, batch) -> float:
  """The retrieval loss of one evaluation call (no dropout, no update)."""
  return _components(model, batch)[1]


# The batch has 32 positives over the fake's 24 items, so at least one item
# is the positive of two rows (pigeonhole): an accidental hit, and a bucket
# the streaming estimator sees twice.


def _static_logq(model, other, batch, dataset):
  # No correction versus p_j = B max(count_j, 1) / total (the fake's counts
  # are Zipf-like, not uniform): a per-candidate shift, so a different loss.
  assert other.sampling is None
  counts = np.maximum(dataset.item_train_count, 1.0)
  np.testing.assert_allclose(
    model.sampling.expected_counts(tf.range(24)), 32 * counts / counts.sum()
  )
  assert _main(model, batch) != pytest.approx(_main(other, batch))


def _streaming_logq(model, other, batch, dataset, hashes=1):
  # Before any update every bucket is unseen: p = 1 / max(step, 1) = 1 for
  # all, log q = 0, the uncorrected loss.
  assert _main(model, batch) == pytest.approx(_main(other, batch), rel=1e-6)
  # One training step (t = 1) sets each bucket's gap to t - 0 = 1 and its
  # copies to the item's count k in the batch: p = k / 1. Hash 0 is the
  # identity (24 items, 64 buckets: no collision) and a collision only
  # raises a bucket's estimate, so the min over hashes is k exactly.
  model.compute_loss(batch, training=True)
  assert int(model.sampling.step) == 1
  assert model.sampling.gap.shape == (hashes * 64,)
  ids, _, k = tf.unique_with_counts(batch["item_index"])
  np.testing.assert_allclose(model.sampling.expected_counts(ids), k)
  # Every hash recorded the batch: 1 <= buckets seen per hash <= distinct.
  seen = (model.sampling.gap.numpy() > 0).reshape(hashes, 64).sum(axis=1)
  assert np.all((seen >= 1) & (seen <= len(ids)))
  # A repeated positive has k = 2, the others 1: log q is not constant.
  assert int(tf.reduce_max(k)) >= 2
  assert _main(model, batch) != pytest.approx(_main(other, batch))


def _different_loss(model, other, batch, dataset):
  # Another loss function of the same logits.
  assert _main(model, batch) != pytest.approx(_main(other, batch))


def _hinge(model, other, batch, dataset):
  # relu(margin - (cos_pos - cos_neg)) on unit vectors lies in
  # [0, margin + 2]; the logistic pair loss is another function.
  hinge = _main(model, batch)
  assert 0.0 <= hinge <= model.config.model.margin + 2.0
  assert hinge != pytest.approx(_main(other, batch))


def _fewer_negatives(model, other, batch, dataset):
  # The softmax over the positive and its 4 highest negatives is over a
  # subset of the 31 (less accidental hits): a smaller log-sum-exp, so a
  # strictly smaller loss.
  assert _main(model, batch) < _main(other, batch) - 1e-4


def _more_negatives(model, other, batch, dataset):
  # Without a correction, 8 extra candidates add positive terms to every
  # row's softmax denominator (an extra that is the row's own item is
  # removed as an accidental hit): a strictly larger loss.
  assert model.retrieval_task.mixed_negatives.count == 8
  assert _main(model, batch) > _main(other, batch) + 1e-4


def _unigram_proposal(model, other, batch, dataset):
  # q_j = count_j^0.75 / Z, against 1 / 24 for the uniform proposal.
  counts = dataset.item_train_count.astype(np.float64) ** 0.75
  np.testing.assert_allclose(
    model.retrieval_task.mixed_negatives.probability(tf.range(24)),
    counts / counts.sum(),
    rtol=1e-5,
  )
  np.testing.assert_allclose(
    other.retrieval_task.mixed_negatives.probability(tf.range(24)),
    np.full(24, 1 / 24),
  )


def _accidental_hits_kept(model, other, batch, dataset):
  # A repeated positive is also another row's negative with the same
  # embedding, hence the same logit as the positive: kept, it adds
  # exp(l_pos) to that row's denominator, so the loss is strictly larger.
  assert _main(model, batch) > _main(other, batch) + 1e-4


def _dropout_and_spread(model, other, batch, dataset):
  # Spread-out: the returned loss adds 0.5 * spread to the retrieval loss
  # (the contrast has no spread-out term and the same towers).
  loss, main, _ = _components(model, batch)
  spread = float(model.spread_out_tracker.result())
  assert spread > 0
  other_loss, other_main, _ = _components(other, batch)
  assert main == pytest.approx(other_main, rel=1e-6)
  assert loss - other_loss == pytest.approx(0.5 * spread, rel=1e-4)
  # Feature dropout masks item features in training only: the first
  # training step's loss differs from the contrast's, whose views and seeds
  # are otherwise the same.
  no_dropout = _model(dataset, **{"model.spread_out_weight": 0.5})
  no_dropout.set_weights(model.get_weights())
  assert float(model.compute_loss(batch, training=True)) != pytest.approx(
    float(no_dropout.compute_loss(batch, training=True))
  )


def _masks(model, rows=20_000):
  augmenter = model.item_ssl.augmenter
  assert augmenter.feature_names == ["item_id", "category", "tags"]
  m1, m2 = augmenter.masks(rows, tf.constant([0, 1], tf.int64))
  return m1.numpy(), m2.numpy()


def _key_in_one_view(m1, m2):
  # The item id (a key) is visible in exactly one view of each row.
  assert np.all(m1[:, 0] != m2[:, 0])


def _rfm(model, other, batch, dataset):
  # 2 content features (category, tags): floor(2 / 2) = 1 masked in view 1,
  # the other in view 2, one split for the batch.
  m1, m2 = _masks(model)
  _key_in_one_view(m1, m2)
  np.testing.assert_array_equal(m1[:, 1:], ~m2[:, 1:])
  assert np.all(m1[:, 1:].sum(axis=1) == 1)
  assert len({tuple(row) for row in m1[:, 1:]}) == 1
  # With two content features CFM (the default) splits them the same way;
  # what differs is that RFM needs no dependence matrix.
  assert (
    model.item_ssl.augmenter.masking == "rfm"
    and model.item_ssl.augmenter.dependence is None
  )
  assert other.item_ssl.augmenter.dependence.shape == (2, 2)
  # dropout_rate 0: the views keep every tag; the default 0.3 drops some of
  # the batch's ~32 tag values (all kept: 0.7^32 = 1e-5).
  features = dict(batch["ssl_item"])
  seed = tf.constant([0, 1])
  view1, _, view2, _ = model.item_ssl.augmenter(features, seed)
  for view in (view1, view2):
    np.testing.assert_array_equal(view["tags"], features["tags"])
  dropped, _, _, _ = other.item_ssl.augmenter(features, seed)
  assert np.any(np.asarray(dropped["tags"]) != np.asarray(features["tags"]))


def _random_masking(model, other, batch, dataset):
  # Each content cell masked independently with p = 0.3: 20,000 rows x 2
  # features x 2 views = 80,000 draws, sd sqrt(0.21 / 80,000) = 0.0016;
  # +-0.01 is six sd. Views are independent: both masked ~0.09.
  m1, m2 = _masks(model)
  _key_in_one_view(m1, m2)
  content = np.stack([m1[:, 1:], m2[:, 1:]])
  assert abs(content.mean() - 0.3) < 0.01
  assert abs((m1[:, 1:] & m2[:, 1:]).mean() - 0.09) < 0.01


def _no_masking_value_dropout(model, other, batch, dataset):
  # No content masking; the key rule still applies.
  m1, m2 = _masks(model)
  _key_in_one_view(m1, m2)
  assert not m1[:, 1:].any() and not m2[:, 1:].any()
  # Each tag value dropped (-> PAD) with p = 0.5 in each view: over 20,000
  # items with 1..3 tags (the fake's rows, tiled) the kept share is 0.5
  # within 0.01 (sd sqrt(0.25 / 40,000) = 0.0025 per view).
  tags = np.tile(dataset.items["tags"], (834, 1))
  view1, _, view2, _ = model.item_ssl.augmenter(
    {
      "item_id": np.zeros(len(tags), np.int32),
      "category": tags[:, 0],
      "tags": tags,
    },
    tf.constant([0, 1]),
  )
  present = tags != -1
  for view in (view1, view2):
    kept = view["tags"].numpy() != -1
    assert not (kept & ~present).any()
    assert abs(kept.sum() / present.sum() - 0.5) < 0.01


# (option, contrast that differs only in it, how the option shows).
OPTIONS = [
  (
    {"model.loss": "softmax", "model.logq": "none"},
    {"model.loss": "softmax", "model.logq": "static"},
    lambda m, o, b, d: _static_logq(o, m, b, d),
  ),
  (
    {"model.loss": "softmax", "model.logq": "static"},
    {"model.loss": "softmax", "model.logq": "none"},
    _static_logq,
  ),
  (
    {"model.loss": "softmax", "model.logq": "streaming"},
    {"model.loss": "softmax", "model.logq": "none"},
    _streaming_logq,
  ),
  (
    {"model.loss": "softmax", "model.estimator_hashes": 3},
    {"model.loss": "softmax", "model.logq": "none"},
    lambda m, o, b, d: _streaming_logq(m, o, b, d, hashes=3),
  ),
  (
    {"model.loss": "pointwise", "model.logq": "static"},
    {"model.loss": "softmax", "model.logq": "static"},
    _different_loss,
  ),
  (
    {"model.loss": "pairwise", "model.logq": "streaming"},
    {"model.loss": "softmax", "model.logq": "streaming"},
    _different_loss,
  ),
  (
    {"model.loss": "pairwise", "model.pairwise_loss": "hinge"},
    {"model.loss": "pairwise", "model.pairwise_loss": "logistic"},
    _hinge,
  ),
  ({"model.hard_negatives": 4}, {}, _fewer_negatives),
  (
    {
      "model.mixed_negatives": 8,
      "model.mixed_negative_sampling": "uniform",
      "model.logq": "none",
    },
    {"model.logq": "none"},
    _more_negatives,
  ),
  (
    {"model.mixed_negatives": 8, "model.mixed_negative_sampling": "unigram"},
    {"model.mixed_negatives": 8, "model.mixed_negative_sampling": "uniform"},
    _unigram_proposal,
  ),
  (
    {"model.remove_accidental_hits": False, "model.logq": "none"},
    {"model.remove_accidental_hits": True, "model.logq": "none"},
    _accidental_hits_kept,
  ),
  (
    {"model.feature_dropout": 0.3, "model.spread_out_weight": 0.5},
    {"model.feature_dropout": 0.3},
    _dropout_and_spread,
  ),
  ({"ssl.masking": "rfm", "ssl.dropout_rate": 0.0}, {}, _rfm),
  ({"ssl.masking": "random", "ssl.mask_rate": 0.3}, {}, _random_masking),
  (
    {"ssl.masking": "none", "ssl.dropout_rate": 0.5},
    {},
    _no_masking_value_dropout,
  ),
]


# Ids name the effect function, never its repr: an address in an id differs
# between processes, and pytest-xdist workers must collect the same ids.
@pytest.mark.parametrize(
  "overrides, contrast, effect",
  OPTIONS,
  ids=lambda o: o.__name__ if callable(o) else str(o)[:60],
)
def test_every_option_has_its_effect_and_trains_a_step(
  dataset, overrides, contrast, effect
):
  model, other = _pair(dataset, overrides, contrast)
  batch = _batch(dataset)
  effect(model, other, batch, dataset)
  # And a training step of a fresh model gives a finite loss and gradients.
  model = _model(dataset, **overrides)
  variables = model.trainable_variables
  with tf.GradientTape() as tape:
    loss = model.compute_loss(batch, training=True)
  grads = tape.gradient(loss, variables)
  assert np.isfinite(float(loss)) and float(loss) > 0
  norms = [
    float(tf.norm(tf.convert_to_tensor(g))) for g in grads if g is not None
  ]
  assert all(np.isfinite(norms)) and sum(norms) > 0


def test_feature_dropout_only_in_training(dataset):
  model = _model(
    dataset, **{"model.feature_dropout": 0.5, "model.logq": "none"}
  )
  batch = _batch(dataset)
  model.config.ssl.alpha = 0.0
  evals = {float(model.compute_loss(batch, training=False)) for _ in range(2)}
  trains = {float(model.compute_loss(batch, training=True)) for _ in range(3)}
  assert len(evals) == 1 and len(trains) == 3


def test_checkpoint_round_trip(dataset, tmp_path):
  model = _model(dataset)
  model.compile(optimizer=tf_keras.optimizers.Adagrad(0.1))
  data = model_fakes.as_dataset(model_fakes.batches(dataset, num_batches=3))
  model.fit(data, epochs=1, verbose=0)
  path = tf.train.Checkpoint(model=model).save(os.path.join(tmp_path, "ck"))
  clone = _model(dataset, seed=5)
  tf.train.Checkpoint(model=clone).restore(
    path
  ).assert_existing_objects_matched()
  batch = _batch(dataset, seed=3)
  np.testing.assert_allclose(
    clone.item_tower(batch["item"]), model.item_tower(batch["item"])
  )
  assert int(clone.sampling.step) == 3 and int(clone.seed_step) == 3
  np.testing.assert_allclose(
    _components(clone, batch), _components(model, batch), rtol=1e-6
  )


def test_config_errors_are_clear(dataset):
  with pytest.raises(model_lib.ModelConfigError, match=r"ssl\.batch_size=16"):
    _model(dataset, **{"model.mixed_negatives": 64})
  # The tiny items have 2 content features (category, tags); counting
  # category as key-like (key_share ~ 0: every feature is a key) leaves
  # fewer than 2 to split.
  with pytest.raises(model_lib.ModelConfigError, match="2 content item"):
    _model(dataset, **{"ssl.key_share": 1e-9})
  with pytest.raises(model_lib.ModelConfigError, match="id_dropout"):
    _model(dataset, **{"model.id_dropout": 1.0})
  model = _model(dataset)
  batch = dict(_batch(dataset))
  del batch["ssl_item"]
  with pytest.raises(ValueError, match="needs batch\\['ssl_item'\\]"):
    model.compute_loss(batch, training=True)
  # Evaluation streams may omit the SSL items: main loss only.
  assert np.isfinite(float(model.compute_loss(batch, training=False)))


def test_mixed_negatives_use_the_expected_count_correction(dataset):
  # The main loss must equal RetrievalLoss over [positives; 8 uniform
  # negatives] with log_q = log(B p_j + M q_j), q_j = 1 / N for every
  # candidate (positives included).
  model = _model(
    dataset,
    **{
      "ssl.alpha": 0.0,
      "model.logq": "static",
      "model.mixed_negatives": 8,
      "model.mixed_negative_sampling": "uniform",
    },
  )
  batch = _batch(dataset)
  loss = model.compute_loss(batch, training=False)
  extra = {k: v[:8] for k, v in batch["ssl_item"].items()}
  ids = tf.concat([batch["item_index"], batch["ssl_item_index"][:8]], 0)
  candidates = tf.concat(
    [model.item_tower(batch["item"]), model.item_tower(extra)], 0
  )
  counts = dataset.item_train_count.astype(np.float64)
  p = 32 * np.maximum(counts, 1.0) / counts.sum()  # B * count / total
  log_q = np.log(p[ids.numpy()] + 8 / dataset.num_items)
  reference = model.retrieval.__class__.from_config(
    model.retrieval.get_config()
  )
  want = reference(
    model.query_tower(batch["query"]),
    candidates,
    candidate_ids=ids,
    log_q=tf.constant(log_q, tf.float32),
    sample_weight=batch["weight"],
  )
  assert float(loss) == pytest.approx(float(want), rel=1e-5)


def test_unigram_proposal_probability(dataset):
  model = _model(
    dataset,
    **{
      "model.mixed_negatives": 4,
      "model.mixed_negative_sampling": "unigram",
      "model.mixed_negative_beta": 0.5,
    },
  )
  counts = dataset.item_train_count.astype(np.float64)
  want = np.sqrt(counts) / np.sqrt(counts).sum()  # count^.5 / Z
  got = model.retrieval_task.mixed_negatives.probability(
    tf.range(dataset.num_items)
  ).numpy()
  np.testing.assert_allclose(got, want, rtol=1e-5)
  uniform = _model(dataset, **{"model.mixed_negatives": 4})
  np.testing.assert_allclose(
    uniform.retrieval_task.mixed_negatives.probability(tf.constant([0, 5])),
    [1 / 24, 1 / 24],
  )


def _cold_dataset():
  # Items 0..3 get no training interaction: their ids are cold.
  data = model_fakes.tiny_dataset()
  data.item_train_count = data.item_train_count.copy()
  data.item_train_count[:4] = 0
  return data


def test_an_item_without_training_interactions_uses_the_id_default():
  data = _cold_dataset()
  model = _model(data)
  rows = np.arange(8)
  features = {k: tf.constant(v[rows]) for k, v in data.items.items()}
  out = model.item_tower(features).numpy()
  missing = dict(features, item_id=tf.fill([8], -1))
  oov = dict(features, item_id=tf.zeros([8], tf.int32))
  without_id = model.item_tower(missing).numpy()
  # Cold rows 0..3: the id counts as missing, so the output is the tower of
  # the content features with the id's default embedding; so is the OOV id
  # of an item added after training.
  np.testing.assert_allclose(out[:4], without_id[:4], rtol=1e-6)
  np.testing.assert_allclose(
    model.item_tower(oov).numpy(), without_id, rtol=1e-6
  )
  # Warm rows 4..7 keep their own id embedding.
  assert np.abs(out[4:] - without_id[4:]).max() > 1e-3


def test_id_dropout_drops_only_the_key_columns():
  # Value dropout off: it drops content columns on purpose (tested in
  # unseen_values_test.py).
  model = _model(
    _cold_dataset(), **{"model.id_dropout": 0.3, "model.value_dropout": 0.0}
  )
  mask = model.dropout.item_mask(20_000, True, tf.constant([0, 1], tf.int64))
  mask = mask.numpy()
  assert model.item_encoder.feature_names == ["item_id", "category", "tags"]
  # 20,000 Bernoulli(0.3) draws: std 0.0032; 5 std.
  assert abs(mask[:, 0].mean() - 0.3) < 0.016
  assert not mask[:, 1:].any()
  assert model.dropout.item_mask(10, False, tf.constant([0, 1])) is None


def test_projection_head_feeds_only_the_ssl_loss(dataset):
  model = _model(dataset, **{"ssl.projection_dim": 12})
  batch = _batch(dataset)
  trained = {id(v) for v in model.trainable_variables}
  head = model.ssl_head.trainable_variables
  assert len(head) == 4 and all(id(v) in trained for v in head)
  items = model.item_tower(batch["item"]).numpy()
  before = _components(model, batch)
  for variable in model.ssl_head.trainable_variables:
    variable.assign(variable * 2.0 + 0.1)
  after = _components(model, batch)
  # The head changes the SSL loss, not the retrieval embedding or main loss.
  np.testing.assert_allclose(model.item_tower(batch["item"]).numpy(), items)
  assert after[1] == pytest.approx(before[1], rel=1e-6)
  assert abs(after[2] - before[2]) > 1e-4


def test_gradient_norms_scale_with_alpha(dataset):
  # The SSL gradient is alpha * dL_ssl/dw: doubling alpha doubles its norm
  # and leaves the main norm and the cosine unchanged.
  batch = _batch(dataset)
  one = diagnostics.gradient_norms(_model(dataset, **{"ssl.alpha": 1.0}), batch)
  two = diagnostics.gradient_norms(_model(dataset, **{"ssl.alpha": 2.0}), batch)
  one = {k: float(v) for k, v in one.items()}
  two = {k: float(v) for k, v in two.items()}
  assert one["grad_norm/main"] > 0 and one["grad_norm/ssl"] > 0
  assert two["grad_norm/main"] == pytest.approx(one["grad_norm/main"], 1e-5)
  assert two["grad_norm/ssl"] == pytest.approx(2 * one["grad_norm/ssl"], 1e-5)
  assert two["grad_norm/cosine"] == pytest.approx(one["grad_norm/cosine"], 1e-4)
  assert -1.0 <= one["grad_norm/cosine"] <= 1.0
