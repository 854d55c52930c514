"""Tests of the static and streaming sampling-probability sources."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

import tfr_ssl  # noqa: F401
from tfr_ssl.model import sampling

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_static_probability_is_expected_count_per_batch():
  source = sampling.StaticSamplingProbability([3, 1, 0], batch_size=2)
  # total 4; p = 2 * count / 4, the unseen item floored at count 1.
  np.testing.assert_allclose(
    source.expected_counts(tf.constant([0, 1, 2])), [1.5, 0.5, 0.5]
  )
  np.testing.assert_allclose(source(tf.constant([[0], [2]])), [[1.5], [0.5]])


def test_static_get_config_round_trip():
  source = sampling.StaticSamplingProbability([5, 2, 1, 0], batch_size=3)
  clone = sampling.StaticSamplingProbability.from_config(source.get_config())
  clone.set_weights(source.get_weights())
  ids = tf.range(4)
  np.testing.assert_allclose(clone(ids), source(ids))


def test_static_rejects_bad_counts():
  with pytest.raises(ValueError, match="positive total"):
    sampling.StaticSamplingProbability([0, 0])


def test_streaming_golden_updates_with_repeats():
  est = sampling.StreamingFrequencyEstimator(8, learning_rate=0.5)
  # Step 1: item 3 three times, item 5 once. First sightings set the gap
  # B = t - A = 1 - 0 = 1 and the copies C to the count: C[3] = 3, C[5] = 1.
  est.update(tf.constant([3, 3, 3, 5]))
  # p = C / B: item 3 is expected 3 times per batch, item 5 once.
  np.testing.assert_allclose(est.expected_counts(tf.constant([3, 5])), [3, 1])
  # Step 2: item 5: B = .5 * 1 + .5 * (2 - 1) = 1, C = .5 * 1 + .5 * 1 = 1.
  est.update(tf.constant([5]))
  # Step 3: item 3: B = .5 * 1 + .5 * (3 - 1) = 1.5, C = .5 * 3 + .5 * 1 = 2.
  est.update(tf.constant([3]))
  # Item 7 never seen in 3 steps: at most one copy in 3 steps, p = 1/3.
  np.testing.assert_allclose(
    est.expected_counts(tf.constant([3, 5, 7])), [2 / 1.5, 1.0, 1 / 3]
  )
  assert int(est.step) == 3


def test_identity_hash_is_collision_free_when_buckets_cover_the_corpus():
  est = sampling.StreamingFrequencyEstimator(1000, num_hashes=3)
  buckets = est.buckets(tf.range(1000)).numpy()
  assert len(set(buckets[:, 0])) == 1000
  # Other hashes live in their own slice and spread differently.
  assert buckets[:, 1].min() >= 1000 and buckets[:, 2].min() >= 2000
  assert not np.array_equal(buckets[:, 1] - 1000, buckets[:, 2] - 2000)
  # With fewer buckets than items, the universal hashes still collide.
  small = sampling.StreamingFrequencyEstimator(16, num_hashes=2)
  assert len(set(small.buckets(tf.range(64)).numpy()[:, 1])) <= 16


N, BATCH = 20, 8
# Zipf(1) over 20 items; the expected count of item j in a batch of 8 iid
# draws is 8 q_j, which the estimator targets (mean copies per batch that
# contains j, over the mean gap between such batches). The head item
# (q = 0.28) is often drawn twice: its inclusion probability 1 - (1 - q)^8
# = 0.93 would be far below its expected count 2.2.
Q = 1.0 / np.arange(1, N + 1)
Q /= Q.sum()


def _expected(q):
  return BATCH * q


def _run(est, q, steps, seed):
  stream = np.random.default_rng(seed).choice(N, size=(steps, BATCH), p=q)
  stream = tf.constant(stream, tf.int32)

  @tf.function
  def loop():
    for i in tf.range(steps):
      est.update(stream[i])

  loop()


def _tvd(est, target):
  p = est.expected_counts(tf.range(N)).numpy()
  return 0.5 * np.abs(p / p.sum() - target / target.sum()).sum()


def test_streaming_converges_and_follows_a_shift():
  est = sampling.StreamingFrequencyEstimator(64, learning_rate=0.02)
  _run(est, Q, 3000, seed=1)
  # An EMA (rate a) of geometric gaps has relative std ~ sqrt(a / (2 - a))
  # ~ 0.1, i.e. a total variation distance of about 0.04 on this stream;
  # 0.08 leaves room for that noise, while a uniform guess is at 0.38.
  target = _expected(Q) / _expected(Q).sum()
  assert 0.5 * np.abs(1 / N - target).sum() > 0.25
  assert _tvd(est, _expected(Q)) < 0.08
  shifted = Q[::-1].copy()
  assert _tvd(est, _expected(shifted)) > 0.3  # before it sees the shift
  _run(est, shifted, 3000, seed=2)
  assert _tvd(est, _expected(shifted)) < 0.08


def test_streaming_and_static_agree_in_units_on_a_stationary_stream():
  # Both must estimate the expected count per batch, so that switching
  # --logq between them changes only the noise, not the correction. The
  # head item is the sharp case: expected count 8 * 0.278 = 2.22, while
  # its chance of being in a batch at all is only 0.93.
  est = sampling.StreamingFrequencyEstimator(64, learning_rate=0.02)
  _run(est, Q, 3000, seed=4)
  static = sampling.StaticSamplingProbability(Q * 1e6, batch_size=BATCH)
  streaming = est.expected_counts(tf.range(N)).numpy()
  fixed = static.expected_counts(tf.range(N)).numpy()
  np.testing.assert_allclose(fixed, BATCH * Q, rtol=1e-5)
  # The head item is seen in almost every batch, so its estimate is tight:
  # 10% is far from the 58% between 2.22 and 0.93. Across all items, the
  # same total variation bound as above (single items carry the EMA noise).
  np.testing.assert_allclose(streaming[0], fixed[0], rtol=0.1)
  assert _tvd(est, fixed) < 0.08


def test_multi_hash_beats_a_single_hash_under_collisions():
  # 20 items in 8 buckets: a rare item sharing a bucket with a head item
  # looks frequent. Taking the max gap over 4 hashes undoes most of that.
  single = sampling.StreamingFrequencyEstimator(8, 1, learning_rate=0.02)
  multi = sampling.StreamingFrequencyEstimator(8, 4, learning_rate=0.02)
  _run(single, Q, 3000, seed=3)
  _run(multi, Q, 3000, seed=3)
  target = _expected(Q)
  assert _tvd(multi, target) < 0.2
  assert _tvd(multi, target) < _tvd(single, target) - 0.05


def test_streaming_checkpoint_round_trip(tmp_path):
  est = sampling.StreamingFrequencyEstimator(32, 2, learning_rate=0.1)
  for batch in ([1, 2, 3], [2, 2], [5, 1]):
    est.update(tf.constant(batch))
  path = tf.train.Checkpoint(estimator=est).save(os.path.join(tmp_path, "ckpt"))
  clone = sampling.StreamingFrequencyEstimator.from_config(est.get_config())
  tf.train.Checkpoint(estimator=clone).restore(path).assert_consumed()
  ids = tf.range(8)
  np.testing.assert_array_equal(clone(ids), est(ids))
  assert int(clone.step) == 3
  # The restored estimator continues exactly like the original.
  for e in (est, clone):
    e.update(tf.constant([3, 4]))
  np.testing.assert_array_equal(clone(ids), est(ids))


_DISTRIBUTED = textwrap.dedent(
  """
  import tfr_ssl
  import numpy as np
  import tensorflow as tf
  from tfr_ssl.model import sampling

  cpu = tf.config.list_physical_devices("CPU")[0]
  tf.config.set_logical_device_configuration(
      cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
  strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
  with strategy.scope():
    est = sampling.StreamingFrequencyEstimator(16, 2, learning_rate=0.5)
  reference = sampling.StreamingFrequencyEstimator(16, 2, learning_rate=0.5)
  steps = [
      ([0, 1, 1], [2, 1, 3]), ([4, 4, 0], [0, 5, 6]), ([1, 2, 2], [7, 7, 7])]
  for first, second in steps:
    per_replica = strategy.experimental_distribute_values_from_function(
        lambda ctx: tf.constant([first, second][ctx.replica_id_in_sync_group]))
    strategy.run(tf.function(est.update), args=(per_replica,))
    reference.update(tf.constant(first + second))
  ids = tf.range(10)
  for replica in strategy.experimental_local_results(est.gap):
    np.testing.assert_array_equal(replica.numpy(), reference.gap.numpy())
  np.testing.assert_allclose(est.expected_counts(ids), reference(ids))
  for replica in strategy.experimental_local_results(est.step):
    assert replica.numpy() == 3, replica.numpy()
  print("OK")
  """
)


def test_streaming_update_under_mirrored_strategy():
  # One global step per strategy.run: ids of both replicas are gathered and
  # the same update is applied once, matching a single-device estimator fed
  # the concatenated batch. Subprocess: logical devices must be set before
  # TensorFlow initialises, and the parent process already did.
  env = dict(os.environ, PYTHONPATH=REPO, CUDA_VISIBLE_DEVICES="")
  result = subprocess.run(
    [sys.executable, "-c", _DISTRIBUTED],
    capture_output=True,
    text=True,
    env=env,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert "OK" in result.stdout
