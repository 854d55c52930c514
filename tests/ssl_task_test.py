"""Tests of the contrastive SSL task."""

import numpy as np
import pytest
import tensorflow as tf

import tfr_ssl  # noqa: F401
from tfr_ssl.model import ssl_task

EYE = tf.constant([[1.0, 0.0], [0.0, 1.0]])


def test_identical_views_golden():
  # cos = I; tau = 1: row loss = -log(e / (e + 1)) = log(1 + e^-1) = 0.31326.
  task = ssl_task.ContrastiveTask(temperature=1.0)
  assert float(task(EYE, EYE)) == pytest.approx(0.31326, abs=1e-5)
  # tau = .5 doubles the logits: log(1 + e^-2) = 0.12693.
  task = ssl_task.ContrastiveTask(temperature=0.5)
  assert float(task(EYE, EYE)) == pytest.approx(0.12693, abs=1e-5)


def test_golden_loss_and_accuracy():
  task = ssl_task.ContrastiveTask(temperature=1.0)
  view2 = tf.constant([[0.6, 0.8], [0.0, 1.0]])
  # cos(z_i, z'_j) = [[.6, 0], [.8, 1]].
  # row 0: -log(e^.6 / (e^.6 + e^0)) = log(1 + e^-.6) = 0.43749
  # row 1: -log(e^1 / (e^.8 + e^1)) = log(1 + e^-.2) = 0.59814
  # mean 0.51781; both rows rank their own view first: accuracy 1.
  assert float(task(EYE, view2)) == pytest.approx(0.51781, abs=1e-5)
  assert float(task.accuracy.result()) == 1.0
  assert float(task.loss_tracker.result()) == pytest.approx(0.51781, abs=1e-5)
  # Swapped views: cos = [[0, .6], [1, .8]], each row prefers the other
  # item: accuracy 0, running mean over both calls 0.5.
  task(EYE, tf.constant([[0.0, 1.0], [0.6, 0.8]]))
  assert float(task.accuracy.result()) == 0.5


def test_scores_are_cosines():
  task = ssl_task.ContrastiveTask(temperature=1.0)
  scaled = task(3.0 * EYE, 0.5 * EYE)
  assert float(scaled) == pytest.approx(0.31326, abs=1e-5)


def test_same_item_twice_is_not_a_negative():
  task = ssl_task.ContrastiveTask(temperature=1.0)
  # Both rows are item 7: the off-diagonal pair is removed, leaving each
  # row's softmax over its positive alone: loss 0.
  loss = task(EYE, EYE, item_ids=tf.constant([7, 7]))
  assert float(loss) == pytest.approx(0.0, abs=1e-6)


def test_sample_weight_gives_a_weighted_mean_over_the_batch():
  task = ssl_task.ContrastiveTask(temperature=1.0)
  view2 = tf.constant([[0.6, 0.8], [0.0, 1.0]])
  # (1 * 0.43749 + 0 * 0.59814) / 2 rows.
  loss = task(EYE, view2, sample_weight=tf.constant([1.0, 0.0]))
  assert float(loss) == pytest.approx(0.43749 / 2, abs=1e-5)


def test_gradient_pulls_views_together():
  task = ssl_task.ContrastiveTask(temperature=0.5)
  z1 = tf.Variable([[1.0, 0.2], [0.1, 1.0]])
  z2 = tf.constant([[0.2, 1.0], [1.0, 0.0]])
  with tf.GradientTape() as tape:
    loss = task(z1, z2)
  z1.assign_sub(0.5 * tape.gradient(loss, z1))
  assert float(task(z1, z2)) < float(loss)


def test_get_config_round_trip():
  task = ssl_task.ContrastiveTask(temperature=0.07, name="ssl")
  clone = ssl_task.ContrastiveTask.from_config(task.get_config())
  assert clone.temperature == 0.07 and clone.name == "ssl"
  view2 = tf.constant([[0.6, 0.8], [0.0, 1.0]])
  np.testing.assert_allclose(clone(EYE, view2), task(EYE, view2))
