"""The self-supervised item task (Yao et al. 2021), a TFRS-style task.

Why: long-tail items get few labels, so the main task barely trains their
embeddings. The SSL task needs no labels: two augmented views of the same
item (different feature subsets masked, see `augment.py`) must map close
together through the shared item tower, and away from other items' views.
The items come from a stream sampled uniformly from the corpus, so tail
items get as much of this signal as head items.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf
import tensorflow_recommenders as tfrs
import tf_keras

from tfr_ssl import config as config_lib
from tfr_ssl.model import losses


@tf_keras.saving.register_keras_serializable(package="tfr_ssl")
class ContrastiveTask(tf_keras.layers.Layer, tfrs.tasks.base.Task):
  """Contrastive batch softmax between two views of the same items.

  With `z_i`, `z'_i` the two views' embeddings of item `i` (L2-normalised
  inside, so scores are cosines) and `tau` the temperature:

    L_ssl = -1/N sum_i log( exp(cos(z_i, z'_i) / tau)
                            / sum_j exp(cos(z_i, z'_j) / tau) )

  i.e. softmax cross-entropy of row `i` of the `[N, N]` logits with label
  `i` (when view 2 has more rows than view 1, the extra rows are more
  negatives). When `item_ids` are given, off-diagonal pairs of the same
  item (the uniform stream samples with replacement) are dropped from the
  denominators: they are not negatives.

  Metrics it owns: `<prefix>_loss` (running mean of the loss) and
  `<prefix>_accuracy` (share of rows whose own other view scores highest, i.e.
  top-1 view alignment within the batch).

  Args:
    temperature: `tau`.
    metric_prefix: Names the metrics (`ssl`; the user task's `user_ssl`).
    **kwargs: Passed to `tf_keras.layers.Layer`.

  Example:
    >>> task = ContrastiveTask(temperature=0.1)
    >>> loss = task(item_tower(view1), item_tower(view2))  # [N, E] each
  """

  def __init__(
    self, temperature: float = 0.1, metric_prefix: str = "ssl", **kwargs: Any
  ):
    super().__init__(**kwargs)
    config_lib.check_value("ssl.temperature", temperature)
    self.temperature = float(temperature)
    self.metric_prefix = metric_prefix
    self.loss_tracker = tf_keras.metrics.Mean(name=f"{metric_prefix}_loss")
    self.accuracy = tf_keras.metrics.Mean(name=f"{metric_prefix}_accuracy")

  def call(
    self,
    view1_embeddings: tf.Tensor,
    view2_embeddings: tf.Tensor,
    item_ids: tf.Tensor | None = None,
    sample_weight: tf.Tensor | None = None,
    compute_metrics: bool = True,
  ) -> tf.Tensor:
    """The mean contrastive loss (a scalar).

    Args:
      view1_embeddings: `[N, E]` embeddings of view 1.
      view2_embeddings: `[M, E]` embeddings of view 2, `M >= N`: the first
        `N` rows are the same items as view 1, in the same order; the
        others are more negatives (under a `tf.distribute` strategy, the
        other replicas' items).
      item_ids: Optional `[M]` item ids of the view-2 rows (accidental-hit
        removal).
      sample_weight: Optional `[N]` weights (None = 1).
      compute_metrics: Update `ssl_loss` and `ssl_accuracy`.
    """
    z1 = tf.math.l2_normalize(view1_embeddings, axis=-1)
    z2 = tf.math.l2_normalize(view2_embeddings, axis=-1)
    logits = tf.matmul(z1, z2, transpose_b=True) / self.temperature
    n, m = tf.shape(logits)[0], tf.shape(logits)[1]
    labels = tf.eye(n, m)
    if item_ids is not None:
      logits = losses.mask_accidental_hits(logits, item_ids)
    per_example = tf.nn.softmax_cross_entropy_with_logits(labels, logits)
    if compute_metrics:
      weights = tf.ones_like(per_example)
      if sample_weight is not None:
        weights = tf.cast(sample_weight, tf.float32)
      self.loss_tracker.update_state(tf.reduce_mean(per_example * weights))
      correct = tf.equal(
        tf.argmax(logits, axis=1, output_type=tf.int32), tf.range(n)
      )
      self.accuracy.update_state(tf.cast(correct, tf.float32))
    if sample_weight is not None:
      sample_weight = tf.cast(sample_weight, tf.float32)
    return tf.nn.compute_average_loss(per_example, sample_weight=sample_weight)

  def get_config(self) -> dict[str, Any]:
    config = super().get_config()
    config["temperature"] = self.temperature
    config["metric_prefix"] = self.metric_prefix
    return config
