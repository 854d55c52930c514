"""How often an item is sampled into a training batch: static or streaming.

The sampling-bias correction (Yi et al. 2019) subtracts `log p_j` from the
logit of every candidate `j`, where `p_j` is the probability that one draw
of a training batch is item `j`. Two sources share one interface:

  counts = source.expected_counts(item_index)  # float32 [n], B p_j
  source.update(item_index)                    # once per training step

Both report the same per-batch quantity `B p_j`, the expected number of
copies of the item in one global training batch of `B` draws (above 1 for
a head item: a count, not a probability), so they are interchangeable and
can be added to the expected count of extra sampled negatives (see
`losses.py`):

  - `StaticSamplingProbability`: `B p_j = batch_size * count_j / total`,
    the expected occurrences of `j` in a batch of iid draws from the
    training interactions.
  - `StreamingFrequencyEstimator`: Yi et al.'s hashed estimator of the mean
    gap (in steps) between batches that contain `j`, times the mean number
    of copies of `j` in such a batch. It needs no counts up front and
    tracks drift.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras

from tfr_ssl import config as config_lib
from tfr_ssl.model import replicas

# Mersenne prime 2^31 - 1: products of a hash multiplier (< 2^31) with an item
# row (< 2^31) stay below 2^62 and fit int64.
_PRIME = (1 << 31) - 1


class SamplingProbability(tf_keras.layers.Layer):
  """Interface: expected copies of items per batch (see module doc).

  `call(item_index)` is `expected_counts(item_index)`.
  """

  def expected_counts(self, item_index: tf.Tensor) -> tf.Tensor:
    """float32 expected copies per global batch, same shape as the input."""
    raise NotImplementedError

  def update(self, item_index: tf.Tensor) -> None:
    """Records one training batch's positive items (no-op if static)."""
    del item_index

  def call(self, item_index: tf.Tensor) -> tf.Tensor:
    return self.expected_counts(item_index)


@tf_keras.saving.register_keras_serializable(package="tfr_ssl")
class StaticSamplingProbability(SamplingProbability):
  """Expected copies of items per batch, from training frequencies.

  `B p_j = batch_size * max(count_j, min_count) / sum_k count_k`: the expected
  number of times item `j` is drawn into a batch of `batch_size` iid draws
  from the training interactions. The floor `min_count` keeps items unseen
  in training finite (they never occur as in-batch candidates, but they can
  be drawn as extra negatives).

  The counts are a non-trainable weight, so they are saved with the model
  and `from_config` + `set_weights` restores the layer.

  Args:
    item_count: int/float `[N]` training occurrences per corpus row.
    batch_size: Global training batch size.
    min_count: Floor applied to each count.
    num_items: `N`; only needed when `item_count` is omitted (from_config).
    **kwargs: Passed to `tf_keras.layers.Layer`.

  Example:
    >>> source = StaticSamplingProbability([3, 1, 0], batch_size=2)
    >>> source.expected_counts(tf.constant([0, 2]))  # 2*3/4, 2*1/4 (floor)
    <tf.Tensor: ... numpy=array([1.5, 0.5], dtype=float32)>
  """

  def __init__(
    self,
    item_count: np.ndarray | None = None,
    batch_size: int = 1,
    min_count: float = 1.0,
    num_items: int | None = None,
    **kwargs: Any,
  ):
    super().__init__(**kwargs)
    if item_count is None and num_items is None:
      raise ValueError("Pass item_count (or num_items, for from_config).")
    counts = None
    if item_count is not None:
      counts = np.asarray(item_count, np.float64).reshape(-1)
      if counts.size == 0 or np.any(counts < 0) or counts.sum() <= 0:
        raise ValueError(
          "item_count must be non-negative with a positive total."
        )
    self.num_items = int(counts.size if counts is not None else num_items)
    if batch_size < 1 or min_count <= 0:
      raise ValueError(
        f"Need batch_size >= 1 and min_count > 0, got {batch_size}, "
        f"{min_count}."
      )
    self.batch_size = int(batch_size)
    self.min_count = float(min_count)
    self.counts = self.add_weight(
      name="item_count",
      shape=(self.num_items,),
      initializer=(
        tf_keras.initializers.Constant(counts.astype(np.float32))
        if counts is not None
        else "zeros"
      ),
      trainable=False,
    )

  def expected_counts(self, item_index: tf.Tensor) -> tf.Tensor:
    total = tf.reduce_sum(self.counts)
    counts = tf.maximum(tf.gather(self.counts, item_index), self.min_count)
    return self.batch_size * counts / total

  def get_config(self) -> dict[str, Any]:
    config = super().get_config()
    config.update(
      {
        "num_items": self.num_items,
        "batch_size": self.batch_size,
        "min_count": self.min_count,
      }
    )
    return config


def hash_parameters(num_hashes: int, seed: int = 0) -> np.ndarray:
  """Multipliers and offsets `[num_hashes, 2]` of the bucket hashes.

  Hash 0 is the identity (`a=1, b=0`): `h_0(y) = y mod buckets` is collision
  free whenever `buckets >= N` (item rows are `0..N-1`). Hashes 1.. are
  universal hashes `((a y + b) mod P) mod buckets` with `a, b` drawn from a
  fixed-seed generator, so different hash functions collide on different
  pairs (the point of Algorithm 3).
  """
  rng = np.random.default_rng(seed)
  params = np.zeros([num_hashes, 2], np.int64)
  params[0] = (1, 0)
  if num_hashes > 1:
    params[1:, 0] = rng.integers(1, _PRIME, size=num_hashes - 1)
    params[1:, 1] = rng.integers(0, _PRIME, size=num_hashes - 1)
  return params


@tf_keras.saving.register_keras_serializable(package="tfr_ssl")
class StreamingFrequencyEstimator(SamplingProbability):
  """Streaming expected copies per batch (Yi et al. 2019, Alg. 2 and 3).

  For each of `m` hash functions `h_i` it keeps arrays `A_i` (the step at
  which bucket `h_i(y)` was last seen), `B_i` (the estimated gap, in steps,
  between batches that contain the bucket) and `C_i` (the estimated number
  of copies of the bucket in a batch that contains it). At training step
  `t` (1, 2, ...), for every distinct bucket `b` hit by the batch `k_b`
  times:

    B_i[b] <- (1 - a) B_i[b] + a (t - A_i[b]);   A_i[b] <- t
    C_i[b] <- (1 - a) C_i[b] + a k_b

  and `p(y) = min_i C_i[h_i(y)] / B_i[h_i(y)]`: the expected number of
  copies of `y` per batch. With every `k_b = 1` this is `1 / B`, Algorithm 2
  (and with the min, whose bucket has the largest gap, Algorithm 3): a
  collision only makes a bucket look more frequent, so the smallest
  estimate over hashes is the least collided one.

  Decisions (documented because the paper leaves them open):
    - Units: `p` is the expected count of `y` in a batch, the unit of
      `StaticSamplingProbability` and the one the correction needs: the
      retrieval loss removes only copies of the positive, so a head item
      sampled twice stays twice among the negatives, and the log of its
      expected count is what un-biases the softmax normaliser. The chance
      `P(y in batch)` that `1 / B` alone estimates saturates at 1 and would
      under-correct exactly the head items the method targets.
    - Repeats: a bucket hit several times in a batch updates its gap once
      (a gap in steps) and records the number of copies in `C`.
    - First sighting: `B` starts at 0 meaning "never seen"; the first
      sighting sets `B = t - A = t` (the elapsed gap) instead of averaging
      in from 0, which would overstate `p` by a factor `1 / a` early on.
    - Never seen: an unseen bucket's gap is at least the steps elapsed, so
      it reports `p = 1 / max(t, 1)` (one copy per that many steps).
    - Order: the model calls `update` before `expected_counts` in a step, so
      an item's first batch already has a finite estimate.
    - Distribution: under a `tf.distribute` strategy, `update` all-gathers
      the ids of every replica, so a step is one global batch and every
      replica computes the same update; variables use aggregation
      `ONLY_FIRST_REPLICA`, so the (identical) update is applied once.

  Args:
    num_buckets: Buckets per hash function (`H`).
    num_hashes: Hash functions (`m`); 1 = Algorithm 2.
    learning_rate: `a`, the moving-average rate.
    hash_seed: Seed of the hash multipliers (part of the saved state's
      meaning; keep it fixed across restores).
    **kwargs: Passed to `tf_keras.layers.Layer`.

  Example:
    >>> estimator = StreamingFrequencyEstimator(num_buckets=1 << 20)
    >>> estimator.update(batch_item_index)    # in the train step
    >>> counts = estimator.expected_counts(candidate_ids)
  """

  def __init__(
    self,
    num_buckets: int,
    num_hashes: int = 1,
    learning_rate: float = 0.01,
    hash_seed: int = 0,
    **kwargs: Any,
  ):
    super().__init__(**kwargs)
    config_lib.check_value("model.estimator_buckets", num_buckets)
    config_lib.check_value("model.estimator_hashes", num_hashes)
    config_lib.check_value("model.estimator_lr", learning_rate)
    self.num_buckets = int(num_buckets)
    self.num_hashes = int(num_hashes)
    self.learning_rate = float(learning_rate)
    self.hash_seed = int(hash_seed)
    self._params = hash_parameters(self.num_hashes, self.hash_seed)
    size = self.num_buckets * self.num_hashes
    # The arrays of all hashes are one flat vector: hash i owns the slice
    # [i * H, (i + 1) * H), so one unique + one scatter serves every hash.
    only_first = tf.VariableAggregation.ONLY_FIRST_REPLICA
    self.step = self.add_weight(
      name="step",
      shape=(),
      dtype=tf.int64,
      initializer="zeros",
      trainable=False,
      aggregation=only_first,
    )
    self.last_step = self.add_weight(
      name="last_step",
      shape=(size,),
      dtype=tf.int64,
      initializer="zeros",
      trainable=False,
      aggregation=only_first,
    )
    self.gap = self.add_weight(
      name="gap",
      shape=(size,),
      dtype=tf.float32,
      initializer="zeros",
      trainable=False,
      aggregation=only_first,
    )
    self.copies = self.add_weight(
      name="copies",
      shape=(size,),
      dtype=tf.float32,
      initializer="zeros",
      trainable=False,
      aggregation=only_first,
    )

  def buckets(self, item_index: tf.Tensor) -> tf.Tensor:
    """Flat bucket index `[n, m]` of each id under each hash."""
    ids = tf.reshape(tf.cast(item_index, tf.int64), [-1, 1])
    params = tf.constant(self._params)
    hashed = tf.math.floormod(ids * params[:, 0] + params[:, 1], _PRIME)
    # Hash 0 is the identity: skip the prime so rows >= P still spread.
    hashed = tf.concat([ids, hashed[:, 1:]], axis=1)
    offsets = tf.range(self.num_hashes, dtype=tf.int64) * self.num_buckets
    return tf.math.floormod(hashed, self.num_buckets) + offsets

  def update(self, item_index: tf.Tensor) -> None:
    ids = replicas.gather(tf.reshape(tf.cast(item_index, tf.int64), [-1]))
    buckets, _, counts = tf.unique_with_counts(
      tf.reshape(self.buckets(ids), [-1])
    )
    # Tie the step to the batch: in a traced step whose input fetch fails
    # (end of an unsized dataset) data-independent ops may still run.
    with tf.control_dependencies([ids]):
      t = self.step.read_value() + 1
    delta = tf.cast(t - tf.gather(self.last_step, buckets), tf.float32)
    gap = tf.gather(self.gap, buckets)
    a = self.learning_rate
    seen = gap > 0
    new_gap = tf.where(seen, (1.0 - a) * gap + a * delta, delta)
    count = tf.cast(counts, tf.float32)
    copies = tf.gather(self.copies, buckets)
    new_copies = tf.where(seen, (1.0 - a) * copies + a * count, count)
    self.gap.scatter_update(tf.IndexedSlices(new_gap, buckets))
    self.copies.scatter_update(tf.IndexedSlices(new_copies, buckets))
    self.last_step.scatter_update(
      tf.IndexedSlices(tf.fill(tf.shape(buckets), t), buckets)
    )
    self.step.assign(t)

  def expected_counts(self, item_index: tf.Tensor) -> tf.Tensor:
    shape = tf.shape(item_index)
    buckets = self.buckets(item_index)
    # Read through 1-D indices (arrays sharded over parameter servers
    # need them).
    flat = tf.reshape(buckets, [-1])
    gaps = tf.reshape(tf.gather(self.gap, flat), tf.shape(buckets))
    seen = gaps > 0
    # Never seen: at most one copy in all the steps so far.
    gaps = tf.where(seen, gaps, tf.cast(self.step, tf.float32))
    copies = tf.reshape(tf.gather(self.copies, flat), tf.shape(buckets))
    copies = tf.where(seen, copies, 1.0)
    expected = copies / tf.maximum(gaps, 1.0)
    return tf.reshape(tf.reduce_min(expected, axis=1), shape)

  def get_config(self) -> dict[str, Any]:
    config = super().get_config()
    config.update(
      {
        "num_buckets": self.num_buckets,
        "num_hashes": self.num_hashes,
        "learning_rate": self.learning_rate,
        "hash_seed": self.hash_seed,
      }
    )
    return config


def make_sampling_source(
  kind: str,
  item_count: np.ndarray,
  batch_size: int,
  num_buckets: int = 1 << 20,
  num_hashes: int = 1,
  learning_rate: float = 0.01,
) -> SamplingProbability | None:
  """The source named by `ModelConfig.logq` (`none` -> None)."""
  if kind == "none":
    return None
  if kind == "static":
    return StaticSamplingProbability(
      item_count, batch_size=batch_size, name="sampling_probability"
    )
  if kind == "streaming":
    return StreamingFrequencyEstimator(
      num_buckets,
      num_hashes=num_hashes,
      learning_rate=learning_rate,
      name="sampling_probability",
    )
  raise ValueError(f"Unknown logq source {kind!r}.")


PROPOSALS = ("uniform", "unigram")


class MixedNegatives:
  """Extra negatives per step drawn from a proposal Q (Yang et al. 2020).

  The candidates of a step are the batch's positives plus `count` items
  drawn from Q; `losses.mixed_log_q` corrects every candidate by its
  expected multiplicity `B p_j + M q_j`, which needs Q's per-draw
  probability `q_j` (`probability`).

  - `uniform`: the first `count` items of the uniform SSL item stream (the
    global batch's, so the same on every replica); `q_j = 1 / N`.
  - `unigram`: `count` iid draws with `q_j ∝ count_j^beta` over the items
    with training interactions (beta = 0: uniform over them; 1: the
    interaction distribution).

  Args:
    count: `M`, extra negatives per step.
    proposal: One of `PROPOSALS`.
    item_train_count: Training interactions per corpus row.
    beta: Exponent of the unigram proposal.
    items: The item feature tables (name -> values per row); the unigram
      proposal gathers the drawn items' features from them.
  """

  def __init__(
    self,
    count: int,
    proposal: str,
    item_train_count: np.ndarray,
    beta: float = 1.0,
    items: dict[str, np.ndarray] | None = None,
  ):
    if proposal not in PROPOSALS:
      raise ValueError(
        f"proposal must be one of {list(PROPOSALS)}, got {proposal!r}."
      )
    if count < 1:
      raise ValueError(f"count must be >= 1, got {count}.")
    self.count = int(count)
    self.proposal = proposal
    self.num_items = len(item_train_count)
    self._unigram = None
    self._tables = ()
    if proposal == "unigram":
      counts = np.asarray(item_train_count, np.float64)
      if counts.sum() <= 0:
        raise ValueError("A unigram proposal needs training counts.")
      weights = np.power(counts, beta)
      weights[counts <= 0] = 0.0
      self._unigram = (weights / weights.sum()).astype(np.float32)
      # Plain numpy arrays: constants of the step, not model state.
      self._tables = tuple(
        (name, np.asarray(values)) for name, values in (items or {}).items()
      )

  def draw(self, inputs, training: bool, seed: tf.Tensor):
    """(features, int32 ids) of this step's extra negatives, or None.

    None when the uniform proposal's SSL items are absent from an
    evaluation batch; a training batch without them is an error.
    """
    if self.proposal == "uniform":
      if "ssl_item" not in inputs:
        if training:
          raise ValueError(
            "Uniform mixed negatives need batch['ssl_item'] (the uniform "
            "item stream)."
          )
        return None
      features, ids = replicas.gather_structure(
        (inputs["ssl_item"], inputs["ssl_item_index"])
      )
      features = {k: v[: self.count] for k, v in features.items()}
      return features, tf.cast(ids[: self.count], tf.int32)
    logits = tf.math.log(tf.constant(self._unigram))[tf.newaxis, :]
    ids = tf.random.stateless_categorical(
      logits, self.count, seed=seed, dtype=tf.int32
    )[0]
    features = {name: tf.gather(table, ids) for name, table in self._tables}
    return features, ids

  def probability(self, item_index: tf.Tensor) -> tf.Tensor:
    """Per-draw probability `q_j` of each item under the proposal."""
    if self._unigram is None:
      return tf.fill(tf.shape(item_index), 1.0 / self.num_items)
    return tf.gather(tf.constant(self._unigram), item_index)
