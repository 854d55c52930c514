"""The two-tower retrieval model with logQ correction and the SSL task.

`TwoTowerModel` is a `tfrs.Model`: it implements only `compute_loss`, and the
TFRS base class runs the train and test steps (adding Keras regularisation
losses). Per step:

  L = L_main + alpha * L_ssl + spread_out_weight * L_spread_out

  - L_main: `losses.RetrievalLoss` between the query tower and the item
    tower over the batch's positives (plus optional mixed negatives), with
    the `-log p` correction from `sampling.py`.
  - L_ssl: `ssl_task.ContrastiveTask` between two augmented views
    (`augment.py`) of `batch["ssl_item"]`, a uniform sample of the corpus,
    through the same item tower.
  - L_spread_out: `losses.spread_out_loss` of the batch's item embeddings
    (baseline; off by default).

Metrics (running means, reset by `fit` each epoch): `main_loss`, `ssl_loss`,
`ssl_accuracy`, `spread_out_loss`; the TFRS base adds `loss` (what
`compute_loss` returned for the last batch), `regularization_loss` (Keras
layer losses) and `total_loss`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs
import tf_keras

from tfr_ssl import (
  augment,
  distribute,
  features,
  losses,
  sampling,
  ssl_task,
)
from tfr_ssl.config import Config
from tfr_ssl.data import contract, query_side, stats

PHASES = ("joint", "ssl_only", "main_only")

# Streams folded into the step seed, one per random draw of a step.
_SSL_STREAM, _DROPOUT_STREAM, _UNIGRAM_STREAM = 1, 2, 3
_VALUE_STREAM, _QUERY_STREAM = 4, 5
# Seed step of evaluation-time SSL views: fixed, so evaluations compare.
_EVAL_STEP = (1 << 62) - 1


class ModelConfigError(ValueError):
  """The config does not fit the model or the dataset."""


def key_features(
  dataset: contract.PreparedDataset, key_share: float
) -> list[str]:
  """The item id, then the key-like item features (`stats.key_like_features`).

  They are seen by one SSL view only, dropped by id_dropout, and replaced by
  their default embedding for items with no training interactions
  (`features.trained_values`).
  """
  item_id = dataset.schema.item_id
  names = [f.name for f in dataset.schema.item_features]
  return [item_id] + [
    name
    for name in stats.key_like_features(dataset.items, names, key_share)
    if name != item_id
  ]


def phase_for_step(config: Config, step: int) -> str:
  """The phase of training step `step` (0-based) under `config`.

  `schedule="pretrain"`: `ssl_only` for the first `pretrain_steps` steps.
  Afterwards (and always under `joint`): `joint` when `alpha > 0`, else
  `main_only`.
  """
  if config.train.schedule == "pretrain" and step < config.train.pretrain_steps:
    return "ssl_only"
  return "joint" if config.ssl.alpha > 0 else "main_only"


def loss_weights(config: Config, phase: str) -> tuple[float, float]:
  """(weight of L_main, weight of L_ssl) in `phase`: the one place the
  phases and alpha meet. `joint`: (1, alpha); `ssl_only`: (0, 1);
  `main_only`: (1, 0)."""
  if phase not in PHASES:
    raise ValueError(f"phase must be one of {list(PHASES)}, got {phase!r}.")
  if phase == "ssl_only":
    return 0.0, 1.0
  if phase == "main_only":
    return 1.0, 0.0
  return 1.0, float(config.ssl.alpha)


class TwoTowerModel(tfrs.Model):
  """Query tower, item tower, retrieval task and SSL task.

  Towers (both map an int-id feature dict to L2-normalised `[B, output_dim]`
  embeddings and never augment, so they can be exported as they are):
    - `model.item_tower(item_features)`: the shared item encoder + MLP.
    - `model.query_tower(query_features)`: in `user_to_item`, a query
      encoder over the schema's query features + MLP; in `item_to_item`, the
      SHARED item encoder + its own MLP over the previous item's features.

  Phase (`model.phase`, a Python attribute; one of `PHASES`):
    - `joint`: L_main + alpha L_ssl (the paper). alpha = 0 skips the SSL
      computation entirely, so the loss is exactly the main-only loss.
    - `ssl_only`: L_ssl alone (weight 1), the pretraining of the item tower
      of `TrainConfig.schedule = "pretrain"`; only `batch["ssl_item"]` is
      read, and the sampling estimator is not updated.
    - `main_only`: L_main alone (fine-tuning after pretraining).
    The phase is read when a step function is traced. Setting it drops
    Keras's cached `train_function` / `test_function`, so the next `fit` /
    `evaluate` retraces; a custom loop that wraps `compute_loss` in its own
    `tf.function` must build a new one after changing the phase.
    `phase_for_step(config, step)` gives the phase of a schedule.

  Evaluation (`training=False`, e.g. `model.evaluate`): no feature dropout
  and no estimator update; the SSL loss is computed only when the batch has
  `ssl_item`, on views drawn with a fixed seed so evaluations compare.

  Randomness: augmentation, feature dropout and unigram negatives use
  stateless ops seeded by `[train.seed, step]`, where `step` is a
  non-trainable counter (saved in checkpoints) advanced once per training
  call of `compute_loss`; the run is reproducible and resumable.

  Args:
    config: The run config (model, ssl and train sections are read).
    dataset: The prepared dataset: schema, vocabulary sizes,
      `mutual_information` (CFM), `item_train_count` (static logQ and
      unigram negatives), `num_items` and the item tables.
    name: Keras model name.

  Example:
    >>> model = TwoTowerModel(config, dataset)
    >>> model.compile(optimizer=tf_keras.optimizers.Adagrad(0.05))
    >>> model.phase = "ssl_only"; model.fit(stream, steps_per_epoch=100)
    >>> model.phase = "joint"; model.fit(stream, epochs=2)
  """

  def __init__(
    self,
    config: Config,
    dataset: contract.PreparedDataset,
    name: str = "two_tower",
  ):
    super().__init__(name=name)
    _validate(config, dataset)
    self.config = config
    self.query_side = query_side.query_side(config.model.task)
    # The training counts of the rows this task trains on: static logQ,
    # unigram negatives and the cold rule read the counts the evaluation's
    # slices read.
    dataset = self.query_side.trained_on(dataset)
    m, s = config.model, config.ssl
    self.num_items = dataset.num_items
    dim = m.embedding_dim
    item_names = [f.name for f in dataset.schema.item_features]
    self.key_features = key_features(dataset, s.key_share)
    self.item_encoder = features.FeatureEncoder(
      features.feature_specs(dataset, contract.ITEM),
      dim,
      known_values=features.trained_values(dataset, self.key_features),
      name="item_encoder",
    )
    self.item_tower = features.Tower(
      self.item_encoder, m.item_layers, m.output_dim, name="item_tower"
    )
    if self.query_side.is_item:
      query_encoder = self.item_encoder  # shared: the query is an item
    else:
      query_encoder = features.FeatureEncoder(
        features.feature_specs(dataset, contract.QUERY),
        dim,
        known_values=features.trained_values(
          dataset, [dataset.schema.query_id], role=contract.QUERY
        ),
        name="query_encoder",
      )
    self.query_tower = features.Tower(
      query_encoder, m.query_layers, m.output_dim, name="query_tower"
    )
    self.retrieval = losses.RetrievalLoss(
      loss=m.loss,
      temperature=m.temperature,
      remove_accidental_hits=m.remove_accidental_hits,
      num_hard_negatives=m.hard_negatives,
      pairwise_loss=m.pairwise_loss,
      margin=m.margin,
      name="main_task",
    )
    self.ssl_task = ssl_task.ContrastiveTask(s.temperature, name="ssl_task")
    self.sampling = sampling.make_sampling_source(
      m.logq,
      dataset.item_train_count,
      batch_size=config.train.batch_size,
      num_buckets=m.estimator_buckets,
      num_hashes=m.estimator_hashes,
      learning_rate=m.estimator_lr,
    )
    self.augmenter = augment.Augmenter(
      self.item_encoder.feature_names,
      self.item_encoder.multi_feature_names,
      masking=s.masking,
      mask_rate=s.mask_rate,
      dropout_rate=s.dropout_rate,
      dependence=(
        stats.feature_dependence(dataset.items, item_names)
        if s.masking == "cfm"
        else None
      ),
      key_features=self.key_features,
      key_mode=s.key_mode,
    )
    self._key_columns = np.array(
      [name in self.key_features for name in self.item_encoder.feature_names]
    )
    # The query's own id: the user id, or the query item's key features.
    query_id = (
      self.key_features
      if self.query_side.is_item
      else [dataset.schema.query_id]
    )
    self._query_key_columns = np.array(
      [name in query_id for name in query_encoder.feature_names]
    )
    self.ssl_head = None
    if s.projection_dim:
      # A projection head (SimCLR style): the SSL loss asks invariance of
      # the head's output, not of the retrieval embedding itself.
      self.ssl_head = tf_keras.Sequential(
        [
          tf_keras.layers.Dense(s.projection_dim, activation="relu"),
          tf_keras.layers.Dense(s.projection_dim),
        ],
        name="ssl_head",
      )
    self.spread_out_tracker = tf_keras.metrics.Mean(name="spread_out_loss")
    self.seed_step = self.add_weight(
      name="seed_step",
      shape=(),
      dtype=tf.int64,
      initializer="zeros",
      trainable=False,
      aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
    )
    self.mixed_negatives = None
    if m.mixed_negatives:
      self.mixed_negatives = sampling.MixedNegatives(
        m.mixed_negatives,
        m.mixed_negative_sampling,
        dataset.item_train_count,
        beta=m.mixed_negative_beta,
        items={
          name: dataset.items[name] for name in self.item_encoder.feature_names
        },
      )
    self._phase = "joint"
    self._build_towers(dataset)

  def embedding_tables(self) -> dict[str, list[tf.Variable]]:
    """Feature name -> its embedding table variables (one per encoder).

    Warm starting remaps these row by row by raw value when the vocabulary
    changes; every other variable must keep its shape.
    """
    tables: dict[str, list[tf.Variable]] = {}
    encoders = {id(e): e for e in (self.item_encoder, self.query_tower.encoder)}
    for encoder in encoders.values():
      for name, table in zip(
        encoder.feature_names, encoder.tables, strict=True
      ):
        tables.setdefault(name, []).append(table)
    return tables

  def _build_towers(self, dataset: contract.PreparedDataset) -> None:
    # Create every weight now (Keras builds dense layers on first call), so
    # get_weights / set_weights / checkpoints see the whole model at once.
    def dummy(table):
      return {name: tf.constant(values[:1]) for name, values in table.items()}

    item = self.item_tower(dummy(dataset.items))
    if self.ssl_head is not None:
      self.ssl_head(item)
    self.query_tower(dummy(self.query_side.table(dataset)))

  @property
  def phase(self) -> str:
    return self._phase

  @phase.setter
  def phase(self, value: str) -> None:
    if value not in PHASES:
      raise ValueError(f"phase must be one of {list(PHASES)}, got {value!r}.")
    if value != self._phase:
      self._phase = value
      # Keras caches the traced step functions; force a retrace.
      self.train_function = None
      self.test_function = None

  def compute_loss(
    self, inputs: Mapping[str, Any], training: bool = False
  ) -> tf.Tensor:
    """The scalar loss of one batch (see the class doc); updates metrics.

    Args:
      inputs: A batch in the format of `tfr_ssl.data.pipeline` (`query`,
        `item`, `item_index`, `weight`, `ssl_item`, `ssl_item_index`).
      training: True in the train step: augments, applies feature dropout,
        updates the streaming estimator and advances the seed step.
    """
    seed = self._seed(training, anchor=tf.nest.flatten(inputs)[0])
    main_weight, ssl_weight = loss_weights(self.config, self._phase)
    if ssl_weight > 0 and "ssl_item" not in inputs:
      if training:
        raise ValueError(
          f"Phase {self._phase!r} with ssl.alpha={self.config.ssl.alpha} "
          "needs batch['ssl_item']."
        )
      # An evaluation stream without SSL items: the main loss is scored.
      main_weight, ssl_weight = 1.0, 0.0
    if main_weight == 0:
      return self._ssl_loss(inputs, training, seed)
    if ssl_weight == 0:
      return self._main_loss(inputs, training, seed)
    items, views = self._joint_item_pass(inputs, training, seed)
    loss = self._main_loss(inputs, training, seed, items=items)
    return loss + ssl_weight * self._ssl_loss(
      inputs, training, seed, views=views
    )

  def _joint_item_pass(self, inputs, training, seed):
    """The main positives and both SSL views in ONE item-tower call.

    Rows are independent in the tower, so this equals two calls; one call
    runs each layer once on larger matrices, and gives each embedding table
    one sparse gradient instead of two the tape would concatenate (that
    concat was 11 ms, 5%, of a profiled main + SSL step on ML-1M).

    Returns:
      (main item embeddings `[B, D]`, stacked view embeddings `[2N, D]`).
    """
    names = self.item_encoder.feature_names
    rows = tf.shape(inputs["item_index"])[0]
    main_mask = self._dropout_mask(rows, training, seed)
    if main_mask is None:
      main_mask = tf.zeros([rows, len(names)], tf.bool)
    stacked, view_masks = self._ssl_views(inputs, seed)
    features = {n: _concat_rows(inputs["item"][n], stacked[n]) for n in names}
    masks = tf.concat(
      [tf.cast(main_mask, tf.bool), tf.cast(view_masks, tf.bool)], axis=0
    )
    z = self.item_tower(features, feature_mask=masks, training=training)
    return z[:rows], z[rows:]

  def gradient_norms(self, inputs: Mapping[str, Any]) -> dict[str, tf.Tensor]:
    """How the two losses pull on the shared item tower, for one batch.

    The gradients of L_main and of alpha * L_ssl with respect to the item
    tower's variables (the item encoder's tables and defaults and the item
    MLP), taken separately: their norms and cosine. When the SSL gradient
    dwarfs the main one, or opposes it, alpha is too large. Evaluation mode
    (no estimator update, fixed SSL views), so it does not disturb training.

    Returns:
      `grad_norm/main`, `grad_norm/ssl` (weighted by alpha),
      `grad_norm/ratio` (ssl / main) and `grad_norm/cosine`.
    """
    seed = self._seed(False, anchor=tf.nest.flatten(inputs)[0])
    variables = self.item_tower.trainable_variables
    with tf.GradientTape(persistent=True) as tape:
      main = self._main_loss(inputs, False, seed)
      _, ssl_weight = loss_weights(self.config, "joint")
      ssl = ssl_weight * self._ssl_loss(inputs, False, seed)
    flat = []
    for loss in (main, ssl):
      grads = tape.gradient(loss, variables)
      flat.append(
        tf.concat(
          [
            tf.reshape(tf.convert_to_tensor(g), [-1])
            if g is not None
            else tf.zeros([tf.size(v)])
            for g, v in zip(grads, variables, strict=True)
          ],
          axis=0,
        )
      )
    del tape
    norms = [tf.norm(g) for g in flat]
    cosine = tf.reduce_sum(flat[0] * flat[1]) / tf.maximum(
      norms[0] * norms[1], 1e-12
    )
    return {
      "grad_norm/main": norms[0],
      "grad_norm/ssl": norms[1],
      "grad_norm/ratio": norms[1] / tf.maximum(norms[0], 1e-12),
      "grad_norm/cosine": cosine,
    }

  def _seed(self, training: bool, anchor: tf.Tensor) -> tf.Tensor:
    if training:
      # Advance only when the batch exists: in a traced step whose input
      # fetch fails (end of an unsized dataset) data-independent ops may
      # still run.
      with tf.control_dependencies([anchor]):
        # A tensor (a mirrored variable's assign returns one already).
        step = tf.convert_to_tensor(self.seed_step.assign_add(1))
    else:
      step = tf.constant(_EVAL_STEP, tf.int64)
    # The same seed on every replica: per-row draws are made for the
    # global batch and sliced (`distribute.local_rows`), so a step draws
    # what it would draw in one process.
    return tf.stack([tf.constant(self.config.train.seed, tf.int64), step])

  def _main_loss(self, inputs, training, seed, items=None) -> tf.Tensor:
    """The main loss; `items` are the positives' embeddings if computed."""
    m = self.config.model
    item_index = tf.cast(inputs["item_index"], tf.int32)
    rows = tf.shape(item_index)[0]
    query = self.query_tower(
      inputs["query"],
      feature_mask=self._query_mask(rows, training, seed),
      training=training,
    )
    if items is None:
      mask = self._dropout_mask(rows, training, seed)
      items = self.item_tower(
        inputs["item"], feature_mask=mask, training=training
      )
    # Under a strategy: the positives of every replica, this replica's
    # first, so its queries meet the whole global batch as negatives.
    local_index = item_index
    items = distribute.local_first(distribute.gather(items), rows)
    item_index = distribute.local_first(distribute.gather(item_index), rows)
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
      extra_items = self.item_tower(extra_features, training=training)
      candidates = tf.concat([items, extra_items], axis=0)
      candidate_ids = tf.concat([item_index, extra_ids], axis=0)
    log_q = None
    if self.sampling is not None:
      if training:
        self.sampling.update(local_index)  # it gathers every replica's
      # Per global batch: the candidates are the global batch.
      batch_p = self.sampling.expected_counts(candidate_ids)
      if extra is None:
        log_q = losses.mixed_log_q(batch_p)
      else:
        # The proposal probability of each candidate's ITEM, whichever
        # stream the candidate came from (see losses.py).
        q = self.mixed_negatives.probability(candidate_ids)
        log_q = losses.mixed_log_q(batch_p, q, m.mixed_negatives)
    weight = inputs.get("weight")
    loss = self.retrieval(
      query,
      candidates,
      candidate_ids=candidate_ids,
      log_q=log_q,
      sample_weight=weight,
    )
    if m.spread_out_weight > 0:
      spread = losses.spread_out_loss(items, item_index)
      self.spread_out_tracker.update_state(spread)
      # A global quantity computed by every replica, whose gradients the
      # optimizer sums: each replica adds its share.
      replicas, _ = distribute.replica()
      loss += m.spread_out_weight * spread / replicas
    return loss

  def _dropout_mask(self, batch_size, training, seed) -> tf.Tensor | None:
    """`[B, F]` item features replaced by unknowns in the main task, or None.

    Feature dropout (DropoutNet-style baseline) drops any feature; id
    dropout drops the key features together (the item id and key-like
    features), so the tower also learns to embed an item by its content;
    value dropout drops each content feature alone, which trains the
    unknown embedding that an empty bag or a new value reads.
    """
    m = self.config.model
    rates = (m.feature_dropout, m.id_dropout, m.value_dropout)
    if not training or max(rates) <= 0:
      return None
    num_features = self.item_encoder.num_features
    draws = _draws(batch_size, num_features + 1, seed, _DROPOUT_STREAM)
    mask = draws[:, :-1] < m.feature_dropout
    drop_keys = draws[:, -1:] < m.id_dropout
    mask = tf.logical_or(mask, tf.logical_and(drop_keys, self._key_columns))
    if m.value_dropout > 0:
      # A stream of its own: the other draws stay what they were without it.
      values = _draws(batch_size, num_features, seed, _VALUE_STREAM)
      drop = tf.logical_and(values < m.value_dropout, ~self._key_columns)
      mask = tf.logical_or(mask, drop)
    return mask

  def _query_mask(self, batch_size, training, seed) -> tf.Tensor | None:
    """`[B, Fq]` query features replaced by unknowns, or None.

    Query id dropout trains the unknown query id, the embedding a user with
    no training interactions reads (the query-side cold rule); value
    dropout drops each other query feature alone, as on the item side.
    """
    m = self.config.model
    if not training or max(m.query_id_dropout, m.value_dropout) <= 0:
      return None
    columns = len(self._query_key_columns)
    draws = _draws(batch_size, columns + 1, seed, _QUERY_STREAM)
    drop_id = draws[:, -1:] < m.query_id_dropout
    mask = tf.logical_and(drop_id, self._query_key_columns)
    drop = tf.logical_and(
      draws[:, :-1] < m.value_dropout, ~self._query_key_columns
    )
    return tf.logical_or(mask, drop)

  def _ssl_views(self, inputs, seed):
    """This replica's two views stacked `[2N, ...]`, and their masks."""
    batch = inputs["ssl_item"]
    names = self.item_encoder.feature_names
    rows = tf.shape(batch[names[0]])[0]
    view_seed = tf.random.experimental.stateless_fold_in(seed, _SSL_STREAM)
    # Views are drawn for the global batch (the same draws as in one
    # process) and each replica embeds its own rows.
    views = self.augmenter(distribute.gather_structure(batch), view_seed)
    view1, mask1, view2, mask2 = tf.nest.map_structure(
      lambda x: distribute.local_rows(x, rows), views
    )
    stacked = {n: _concat_rows(view1[n], view2[n]) for n in names}
    return stacked, tf.concat([mask1, mask2], axis=0)

  def _ssl_loss(self, inputs, training, seed, views=None) -> tf.Tensor:
    """The SSL loss; `views` are the stacked views' embeddings if computed."""
    ids = inputs.get("ssl_item_index")
    names = self.item_encoder.feature_names
    rows = tf.shape(inputs["ssl_item"][names[0]])[0]
    z = views
    if z is None:
      # One tower pass over both views stacked: [2N, ...] -> split.
      stacked, masks = self._ssl_views(inputs, seed)
      z = self.item_tower(stacked, feature_mask=masks, training=training)
    if self.ssl_head is not None:
      z = self.ssl_head(z, training=training)
    z1, z2 = tf.split(z, 2, axis=0)
    # Every replica's view 2, this replica's first (see `_main_loss`).
    z2 = distribute.local_first(distribute.gather(z2), rows)
    if ids is not None:
      ids = tf.cast(ids, tf.int32)
      ids = distribute.local_first(distribute.gather(ids), rows)
    return self.ssl_task(z1, z2, item_ids=ids)


def _draws(batch_size, columns: int, seed, stream: int) -> tf.Tensor:
  """This replica's rows of `[global batch, columns]` uniform draws.

  Drawn for the global batch with a replica-independent seed and sliced, so
  a cluster draws what one process draws.
  """
  replicas, _ = distribute.replica()
  draws = tf.random.stateless_uniform(
    [batch_size * replicas, columns],
    seed=tf.random.experimental.stateless_fold_in(seed, stream),
  )
  return distribute.local_rows(draws, batch_size)


def _concat_rows(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
  """Rows of `a` then `b`; multi-valued `[B, L]` ids padded to one width."""
  if a.shape.rank == 2:
    width = tf.maximum(tf.shape(a)[1], tf.shape(b)[1])

    def pad(x):
      extra = width - tf.shape(x)[1]
      return tf.pad(x, [[0, 0], [0, extra]], constant_values=contract.PAD)

    a, b = pad(a), pad(b)
  return tf.concat([a, b], axis=0)


def _validate(config: Config, dataset: contract.PreparedDataset) -> None:
  from tfr_ssl import config as config_lib

  m, s = config.model, config.ssl
  items = dataset.schema.item_features
  if m.task not in query_side.TASKS:
    raise ModelConfigError(f"model.task: unknown task {m.task!r}.")
  try:
    # Every field's declared range (a model may be built from a config
    # that never went through a binary's check).
    config_lib.check(config)
  except config_lib.ConfigError as e:
    raise ModelConfigError(str(e)) from None
  if (
    m.mixed_negatives
    and m.mixed_negative_sampling == "uniform"
    and m.mixed_negatives > s.batch_size
  ):
    raise ModelConfigError(
      f"model.mixed_negatives={m.mixed_negatives} uniform negatives are taken "
      f"from the SSL item stream, which has only ssl.batch_size="
      f"{s.batch_size} items per step."
    )
  if (
    m.mixed_negatives
    and m.mixed_negative_sampling == "unigram"
    and np.sum(dataset.item_train_count) <= 0
  ):
    raise ModelConfigError("Unigram mixed negatives need training counts.")
  if s.masking in augment.HALF_MASKINGS:
    keys = key_features(dataset, s.key_share)
    augment.check_two_halves(
      f"ssl.masking={s.masking!r}",
      [f.name for f in items if f.name not in keys],
      keys,
      error=ModelConfigError,
    )
