"""Cross-replica helpers of the model's losses under `tf.distribute`.

The global batch is split over the replicas, and a loss that compares rows
across the batch (in-batch negatives, the SSL task's second views, the
streaming estimator's counts) gathers what it compares from every replica
(`gather`), this replica's rows first (`local_first`), so N replicas with
global batch B train on the same softmax as one replica with batch B. Per-row
random draws are made for the global batch with a seed every replica shares
and sliced (`local_rows`), so a cluster draws what one process draws.

Outside a strategy with more than one replica every helper is a no-op, so
the model reads the same in both cases. The strategies themselves and the
workers' roles are training's (`training/distribute.py`).
"""

from __future__ import annotations

import tensorflow as tf


def replica() -> tuple[int, tf.Tensor | int]:
  """(replicas in sync, this replica's index) in the current context."""
  context = tf.distribute.get_replica_context()
  if context is None or context.num_replicas_in_sync == 1:
    return 1, 0
  return context.num_replicas_in_sync, context.replica_id_in_sync_group


def gather(value: tf.Tensor) -> tf.Tensor:
  """`value` of every replica, concatenated along axis 0 in replica order.

  Differentiable: each replica receives the gradient of every replica's
  loss with respect to its own rows. Identity with one replica.
  """
  replicas, _ = replica()
  if replicas == 1:
    return value
  context = tf.distribute.get_replica_context()
  devices = context.strategy.extended.worker_devices
  if not getattr(value, "device", "x") and len(devices) == 1:
    # MultiWorkerMirroredStrategy's collectives need the tensor's device,
    # which a tensor traced without a device scope does not carry.
    with tf.device(devices[0]):
      value = tf.identity(value)
  return context.all_gather(value, axis=0)


def local_first(gathered: tf.Tensor, rows: tf.Tensor | int) -> tf.Tensor:
  """Rotates a `gather`ed tensor so this replica's own rows come first.

  Losses that expect row `i` of the local batch to match candidate `i`
  (TFRS's in-batch softmax labels the diagonal) then work unchanged on the
  global candidates; their order otherwise does not matter to a softmax.
  """
  replicas, index = replica()
  if replicas == 1:
    return gathered
  return tf.roll(gathered, shift=-index * rows, axis=0)


def local_rows(value: tf.Tensor, rows: tf.Tensor | int) -> tf.Tensor:
  """This replica's `rows` rows of a tensor made for the global batch."""
  replicas, index = replica()
  if replicas == 1:
    return value
  return value[index * rows : (index + 1) * rows]


def gather_structure(values):
  """`gather` applied to every tensor of a nested structure."""
  return tf.nest.map_structure(gather, values)
