"""tf.data streams of a prepared dataset: batch integer rows, then gather.

Feature tables (items, queries) and the split's row arrays live in memory as
tensors; a stream only carries batches of integer row numbers, and one map
per batch gathers every feature with `tf.gather`. Shuffling permutes whole
epochs at once (`stateless_shuffle` of the row vector) and `rebatch` cuts
them into batches, so no per-element work happens anywhere: about 1M
interactions/s on one core, versus tens of thousands for per-example
pipelines.

Each pass over a dataset draws a fresh epoch permutation
(`Dataset.random(..., rerandomize_each_iteration=True)`), yet a given seed
gives the same sequence of permutations in every program run.

Batch format (see docs/architecture.md, "Data flow"):
  query: feature name -> int32 [B] or [B, L]; in `item_to_item` mode the item
    features of the interaction's previous item. With a history length N
    (user-to-item), also `history`: int32 [B, N], corpus rows of the
    user's latest items before the example, latest first, PAD-padded
    (`history.py` says which items may be there).
  item: item feature name -> int32 [B] or [B, L].
  item_index: int32 [B], corpus row of the positive item.
  weight: float32 [B].
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from tfr_ssl import config as config_lib
from tfr_ssl.data import history, query_side
from tfr_ssl.data.contract import PAD, SPLITS, PreparedDataset

TASKS = query_side.TASKS


def _tensors(table: dict[str, np.ndarray], names) -> dict[str, tf.Tensor]:
  # Converted eagerly, so map functions capture them as inputs rather than
  # embedding large constants in the graph.
  return {name: tf.convert_to_tensor(table[name]) for name in names}


def _gather(tables: dict[str, tf.Tensor], rows: tf.Tensor) -> dict:
  return {name: tf.gather(table, rows) for name, table in tables.items()}


def _row_batches(
  rows: np.ndarray,
  batch_size: int,
  *,
  shuffle: bool,
  repeat: bool,
  seed: int,
  drop_remainder: bool,
  salt: int,
) -> tf.data.Dataset:
  """Batches of `rows` (int32 [B]), epoch by epoch."""
  if batch_size < 1:
    raise ValueError(f"batch_size must be positive, got {batch_size}.")
  if rows.shape[0] == 0:
    raise ValueError("Cannot stream an empty set of rows.")
  rows = tf.convert_to_tensor(rows.astype(np.int32))
  if shuffle:
    epochs = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
    if not repeat:
      epochs = epochs.take(1)
    salt_tensor = tf.constant(salt, tf.int64)

    def permute(epoch_seed):
      return tf.random.experimental.stateless_shuffle(
        rows, seed=tf.stack([epoch_seed, salt_tensor])
      )

    epochs = epochs.map(permute)
  else:
    epochs = tf.data.Dataset.from_tensors(rows)
    if repeat:
      epochs = epochs.repeat()
  return epochs.rebatch(batch_size, drop_remainder=drop_remainder)


def _main_parts(
  prepared: PreparedDataset,
  split: str,
  batch_size: int,
  *,
  task: str,
  shuffle: bool,
  repeat: bool,
  seed: int,
  drop_remainder: bool,
  history_length: int = 0,
  history_mode: str = "before",
):
  """(row batches, function gathering a batch of rows) of the main stream."""
  if split not in SPLITS:
    raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}.")
  side = query_side.query_side(task)
  data = prepared.splits[split]
  schema = prepared.schema
  item_tables = _tensors(prepared.items, [f.name for f in schema.item_features])
  rows = side.usable(data)
  if rows.shape[0] == 0:
    raise ValueError(f"Split {split!r} has no interaction with a {task} query.")
  query_rows = tf.convert_to_tensor(side.query_of(data).astype(np.int32))
  query_tables = (
    item_tables
    if side.is_item
    else _tensors(prepared.queries, [f.name for f in side.features(schema)])
  )
  item_rows = tf.convert_to_tensor(data.item_index.astype(np.int32))
  weights = tf.convert_to_tensor(data.weight.astype(np.float32))
  histories = (
    _history_gather(prepared, split, history_length, history_mode)
    if history_length and not side.is_item
    else None
  )

  def gather(batch_rows):
    items = tf.gather(item_rows, batch_rows)
    query = _gather(query_tables, tf.gather(query_rows, batch_rows))
    if histories is not None:
      query["history"] = histories(
        batch_rows, tf.gather(query_rows, batch_rows)
      )
    return {
      "query": query,
      "item": _gather(item_tables, items),
      "item_index": items,
      "weight": tf.gather(weights, batch_rows),
    }

  batches = _row_batches(
    rows,
    batch_size,
    shuffle=shuffle,
    repeat=repeat,
    seed=seed,
    drop_remainder=drop_remainder,
    salt=0,
  )
  return batches, gather


def _history_gather(
  prepared: PreparedDataset, split: str, length: int, mode: str
):
  """The function (split rows, query rows) -> int32 [B, length] histories.

  Training rows read training items by `mode` (`history.TrainingHistories`:
  position vectors and the ordered items, no [rows, N] matrix): `before`,
  the items before them, or `others`, the user's latest items but the
  row's own; validation and test rows read their user's history at
  evaluation time (`history.evaluation_histories`).
  """
  if split == "train":
    train = history.training_histories(prepared)
    items = tf.convert_to_tensor(train.items)
    position = tf.convert_to_tensor(train.position)
    start = tf.convert_to_tensor(train.start)
    end = tf.convert_to_tensor(train.end)
    if mode == history.BEFORE:
      offsets = tf.range(1, length + 1, dtype=tf.int32)

      def gather(rows, _):
        at = tf.gather(position, rows)[:, tf.newaxis] - offsets[tf.newaxis]
        valid = at >= tf.gather(start, rows)[:, tf.newaxis]
        return tf.where(valid, tf.gather(items, tf.maximum(at, 0)), PAD)

      return gather
    # `others`: the latest N + 1 positions, the row's own dropped, the
    # rest moved to the front (their order kept) and cut to N.
    offsets = tf.range(1, length + 2, dtype=tf.int32)
    columns = tf.range(length + 1, dtype=tf.int32)

    def gather_others(rows, _):
      at = tf.gather(end, rows)[:, tf.newaxis] - offsets[tf.newaxis]
      own = tf.gather(position, rows)[:, tf.newaxis]
      valid = (at >= tf.gather(start, rows)[:, tf.newaxis]) & (at != own)
      order = tf.argsort(
        tf.where(valid, columns, length + 1 + columns), axis=1, stable=True
      )
      found = tf.where(valid, tf.gather(items, tf.maximum(at, 0)), PAD)
      return tf.gather(found, order, batch_dims=1)[:, :length]

    return gather_others
  matrix = tf.convert_to_tensor(
    history.evaluation_histories(prepared, split, length)
  )
  return lambda _, query_rows: tf.gather(matrix, query_rows)


def user_histories(prepared: PreparedDataset, length: int) -> np.ndarray:
  """int32 [Q, length]: each user's latest training items, latest first:
  what the user-side SSL task splits into two views."""
  return history.latest_items(history.sequences(prepared, ("train",)), length)


def main_dataset(
  prepared: PreparedDataset,
  split: str,
  batch_size: int,
  *,
  task: str = "user_to_item",
  shuffle: bool = True,
  repeat: bool = False,
  seed: int = 0,
  drop_remainder: bool = True,
  history_length: int = 0,
  history_mode: str = "before",
) -> tf.data.Dataset:
  """Interactions of one split with their gathered features.

  Args:
    prepared: The prepared dataset.
    split: `train`, `validation` or `test`.
    batch_size: Interactions per batch.
    task: `user_to_item` (query = query features) or `item_to_item` (query =
      item features of the previous item; rows without one are skipped).
    shuffle: Permute the rows every epoch.
    repeat: Stream epochs forever (batches then span epoch boundaries).
    seed: Seed of the permutations.
    drop_remainder: Drop a last partial batch (gives static batch shapes).
    history_length: User-to-item: add `query["history"]` of this length.
    history_mode: How training rows' histories are drawn: `before` or
      `others` (`history.py`).

  Returns:
    A dataset of {"query", "item", "item_index", "weight"}.

  Example:
    >>> ds = main_dataset(prepared, "train", 1024)
    >>> batch = next(iter(ds))  # batch["item"]["genres"]: int32 [1024, L]
  """
  batches, gather = _main_parts(
    prepared,
    split,
    batch_size,
    task=task,
    shuffle=shuffle,
    repeat=repeat,
    seed=seed,
    drop_remainder=drop_remainder,
    history_length=history_length,
    history_mode=history_mode,
  )
  return batches.map(gather, num_parallel_calls=tf.data.AUTOTUNE)


def _item_parts(
  prepared: PreparedDataset, batch_size: int, *, uniform: bool, seed: int
):
  """(row batches, gather function) of the uniform stream or the corpus."""
  names = [f.name for f in prepared.schema.item_features]
  item_tables = _tensors(prepared.items, names)

  def gather(rows):
    return {"item": _gather(item_tables, rows), "item_index": rows}

  batches = _row_batches(
    np.arange(prepared.num_items),
    batch_size,
    shuffle=uniform,
    repeat=uniform,
    seed=seed,
    drop_remainder=uniform,
    salt=1,
  )
  return batches, gather


def item_dataset(
  prepared: PreparedDataset, batch_size: int, *, seed: int = 0
) -> tf.data.Dataset:
  """A uniform sample of items: the corpus shuffled and repeated forever.

  Each epoch is a fresh permutation of the corpus, so over any whole number
  of epochs every item appears equally often (batches span epochs).

  Returns:
    An infinite dataset of {"item", "item_index"} with batch `batch_size`.
  """
  batches, gather = _item_parts(prepared, batch_size, uniform=True, seed=seed)
  return batches.map(gather, num_parallel_calls=tf.data.AUTOTUNE)


def corpus_dataset(
  prepared: PreparedDataset, batch_size: int
) -> tf.data.Dataset:
  """Every item once, in corpus order (the last batch may be smaller).

  Returns:
    A dataset of {"item", "item_index"}.
  """
  batches, gather = _item_parts(prepared, batch_size, uniform=False, seed=0)
  return batches.map(gather, num_parallel_calls=tf.data.AUTOTUNE)


def train_dataset(
  prepared: PreparedDataset,
  *,
  batch_size: int,
  ssl_batch_size: int,
  task: str = "user_to_item",
  seed: int = 0,
  repeat: bool = False,
  shard: Shard | None = None,
  start_step: int = 0,
  history_length: int = 0,
  history_mode: str = "before",
  user_ssl: bool = False,
) -> tf.data.Dataset:
  """The training stream: main batches zipped with uniform item batches.

  Args:
    prepared: The prepared dataset.
    batch_size: Interactions per main batch (`train.batch_size`).
    ssl_batch_size: Items per batch of the uniform item stream
      (`ssl.batch_size`).
    task: `user_to_item` or `item_to_item` (`model.task`).
    seed: Seed of both shuffles (`train.seed`).
    repeat: Stream training epochs forever; otherwise one epoch per pass
      over the dataset (reshuffled on every pass).
    shard: Under a `tf.distribute` strategy, this process's replicas (see
      `Shard`): the stream then yields, for each global step, one batch per
      local replica (of `batch_size / replicas` interactions and
      `ssl_batch_size / replicas` items), consecutively.
    start_step: Skip the first `start_step` global steps (resuming). Only
      row numbers are skipped, so this is cheap.
    history_length: User-to-item: each query also carries `history`, the
      user's training items before the example (`history_mode="before"`)
      or the user's latest other training items (`"others"`; `history.py`).
    history_mode: `before` or `others`.
    user_ssl: Add `ssl_user`, a uniform sample (`ssl_batch_size` per step)
      of the users with at least two training interactions: their query
      features and `history`, their latest `2 * history_length` training
      items, for the user-side SSL task to split into two views.

  Returns:
    A prefetched dataset of {"query", "item", "item_index", "weight",
    "ssl_item", "ssl_item_index"} (and "ssl_user").
  """
  main_rows, main_gather = _main_parts(
    prepared,
    "train",
    batch_size,
    task=task,
    shuffle=True,
    repeat=repeat,
    seed=seed,
    drop_remainder=True,
    history_length=history_length,
    history_mode=history_mode,
  )
  item_rows, item_gather = _item_parts(
    prepared, ssl_batch_size, uniform=True, seed=seed
  )
  streams = [main_rows, item_rows]
  user_gather = None
  if user_ssl:
    user_rows, user_gather = _user_parts(
      prepared, ssl_batch_size, 2 * history_length, seed
    )
    streams.append(user_rows)

  # Zip the integer streams first, then gather everything in one map.
  def gather(rows, ssl_rows, *user_rows):
    ssl = item_gather(ssl_rows)
    out = {
      **main_gather(rows),
      "ssl_item": ssl["item"],
      "ssl_item_index": ssl["item_index"],
    }
    if user_gather is not None:
      out["ssl_user"] = user_gather(user_rows[0])
      out["ssl_user_index"] = user_rows[0]
    return out

  rows = tf.data.Dataset.zip(tuple(streams))
  if start_step:
    rows = rows.skip(start_step)
  if shard is not None:
    rows = rows.flat_map(shard.split(batch_size, ssl_batch_size))
  return rows.map(gather, num_parallel_calls=tf.data.AUTOTUNE).prefetch(
    tf.data.AUTOTUNE
  )


def _user_parts(prepared: PreparedDataset, batch_size: int, length, seed):
  """(row batches, gather) of the uniform user stream of the user SSL task."""
  names = [f.name for f in prepared.schema.query_features]
  tables = _tensors(prepared.queries, names)
  latest = user_histories(prepared, length)
  users = np.flatnonzero((latest != PAD).sum(axis=1) >= 2)
  if users.shape[0] == 0:
    raise ValueError(
      "The user SSL task needs users with at least two training "
      "interactions; this training split has none."
    )
  histories = tf.convert_to_tensor(latest)

  def gather(rows):
    return {**_gather(tables, rows), "history": tf.gather(histories, rows)}

  batches = _row_batches(
    users,
    batch_size,
    shuffle=True,
    repeat=True,
    seed=seed,
    drop_remainder=True,
    salt=2,
  )
  return batches, gather


@dataclasses.dataclass(frozen=True)
class Shard:
  """The replicas of one process under a `tf.distribute` strategy.

  Sharding is by data: every process draws the same seeded sequence of
  global batches of row numbers (cheap: integers only), keeps the slices
  of its own replicas and gathers features for those rows alone. Replica
  `r` gets rows `[r * B / R, (r + 1) * B / R)` of each global batch of `B`,
  so the replicas' batches, concatenated in replica order, are the batch
  one process would train on.

  Attributes:
    replicas: Replicas in sync over all processes (R).
    first: Global index of this process's first replica.
    local: Replicas of this process.
  """

  replicas: int
  first: int
  local: int

  def __post_init__(self):
    if not (
      self.first >= 0
      and self.local >= 1
      and self.first + self.local <= self.replicas
    ):
      raise ValueError(f"Inconsistent shard {self}.")

  def check(self, name: str, batch_size: int) -> None:
    """ValueError unless `batch_size` splits evenly over the replicas."""
    config_lib.check_batch_split(name, batch_size, self.replicas)

  def split(self, batch_size: int, ssl_batch_size: int):
    """The `flat_map` function: global row batches -> local replica ones."""
    self.check("train.batch_size", batch_size)
    self.check("ssl.batch_size", ssl_batch_size)
    start, stop = self.first, self.first + self.local

    def local_batches(rows, ssl_rows, *user_rows):
      parts = (rows, ssl_rows, *user_rows)
      return tf.data.Dataset.from_tensor_slices(
        tuple(tf.reshape(p, [self.replicas, -1])[start:stop] for p in parts)
      )

    return local_batches
