"""The main retrieval task: corrected in-batch softmax over the positives.

Given the batch's query and positive-item embeddings, the task

  1. gathers every replica's positives, this replica's first, so each
     query meets the whole global batch as negatives;
  2. adds optional mixed negatives from a corpus proposal
     (`sampling.MixedNegatives`), embedded by the same item tower;
  3. corrects each candidate's logit by `-log` of its expected copies in
     the candidate set (Yi et al. 2019; `sampling` estimates the
     probabilities, `losses.mixed_log_q` builds the correction);
  4. scores the loss (`losses.RetrievalLoss`: softmax with accidental-hit
     removal, or pointwise / pairwise), plus an optional spread-out
     regulariser on the positives.

Random stream 3 of the step's seed (unigram negatives).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras

from tfr_ssl.config import Config
from tfr_ssl.model import losses, replicas, sampling

_UNIGRAM_STREAM = 3


class RetrievalTask(tf_keras.layers.Layer):
  """The main task's loss of one batch, with its logQ state.

  Args:
    config: The run config (the model section, and `train.batch_size` for
      the static probabilities' scale).
    item_train_count: int `[num_items]`, training occurrences per corpus
      row (static logQ, unigram negatives).
    items: The item feature tables (unigram negatives gather from them).
    **kwargs: Passed to `tf_keras.layers.Layer`.

  Example:
    >>> task = RetrievalTask(config, counts, items)
    >>> loss = task.loss(query, positives, item_index, batch, training,
    ...                  seed, item_tower)
  """

  def __init__(
    self,
    config: Config,
    item_train_count: np.ndarray,
    items: Mapping[str, np.ndarray],
    **kwargs: Any,
  ):
    super().__init__(**kwargs)
    m = config.model
    self.config = m
    self.loss_layer = losses.RetrievalLoss(
      loss=m.loss,
      temperature=m.temperature,
      remove_accidental_hits=m.remove_accidental_hits,
      num_hard_negatives=m.hard_negatives,
      pairwise_loss=m.pairwise_loss,
      margin=m.margin,
      name="main_task",
    )
    self.sampling = sampling.make_sampling_source(
      m.logq,
      item_train_count,
      batch_size=config.train.batch_size,
      num_buckets=m.estimator_buckets,
      num_hashes=m.estimator_hashes,
      learning_rate=m.estimator_lr,
    )
    self.mixed_negatives = None
    if m.mixed_negatives:
      self.mixed_negatives = sampling.MixedNegatives(
        m.mixed_negatives,
        m.mixed_negative_sampling,
        item_train_count,
        beta=m.mixed_negative_beta,
        items=dict(items),
      )
    self.spread_out_tracker = tf_keras.metrics.Mean(name="spread_out_loss")

  def loss(
    self,
    query: tf.Tensor,
    items: tf.Tensor,
    item_index: tf.Tensor,
    inputs: Mapping[str, Any],
    training: bool,
    seed: tf.Tensor,
    item_tower: Callable[..., tf.Tensor],
  ) -> tf.Tensor:
    """The main loss of one batch.

    Args:
      query: `[B, E]` query embeddings.
      items: `[B, E]` embeddings of the positives.
      item_index: `[B]` corpus rows of the positives.
      inputs: The batch (`weight`; `ssl_item` for uniform mixed negatives).
      training: Updates the streaming estimator when true.
      seed: The step's seed.
      item_tower: Embeds the mixed negatives' features.
    """
    rows = tf.shape(item_index)[0]
    local_index = item_index
    items = replicas.local_first(replicas.gather(items), rows)
    item_index = replicas.local_first(replicas.gather(item_index), rows)
    candidates, candidate_ids = items, item_index
    extra = None
    if self.mixed_negatives is not None:
      extra = self.mixed_negatives.draw(
        inputs,
        training,
        tf.random.experimental.stateless_fold_in(seed, _UNIGRAM_STREAM),
      )
    if extra is not None:
      extra_features, extra_ids = extra
      extra_items = item_tower(extra_features, training=training)
      candidates = tf.concat([items, extra_items], axis=0)
      candidate_ids = tf.concat([item_index, extra_ids], axis=0)
    loss = self.loss_layer(
      query,
      candidates,
      candidate_ids=candidate_ids,
      log_q=self._log_q(local_index, candidate_ids, extra, training),
      sample_weight=inputs.get("weight"),
    )
    return loss + self._spread_out(items, item_index)

  def _log_q(self, local_index, candidate_ids, extra, training):
    """The `log` expected copies of each candidate, or None (no logQ)."""
    if self.sampling is None:
      return None
    if training:
      self.sampling.update(local_index)  # it gathers every replica's
    # Per global batch: the candidates are the global batch.
    expected = self.sampling.expected_counts(candidate_ids)
    if extra is None:
      return losses.mixed_log_q(expected)
    # The proposal probability of each candidate's ITEM, whichever stream
    # the candidate came from (see losses.py).
    q = self.mixed_negatives.probability(candidate_ids)
    return losses.mixed_log_q(expected, q, self.config.mixed_negatives)

  def _spread_out(self, items, item_index) -> tf.Tensor:
    weight = self.config.spread_out_weight
    if weight <= 0:
      return tf.constant(0.0)
    spread = losses.spread_out_loss(items, item_index)
    self.spread_out_tracker.update_state(spread)
    # A global quantity computed by every replica, whose gradients the
    # optimizer sums: each replica adds its share.
    num_replicas, _ = replicas.replica()
    return weight * spread / num_replicas
