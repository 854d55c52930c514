"""The two-tower retrieval model with logQ correction and the SSL task.

`TwoTowerModel` is a `tfrs.Model`: it implements only `compute_loss`, and the
TFRS base class runs the train and test steps (adding Keras regularisation
losses). Per step:

  L = L_main + alpha * L_ssl + spread_out_weight * L_spread_out

  - L_main (`retrieval_task.py`): the corrected in-batch softmax between
    the query tower and the item tower over the batch's positives (plus
    optional mixed negatives), with the `-log p` correction; the optional
    spread-out regulariser of the positives (a baseline) is part of it.
  - L_ssl (`item_ssl.py`): the contrastive loss between two augmented
    views of `batch["ssl_item"]`, a uniform sample of the corpus, through
    the same item tower.

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

from tfr_ssl.config import Config
from tfr_ssl.data import contract, query_side, stats
from tfr_ssl.model import (
  augment,
  dropout,
  features,
  history,
  item_ssl,
  retrieval_task,
  user_ssl,
)

PHASES = ("joint", "ssl_only", "main_only")

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
  """Query tower, item tower, retrieval task and SSL task, wired together.

  The model composes; each part owns its rule:
    - `item_tower` / `query_tower` (`features.Tower`): int-id feature dicts
      to L2-normalised `[B, output_dim]` embeddings; they never augment, so
      they are exported as they are. The item encoder (tables and unknown
      embeddings) is shared by every use of the item tower, and in
      `item_to_item` by the query tower too.
    - `retrieval_task` (`retrieval_task.RetrievalTask`): the corrected
      in-batch softmax, its logQ state and mixed negatives.
    - `item_ssl` (`item_ssl.ItemSSL`): the two augmented views of a uniform
      item sample, the projection head and the contrastive loss.
    - `dropout` (`dropout.MainTaskDropout`): which features of a training
      example the towers see as unknown.
    - `diagnostics.gradient_norms`: how the two losses pull on the item
      tower.
  The model decides what flows where: one item-tower call embeds the
  positives and both SSL views, and the phase weighs the two losses.

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

  Evaluation (`training=False`, e.g. `model.evaluate`): no dropout and no
  estimator update; the SSL loss is computed only when the batch has
  `ssl_item`, on views drawn with a fixed seed so evaluations compare.

  Randomness: augmentation, dropout and unigram negatives use stateless
  ops seeded by `[train.seed, step]`, where `step` is a non-trainable
  counter (saved in checkpoints) advanced once per training call of
  `compute_loss`; the run is reproducible and resumable. Each part folds
  its own stream into that seed (1: SSL views, 2, 4, 5: dropout, 3:
  unigram negatives).

  Args:
    config: The run config (model, ssl and train sections are read).
    dataset: The prepared dataset: schema, vocabulary sizes, the item
      tables (CFM's `stats.feature_dependence` is computed from them),
      training counts and interactions (logQ, the cold rule).
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
    self.config = config
    self.query_side = query_side.query_side(config.model.task)
    # The training counts of the rows this task trains on: static logQ,
    # unigram negatives and the cold rule read the counts the evaluation's
    # slices read.
    dataset = self.query_side.trained_on(dataset)
    item_keys = key_features(dataset, config.ssl.key_share)
    _validate(config, dataset, item_keys)
    self.num_items = dataset.num_items
    self.item_encoder, self.item_tower, self.query_tower = _towers(
      config, dataset, item_keys, self.query_side.is_item
    )
    self.retrieval_task = retrieval_task.RetrievalTask(
      config,
      dataset.item_train_count,
      {n: dataset.items[n] for n in self.item_encoder.feature_names},
      name="retrieval_task",
    )
    self.item_ssl = item_ssl.ItemSSL(
      config.ssl,
      self.item_encoder.feature_names,
      self.item_encoder.multi_feature_names,
      item_keys,
      _cfm_dependence(config, dataset),
      name="item_ssl",
    )
    query_keys = (
      item_keys if self.query_side.is_item else [dataset.schema.query_id]
    )
    self.dropout = dropout.MainTaskDropout(
      config.model,
      self.item_encoder.feature_names,
      item_keys,
      self.query_tower.encoder.feature_names,
      query_keys,
    )
    self.user_ssl = None
    if config.ssl.user_alpha > 0:
      self.user_ssl = user_ssl.UserSSL(
        config.ssl,
        self.query_tower.encoder.feature_names,
        dataset.schema.query_id,
        config.model.history_length,
        name="user_ssl",
      )
    self.seed_step = self.add_weight(
      name="seed_step",
      shape=(),
      dtype=tf.int64,
      initializer="zeros",
      trainable=False,
      aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
    )
    # Checkpoint keys: runs saved before these parts had objects of their
    # own hold their state under these names (the shortest path names a
    # variable, so the keys stay what they were).
    self.retrieval = self.retrieval_task.loss_layer
    self.sampling = self.retrieval_task.sampling
    self.spread_out_tracker = self.retrieval_task.spread_out_tracker
    self.ssl_head = self.item_ssl.head
    self.ssl_task = self.item_ssl.contrastive
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

    self.item_ssl.build_head(self.item_tower(dummy(dataset.items)))
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

    Every branch here and in the parts it calls is decided by Python values
    (the phase, alpha, the config, the batch's keys), never by a tensor:
    the training loop traces the step without autograph, which is most of
    what tracing it used to cost. Data-dependent control flow belongs in
    `tf.cond` / `tf.where`.

    Args:
      inputs: A batch in the format of `tfr_ssl.data.pipeline` (`query`,
        `item`, `item_index`, `weight`, `ssl_item`, `ssl_item_index`).
      training: True in the train step: augments, applies dropout,
        updates the streaming estimator and advances the seed step.
    """
    seed = self.step_seed(training, anchor=tf.nest.flatten(inputs)[0])
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
      return self.ssl_loss(inputs, training, seed)
    if ssl_weight == 0:
      loss = self.main_loss(inputs, training, seed)
    else:
      items, views = self._joint_item_pass(inputs, training, seed)
      loss = self.main_loss(inputs, training, seed, items=items)
      loss += ssl_weight * self.ssl_loss(inputs, training, seed, views=views)
    if self.user_ssl is not None and "ssl_user" in inputs:
      loss += self.config.ssl.user_alpha * self.user_ssl_loss(
        inputs, training, seed
      )
    return loss

  def user_ssl_loss(self, inputs, training, seed) -> tf.Tensor:
    """L_user_ssl of a batch: two halves of uniform users' histories
    through the query tower (`user_ssl.py`)."""
    features, masks = self.user_ssl.views(inputs["ssl_user"], seed)
    z = self.query_tower(features, feature_mask=masks, training=training)
    return self.user_ssl.loss(z, inputs.get("ssl_user_index"))

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
    main_mask = self.dropout.item_mask(rows, training, seed)
    if main_mask is None:
      main_mask = tf.zeros([rows, len(names)], tf.bool)
    stacked, view_masks = self.item_ssl.views(inputs["ssl_item"], seed)
    features = {
      n: item_ssl.concat_rows(inputs["item"][n], stacked[n]) for n in names
    }
    masks = tf.concat(
      [tf.cast(main_mask, tf.bool), tf.cast(view_masks, tf.bool)], axis=0
    )
    z = self.item_tower(features, feature_mask=masks, training=training)
    return z[:rows], z[rows:]

  def step_seed(self, training: bool, anchor: tf.Tensor) -> tf.Tensor:
    """The seed `[train.seed, step]` of this call's random draws.

    A training call advances the step; an evaluation call uses a fixed
    step, so evaluations compare.
    """
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
    # global batch and sliced (`replicas.local_rows`), so a step draws
    # what it would draw in one process.
    return tf.stack([tf.constant(self.config.train.seed, tf.int64), step])

  def main_loss(self, inputs, training, seed, items=None) -> tf.Tensor:
    """L_main of a batch; `items` are the positives' embeddings if already
    computed (by the joint item pass)."""
    item_index = tf.cast(inputs["item_index"], tf.int32)
    rows = tf.shape(item_index)[0]
    query = self.query_tower(
      inputs["query"],
      feature_mask=self.dropout.query_mask(rows, training, seed),
      training=training,
    )
    if items is None:
      items = self.item_tower(
        inputs["item"],
        feature_mask=self.dropout.item_mask(rows, training, seed),
        training=training,
      )
    return self.retrieval_task.loss(
      query, items, item_index, inputs, training, seed, self.item_tower
    )

  def ssl_loss(self, inputs, training, seed, views=None) -> tf.Tensor:
    """L_ssl of a batch; `views` are the stacked views' embeddings if
    already computed (by the joint item pass)."""
    if views is None:
      stacked, masks = self.item_ssl.views(inputs["ssl_item"], seed)
      views = self.item_tower(stacked, feature_mask=masks, training=training)
    return self.item_ssl.loss(
      views, inputs.get("ssl_item_index"), training=training
    )


def _towers(config, dataset, item_keys, query_is_item):
  """(item encoder, item tower, query tower); in item-to-item the query
  tower shares the item encoder (the query is an item)."""
  m = config.model
  item_encoder = features.FeatureEncoder(
    features.feature_specs(dataset, contract.ITEM),
    m.embedding_dim,
    known_values=features.trained_values(dataset, item_keys),
    name="item_encoder",
  )
  item_tower = features.Tower(
    item_encoder, m.item_layers, m.output_dim, name="item_tower"
  )
  history_encoder = None
  if query_is_item:
    query_encoder = item_encoder
  else:
    query_id = dataset.schema.query_id
    known = features.trained_values(dataset, [query_id], role=contract.QUERY)
    if m.query_id == "off":
      # Every user reads the id's unknown embedding, everywhere.
      known[query_id][:] = False
    query_encoder = features.FeatureEncoder(
      features.feature_specs(dataset, contract.QUERY),
      m.embedding_dim,
      known_values=known,
      name="query_encoder",
    )
    if m.history_length:
      history_encoder = history.HistoryEncoder(
        item_encoder,
        {n: dataset.items[n] for n in item_encoder.feature_names},
        m.history_length,
        m.history_pooling,
        name="history_encoder",
      )
  query_tower = features.Tower(
    query_encoder,
    m.query_layers,
    m.output_dim,
    history=history_encoder,
    name="query_tower",
  )
  return item_encoder, item_tower, query_tower


def _cfm_dependence(config, dataset) -> np.ndarray | None:
  """The item features' dependence matrix when CFM masking needs it."""
  if config.ssl.masking != "cfm":
    return None
  names = [f.name for f in dataset.schema.item_features]
  if config.ssl.dependence == "raw_mi":
    return stats.mutual_information(dataset.items, names)
  return stats.feature_dependence(dataset.items, names)


def _validate(
  config: Config, dataset: contract.PreparedDataset, item_keys: list[str]
) -> None:
  """The checks that need the data (the config's ranges are the config's
  own, `config.check`), before any variable is made."""
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
  if s.user_alpha > 0 and (
    m.task != query_side.USER_TO_ITEM or not m.history_length
  ):
    raise ModelConfigError(
      f"ssl.user_alpha={s.user_alpha}: the user SSL task splits user "
      "histories, so it needs model.task=user_to_item and "
      f"model.history_length > 0 (got {m.task}, {m.history_length})."
    )
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
    augment.check_two_halves(
      f"ssl.masking={s.masking!r}",
      [f.name for f in items if f.name not in item_keys],
      item_keys,
      error=ModelConfigError,
    )
