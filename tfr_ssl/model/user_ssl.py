"""The SSL task of the query tower: two halves of one user's history.

The user-side twin of `item_ssl.py`. Per step, a uniform sample of the
users with at least two training interactions (`batch["ssl_user"]`,
uniform over users rather than by activity, for the reason the item stream
is uniform over items: the main task already sees active users most) is
turned into two views:

  * the user's latest training items (up to `2 N`) are split at random
    into two disjoint halves: the items are put in a random order and
    alternate between the views, so with two or more items each view has
    at least one, and neither half holds an item of the other;
  * each view keeps its items latest first, and reads the user's own
    features with the user id masked in both views (visible in both, the
    task would be solved by reading the id).

Both views go through the query tower, and `ssl_task.ContrastiveTask`
pulls a user's two views together and pushes other users' apart:
two sub-histories of one person should say the same thing about them.
The history's items are embedded by the shared item tables, so this task
trains them too. Random stream 6 of the step's seed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras

from tfr_ssl.config import SSLConfig
from tfr_ssl.data import contract
from tfr_ssl.model import dropout, replicas, ssl_task

_USER_STREAM = 6
HISTORY = "history"


class UserSSL(tf_keras.layers.Layer):
  """Two disjoint sub-histories of uniform users, and their contrastive loss.

  Args:
    config: The SSL section (temperature).
    feature_names: The query encoder's features, in its order.
    query_id: The user id feature (masked in both views).
    length: N, the history length each view is cut to.
    **kwargs: Passed to `tf_keras.layers.Layer`.

  Example:
    >>> task = UserSSL(config.ssl, ["user_id", "age"], "user_id", 20)
    >>> features, masks = task.views(batch["ssl_user"], seed)
    >>> loss = task.loss(query_tower(features, feature_mask=masks), users)
  """

  def __init__(
    self,
    config: SSLConfig,
    feature_names: Sequence[str],
    query_id: str,
    length: int,
    **kwargs: Any,
  ):
    super().__init__(**kwargs)
    self.feature_names = list(feature_names)
    self.length = int(length)
    self._id_mask = np.array([n == query_id for n in self.feature_names])
    self.contrastive = ssl_task.ContrastiveTask(
      config.temperature, metric_prefix="user_ssl", name="user_ssl_task"
    )

  def views(
    self, batch: Mapping[str, tf.Tensor], seed: tf.Tensor
  ) -> tuple[dict[str, tf.Tensor], tf.Tensor]:
    """Both views stacked `[2U, ...]` (view 1's rows, then view 2's), and
    their `[2U, F]` feature masks (the id)."""
    rows_history = tf.cast(batch[HISTORY], tf.int32)
    users = tf.shape(rows_history)[0]
    columns = rows_history.shape[1] or tf.shape(rows_history)[1]
    valid = rows_history > contract.PAD
    keys = dropout.draws(users, columns, seed, _USER_STREAM)
    # Random order among the items present (absent ones last), then
    # alternate: rank 0, 2, 4... to view 1, rank 1, 3, 5... to view 2.
    keys = tf.where(valid, keys, 2.0)
    rank = tf.argsort(tf.argsort(keys, axis=1), axis=1)
    first = valid & (rank % 2 == 0)
    second = valid & (rank % 2 == 1)
    histories = tf.concat(
      [self._compact(rows_history, first), self._compact(rows_history, second)],
      axis=0,
    )
    stacked = {
      n: tf.concat([batch[n], batch[n]], axis=0) for n in self.feature_names
    }
    stacked[HISTORY] = histories
    masks = tf.broadcast_to(
      tf.constant(self._id_mask)[tf.newaxis], [2 * users, len(self._id_mask)]
    )
    return stacked, masks

  def _compact(self, rows: tf.Tensor, keep: tf.Tensor) -> tf.Tensor:
    """The kept columns of each row first (their order kept), cut to N."""
    columns = tf.shape(rows)[1]
    position = tf.range(columns)[tf.newaxis]
    order = tf.argsort(tf.where(keep, position, columns + position), axis=1)
    kept = tf.where(keep, rows, contract.PAD)
    return tf.gather(kept, order, batch_dims=1)[:, : self.length]

  def loss(self, z: tf.Tensor, user_ids: tf.Tensor | None = None) -> tf.Tensor:
    """L_user_ssl of the stacked view embeddings `z` `[2U, E]`; `user_ids`
    `[U]` drop same-user pairs from the denominators."""
    z1, z2 = tf.split(z, 2, axis=0)
    rows = tf.shape(z1)[0]
    z2 = replicas.local_first(replicas.gather(z2), rows)
    if user_ids is not None:
      user_ids = tf.cast(user_ids, tf.int32)
      user_ids = replicas.local_first(replicas.gather(user_ids), rows)
    return self.contrastive(z1, z2, item_ids=user_ids)
