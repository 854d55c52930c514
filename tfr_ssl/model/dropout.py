"""Dropout to the unknown embedding in the main task.

Which features of a training example the towers see as unknown (each
feature's learned unknown embedding, see `features.py`), so that the towers
learn to embed an item or a user without its id, and so that the unknown
embeddings, which new items, unseen values and unseen users read, are
trained:

  - `feature_dropout` (a DropoutNet-style baseline): any item feature;
  - `id_dropout`: the item's key features together (the id and key-like
    features), so the tower embeds an item by its content;
  - `value_dropout`: each content feature alone, on the item and on the
    query side;
  - `query_id_dropout`: the query's own id (the user id; in item-to-item,
    the query item's key features), so a user with no training
    interactions gets a trained embedding from the rest of the query.

Each draw is per row and feature, made for the global batch with a seed
that every replica shares and then sliced (`replicas.local_rows`), so a
cluster draws what one process draws. Random streams folded into the
step's seed: 2 (item features), 4 (item values), 5 (query); the model uses
1 for the SSL views and 3 for unigram negatives.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from tfr_ssl.config import ModelConfig
from tfr_ssl.model import replicas

_ITEM_STREAM, _VALUE_STREAM, _QUERY_STREAM = 2, 4, 5


def draws(batch_size, columns: int, seed: tf.Tensor, stream: int) -> tf.Tensor:
  """This replica's rows of `[global batch, columns]` uniform draws."""
  num_replicas, _ = replicas.replica()
  values = tf.random.stateless_uniform(
    [batch_size * num_replicas, columns],
    seed=tf.random.experimental.stateless_fold_in(seed, stream),
  )
  return replicas.local_rows(values, batch_size)


class MainTaskDropout:
  """The main task's masks of features replaced by their unknowns.

  Args:
    config: The model section (the four rates).
    item_features: The item encoder's feature names, in its order.
    item_keys: The item key features (the id and key-like features).
    query_features: The query encoder's feature names, in its order.
    query_keys: The query's own id features.

  Example:
    >>> dropout = MainTaskDropout(config.model, ["item_id", "genre"],
    ...                           ["item_id"], ["user_id"], ["user_id"])
    >>> mask = dropout.item_mask(batch_size, training=True, seed=seed)
    >>> item_tower(features, feature_mask=mask)  # [B, 2] bool, or None
  """

  def __init__(
    self,
    config: ModelConfig,
    item_features: Sequence[str],
    item_keys: Sequence[str],
    query_features: Sequence[str],
    query_keys: Sequence[str],
  ):
    self.config = config
    self._item_keys = np.array([n in item_keys for n in item_features])
    self._query_keys = np.array([n in query_keys for n in query_features])

  def item_mask(self, batch_size, training: bool, seed) -> tf.Tensor | None:
    """`[B, F]` item features of the positives to replace, or None."""
    m = self.config
    rates = (m.feature_dropout, m.id_dropout, m.value_dropout)
    if not training or max(rates) <= 0:
      return None
    columns = len(self._item_keys)
    # One extra column: the draw of the row's keys, dropped together.
    values = draws(batch_size, columns + 1, seed, _ITEM_STREAM)
    mask = values[:, :-1] < m.feature_dropout
    drop_keys = values[:, -1:] < m.id_dropout
    mask = tf.logical_or(mask, tf.logical_and(drop_keys, self._item_keys))
    if m.value_dropout > 0:
      # A stream of its own: the other draws stay what they were without it.
      values = draws(batch_size, columns, seed, _VALUE_STREAM)
      drop = tf.logical_and(values < m.value_dropout, ~self._item_keys)
      mask = tf.logical_or(mask, drop)
    return mask

  def query_mask(self, batch_size, training: bool, seed) -> tf.Tensor | None:
    """`[B, Fq]` query features to replace, or None."""
    m = self.config
    if not training or max(m.query_id_dropout, m.value_dropout) <= 0:
      return None
    columns = len(self._query_keys)
    values = draws(batch_size, columns + 1, seed, _QUERY_STREAM)
    drop_id = values[:, -1:] < m.query_id_dropout
    mask = tf.logical_and(drop_id, self._query_keys)
    drop = tf.logical_and(values[:, :-1] < m.value_dropout, ~self._query_keys)
    return tf.logical_or(mask, drop)
