"""The user's history in the query tower, read through the item tables.

A `HistoryEncoder` embeds a batch of histories (`[B, N]` corpus rows,
latest first, PAD-padded; `data/history.py` decides which items may be in
one) into one vector per user:

  1. each history item is embedded as the item encoder embeds it (the
     item tower's tables and unknown embeddings, shared variables: what
     the item-side SSL task teaches the item tables reaches the query
     side, and a history item with no training interactions reads the
     id's unknown embedding, the items' cold rule);
  2. the items are pooled: `mean` over the items present, or `recency`, a
     learned weight per position (position 0 is the latest item) passed
     through a softmax over the positions present. The item encoder sums
     per user (`FeatureEncoder.pool`): each distinct value of a feature is
     looked up once per batch, never one row per history slot;
  3. a history with no item reads a learned `empty` vector: "nothing
     known" has one representation, as every unknown value has.

The corpus's item feature table is a constant of the layer (it maps a
row to its features); the exported query tower carries it, so a request
names history items by id.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import tensorflow as tf
import tf_keras

from tfr_ssl.data import contract
from tfr_ssl.model import features

POOLINGS = ("mean", "recency")
HISTORY = "history"


class HistoryEncoder(tf_keras.layers.Layer):
  """`[B, N]` history rows -> `[B, F * D]` pooled item-feature embeddings.

  Args:
    item_encoder: The item tower's `FeatureEncoder` (shared, not copied).
    item_table: item feature name -> int32 `[num_items]` or
      `[num_items, L]` ids of every corpus row.
    length: N, the history columns the layer reads.
    pooling: `mean` or `recency`.

  Example:
    >>> encoder = HistoryEncoder(item_encoder, prepared.items, 20, "mean")
    >>> encoder(tf.constant([[3, 7, -1]]))  # [1, F * D]
  """

  def __init__(
    self,
    item_encoder: features.FeatureEncoder,
    item_table: Mapping[str, np.ndarray],
    length: int,
    pooling: str = "mean",
    **kwargs,
  ):
    super().__init__(**kwargs)
    if pooling not in POOLINGS:
      raise ValueError(f"pooling must be one of {list(POOLINGS)}: {pooling!r}")
    if length < 1:
      raise ValueError(f"history length must be >= 1, got {length}.")
    self.item_encoder = item_encoder
    self.length = int(length)
    self.pooling = pooling
    self._table = {
      name: tf.constant(np.asarray(item_table[name], np.int32))
      for name in item_encoder.feature_names
    }
    self.empty = self.add_weight(
      name="empty_history",
      shape=(item_encoder.output_dim,),
      initializer=tf_keras.initializers.TruncatedNormal(
        stddev=item_encoder.embedding_dim**-0.5
      ),
    )
    self.recency_logits = (
      self.add_weight(
        name="recency_logits", shape=(self.length,), initializer="zeros"
      )
      if pooling == "recency"
      else None
    )

  @property
  def output_dim(self) -> int:
    return self.item_encoder.output_dim

  def call(self, rows: tf.Tensor) -> tf.Tensor:
    """Pooled history embeddings `[B, F * D]` of history rows `[B, N']`
    (columns past N are ignored; fewer are fine)."""
    rows = tf.cast(rows, tf.int32)[:, : self.length]
    valid = rows > contract.PAD
    columns = tf.shape(rows)[1]
    # The slots that hold an item, in row-major order, and each distinct
    # item once (histories of one batch overlap a lot): only the items
    # present are looked up, so padding sends the tables no gradient row.
    slots = tf.cast(tf.where(tf.reshape(valid, [-1]))[:, 0], tf.int32)
    distinct, where = tf.unique(tf.gather(tf.reshape(rows, [-1]), slots))
    item_features = {
      name: tf.gather(table, distinct) for name, table in self._table.items()
    }
    segments = slots // columns  # each slot's batch row, sorted
    count = tf.reduce_sum(tf.cast(valid, tf.float32), axis=1, keepdims=True)
    weights = None
    if self.recency_logits is not None:
      logits = self.recency_logits[:columns]
      weights = (
        tf.cast(valid, tf.float32)
        * tf.exp(logits - tf.reduce_max(logits))[tf.newaxis]
      )
      weights /= tf.maximum(tf.reduce_sum(weights, 1, keepdims=True), 1e-12)
      weights = tf.gather(tf.reshape(weights, [-1]), slots)
    # Pooling never materialises every slot's embedding ([B, N, F * D],
    # N times the pooled output): the item encoder sums per batch row.
    pooled = self.item_encoder.pool(
      item_features, where, segments, tf.shape(rows)[0], weights
    )
    if weights is None:
      pooled /= tf.maximum(count, 1.0)
    return features.choose(count[:, 0] == 0, self.empty[tf.newaxis], pooled)
