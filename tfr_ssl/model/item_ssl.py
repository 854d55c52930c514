"""The SSL task of the item tower: views, projection head, contrastive loss.

Per step, a uniform sample of the corpus (`batch["ssl_item"]`) is augmented
twice (`augment.Augmenter`: masking and value dropout, the id in one view),
both views go through the SHARED item tower (the model makes that call,
together with the main positives), an optional projection head maps the
embeddings, and `ssl_task.ContrastiveTask` pulls each item's two views
together:

  views(batch, seed) -> features [2N, ...], masks [2N, F]
  item_tower(features, masks) -> z [2N, E]
  loss(z, item_ids) -> L_ssl

Under a strategy, views are drawn for the global batch (one process draws
the same) and each replica embeds its own rows; the loss meets every
replica's second views as negatives. Random stream 1 of the step's seed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras

from tfr_ssl.config import SSLConfig
from tfr_ssl.data import contract
from tfr_ssl.model import augment, replicas, ssl_task

_VIEW_STREAM = 1


class ItemSSL(tf_keras.layers.Layer):
  """Two augmented views of uniform items, and their contrastive loss.

  Args:
    config: The SSL section (masking, rates, key mode, head width,
      temperature).
    feature_names: The item encoder's features, in its order.
    multi_feature_names: Its multi-valued features.
    key_features: The item id and key-like features (one view only).
    dependence: `[F, F]` feature dependence for CFM (else None).
    **kwargs: Passed to `tf_keras.layers.Layer`.

  Example:
    >>> ssl = ItemSSL(config.ssl, names, multi, keys, dependence)
    >>> features, masks = ssl.views(batch["ssl_item"], seed)
    >>> loss = ssl.loss(item_tower(features, feature_mask=masks), ids)
  """

  def __init__(
    self,
    config: SSLConfig,
    feature_names: Sequence[str],
    multi_feature_names: Sequence[str],
    key_features: Sequence[str],
    dependence: np.ndarray | None,
    **kwargs: Any,
  ):
    super().__init__(**kwargs)
    self.feature_names = list(feature_names)
    self.augmenter = augment.Augmenter(
      self.feature_names,
      list(multi_feature_names),
      masking=config.masking,
      mask_rate=config.mask_rate,
      dropout_rate=config.dropout_rate,
      dependence=dependence,
      key_features=list(key_features),
      key_mode=config.key_mode,
    )
    self.head = None
    if config.projection_dim:
      # A projection head (SimCLR style): the SSL loss asks invariance of
      # the head's output, not of the retrieval embedding itself.
      self.head = tf_keras.Sequential(
        [
          tf_keras.layers.Dense(config.projection_dim, activation="relu"),
          tf_keras.layers.Dense(config.projection_dim),
        ],
        name="ssl_head",
      )
    self.contrastive = ssl_task.ContrastiveTask(
      config.temperature, name="ssl_task"
    )

  def views(
    self, batch: Mapping[str, tf.Tensor], seed: tf.Tensor
  ) -> tuple[dict[str, tf.Tensor], tf.Tensor]:
    """This replica's two views stacked `[2N, ...]`, and their `[2N, F]`
    masks (view 1's rows, then view 2's)."""
    rows = tf.shape(batch[self.feature_names[0]])[0]
    view_seed = tf.random.experimental.stateless_fold_in(seed, _VIEW_STREAM)
    views = self.augmenter(replicas.gather_structure(batch), view_seed)
    view1, mask1, view2, mask2 = tf.nest.map_structure(
      lambda x: replicas.local_rows(x, rows), views
    )
    stacked = {n: concat_rows(view1[n], view2[n]) for n in self.feature_names}
    return stacked, tf.concat([mask1, mask2], axis=0)

  def loss(
    self,
    z: tf.Tensor,
    item_ids: tf.Tensor | None = None,
    training: bool = False,
  ) -> tf.Tensor:
    """L_ssl of the stacked view embeddings `z` `[2N, E]` (updates the
    contrastive task's metrics); `item_ids` `[N]` drop same-item pairs from
    the denominators."""
    if self.head is not None:
      z = self.head(z, training=training)
    z1, z2 = tf.split(z, 2, axis=0)
    rows = tf.shape(z1)[0]
    # Every replica's view 2, this replica's first (see `distribute`).
    z2 = replicas.local_first(replicas.gather(z2), rows)
    if item_ids is not None:
      item_ids = tf.cast(item_ids, tf.int32)
      item_ids = replicas.local_first(replicas.gather(item_ids), rows)
    return self.contrastive(z1, z2, item_ids=item_ids)

  def build_head(self, embedding: tf.Tensor) -> None:
    """Creates the head's weights now (Keras builds layers on first call)."""
    if self.head is not None:
      self.head(embedding)


def concat_rows(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
  """Rows of `a` then `b`; multi-valued `[B, L]` ids padded to one width."""
  if a.shape.rank == 2:
    width = tf.maximum(tf.shape(a)[1], tf.shape(b)[1])

    def pad(x):
      extra = width - tf.shape(x)[1]
      return tf.pad(x, [[0, 0], [0, extra]], constant_values=contract.PAD)

    a, b = pad(a), pad(b)
  return tf.concat([a, b], axis=0)
