"""Feature encoders and towers built from the dataset schema.

A `FeatureEncoder` turns a dict of integer feature ids into one embedding per
feature: a table lookup for a categorical feature, a masked mean over the bag
for a multi-valued one. A `Tower` is an encoder followed by an MLP and L2
normalisation.

One rule for values the model knows nothing about. Every feature owns one
learned *unknown* embedding (`FeatureEncoder.defaults`). It stands for the
feature whenever the value carries no trained information:
  - a missing value: an empty string, an empty bag, padding;
  - a value never seen when the vocabulary was built (the OOV id 0), in
    training data, in an exported tower's string lookup, or at serving time;
    in a bag, unknown values drop out of the mean, and a bag of unknown
    values only is the unknown embedding;
  - an id with no training interactions (`trained_values`: the cold rule for
    items and for queries);
  - a masked feature (SSL views, value dropout, id dropout).
The rule lives in the encoder, so training, export, the index, evaluation
and the service apply the same one. The OOV rows of the tables are never
read. Dropout to the unknown embedding in the main task
(`model.value_dropout`, `model.id_dropout`, `model.query_id_dropout`) is
what trains it.

The item encoder is one object shared by the item tower, the SSL task and, in
`item_to_item` mode, the query tower, so all of them train the same tables.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras

from tfr_ssl.data import contract

_SERIALIZABLE = "tfr_ssl"
# `FeatureEncoder.pool` sums a feature with at most this many values
# through a dense [rows, values] matrix (see `_sum_rows`).
DENSE_POOL_VALUES = 512


def feature_specs(
  dataset: contract.PreparedDataset, role: str
) -> list[dict[str, Any]]:
  """Encoder specs of the `role` features of `dataset`, in schema order.

  Args:
    dataset: The prepared dataset (schema and vocabularies).
    role: `item` or `query`.

  Returns:
    One dict per feature: `name`, `vocabulary_size` (OOV row included) and
    `multi` (True for a bag of values).
  """
  if role not in contract.ROLES:
    raise ValueError(f"role must be one of {list(contract.ROLES)}: {role!r}.")
  features = [f for f in dataset.schema.features if f.role == role]
  return [
    {
      "name": f.name,
      "vocabulary_size": dataset.vocabulary_size(f.name),
      "multi": f.multi,
    }
    for f in features
  ]


def trained_values(
  dataset: contract.PreparedDataset,
  names: Sequence[str],
  role: str = contract.ITEM,
) -> dict[str, np.ndarray]:
  """The cold rule: which ids of each key feature were trained.

  For each named (single-valued) feature of `role`, a bool
  `[vocabulary_size]` vector, true for the ids carried by at least one row
  with training interactions: items with a training count
  (`item_train_count`), or queries with an interaction in the training
  split. Every other id (an item or user never seen in
  training, an id added after training, the out-of-vocabulary bucket) has
  an embedding row that the main task never trained; the encoder replaces
  it by the feature's unknown embedding, which id dropout trains. The rule
  lives in the encoder, so training, export, the index, evaluation and the
  service all apply it.
  """
  if role == contract.ITEM:
    seen = np.asarray(dataset.item_train_count) > 0
    table = dataset.items
  elif role == contract.QUERY:
    rows = np.asarray(dataset.splits["train"].query_index)
    seen = np.bincount(rows[rows >= 0], minlength=dataset.num_queries) > 0
    table = dataset.queries
  else:
    raise ValueError(f"role must be one of {list(contract.ROLES)}: {role!r}.")
  out = {}
  for name in names:
    ids = np.asarray(table[name])
    known = np.zeros(dataset.vocabulary_size(name), bool)
    known[ids[seen]] = True
    known[contract.OOV] = False
    out[name] = known
  return out


def _pack_known(known: np.ndarray) -> dict[str, Any]:
  # A layer config is JSON; a million bools as a list would be megabytes.
  return {
    "size": int(known.shape[0]),
    "bits": base64.b64encode(np.packbits(known)).decode("ascii"),
  }


def _unpack_known(packed: Mapping[str, Any]) -> np.ndarray:
  bits = np.frombuffer(base64.b64decode(packed["bits"]), np.uint8)
  return np.unpackbits(bits, count=int(packed["size"])).astype(bool)


def _variable_name(feature: str) -> str:
  # Variable names may not hold every character a column name can.
  return re.sub(r"[^A-Za-z0-9_.\-]", "_", feature)


def _lookup(table, ids: tf.Tensor) -> tf.Tensor:
  """Rows `ids` (any shape) of an embedding table: `ids.shape + [D]`.

  Through 1-D indices, which a table sharded over parameter servers
  (`tf.distribute` `ShardedVariable`) needs.
  """
  rows = tf.gather(table, tf.reshape(ids, [-1]))
  return tf.reshape(rows, tf.concat([tf.shape(ids), tf.shape(rows)[1:]], 0))


def _bag_mean(table, ids: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
  """Mean of the known values' rows of `[B, L]` bags, and which bags have none.

  OOV (0) and padding (-1) drop out of the mean. Only the known values are
  looked up: a bag is mostly padding (the widest bag sets L), and every
  row gathered is a row of the table's gradient that the optimizer then
  deduplicates.
  """
  known = ids > contract.OOV
  at = tf.where(known)  # row-major: the bag of each value, sorted
  rows = _lookup(table, tf.gather_nd(ids, at))
  batch = tf.shape(ids, out_type=tf.int64)[0]
  # The bags are sorted, so the sorted segment sum applies: a third of
  # the unsorted one's time, forward and back, with the same sums. It
  # stops at the last bag holding a value; the empty bags after it are
  # zero rows.
  total = tf.math.segment_sum(rows, at[:, 0])
  total = tf.pad(
    total, [[0, batch - tf.shape(total, out_type=tf.int64)[0]], [0, 0]]
  )
  count = tf.reduce_sum(tf.cast(known, tf.float32), axis=1)
  return total / tf.maximum(count, 1.0)[:, tf.newaxis], count == 0


def choose(missing: tf.Tensor, default: tf.Tensor, embedding: tf.Tensor):
  """`default` where `missing` (bool, `embedding`'s shape but the last
  axis), else `embedding`.

  `default` has `embedding`'s rank; each axis but the last is 1
  (broadcast) or full. Only the missing rows are written, over a copy of
  `embedding`: a select whose condition broadcasts over the embedding
  axis, and its gradient's two selects, cost several passes over every
  row, where most rows are not missing. The output and `embedding`'s
  gradient equal the select's to the bit; `default`'s gradient is the
  same sum, added in another order.
  """
  at = tf.where(missing)
  broadcast = tf.cast(tf.shape(default)[:-1] > 1, at.dtype)
  rows = tf.gather_nd(default, at * broadcast)
  return tf.tensor_scatter_nd_update(embedding, at, rows)


def _sum_rows(
  values: tf.Tensor,
  at: tf.Tensor,
  rows: tf.Tensor,
  num_rows: tf.Tensor,
  weights: tf.Tensor | None,
  dense: bool = False,
) -> tf.Tensor:
  """`out[r]`: the sum of `values[at[s]]` (times `weights[s]`) over the
  slots `s` of row `r` (`rows` sorted).

  `dense`: through a `[num_rows, len(values)]` matrix of slot counts, for
  few values (a category column): two small matmuls, forward and back,
  instead of scatters over every slot.
  """
  if dense:
    counts = tf.scatter_nd(
      tf.stack([rows, at], axis=1),
      tf.ones_like(at, tf.float32) if weights is None else weights,
      tf.stack([num_rows, tf.shape(values)[0]]),
    )  # repeated (row, value) pairs add up
    return tf.matmul(counts, values)
  if weights is not None:
    # Repeated (row, value) pairs add up in the product.
    pairs = tf.sparse.SparseTensor(
      indices=tf.cast(tf.stack([rows, at], axis=1), tf.int64),
      values=weights,
      dense_shape=tf.cast(tf.stack([num_rows, tf.shape(values)[0]]), tf.int64),
    )
    return tf.sparse.sparse_dense_matmul(pairs, values)

  # `tf.sparse.segment_sum` with a faster gradient. Its registered one
  # (`SparseSegmentSumGrad`) scatters one row per slot and ran at 4x the
  # forward op in the training step's profile. The gradient is the same
  # sum read the other way: the slots sorted by the value they read, each
  # value's row the sum of its slots' output gradients, which is the
  # forward kernel again. Equal up to the order of float additions.
  @tf.custom_gradient
  def forward(values):
    def gradient(upstream):
      order = tf.argsort(at, stable=True)
      return tf.sparse.segment_sum(
        upstream,
        tf.gather(rows, order),
        tf.gather(at, order),
        num_segments=tf.shape(values)[0],
      )

    return tf.sparse.segment_sum(
      values, at, rows, num_segments=num_rows
    ), gradient

  return forward(values)


@tf_keras.saving.register_keras_serializable(package=_SERIALIZABLE)
class FeatureEncoder(tf_keras.layers.Layer):
  """Embeds a dict of categorical feature ids, with per-feature unknowns.

  Single-valued features are int ids `[B]`; an id <= 0 (OOV or missing)
  is unknown. Multi-valued features are `[B, L]` ids padded with
  `PAD = -1`; the feature embedding is the mean of the known values'
  embeddings (ids > 0). A feature is replaced by its learned unknown
  (default) embedding when it is masked (`feature_mask[b, f]` true),
  unknown, untrained (`known_values`), or a bag without a known value, so
  "no information" has one learned representation per feature (see the
  module doc).

  Args:
    features: Specs in a fixed order, each a dict with `name`,
      `vocabulary_size` (rows of the table; id 0 is OOV) and `multi`.
    embedding_dim: Width D of every embedding.
    known_values: Optional feature name -> bool `[vocabulary_size]`: ids
      marked false are unknown (see `trained_values`). Data-derived
      constants, not weights: rebuilt from the dataset with the model, and
      kept by `get_config` (packed bits).
    **kwargs: Passed to `tf_keras.layers.Layer`.

  Example:
    >>> encoder = FeatureEncoder(
    ...   [{"name": "id", "vocabulary_size": 5, "multi": False},
    ...    {"name": "tags", "vocabulary_size": 4, "multi": True}], 8)
    >>> x = encoder({"id": tf.constant([1, 2]),
    ...              "tags": tf.constant([[1, 3], [2, -1]])})
    >>> x.shape  # [B, F * D]
    TensorShape([2, 16])
  """

  def __init__(
    self,
    features: Sequence[Mapping[str, Any]],
    embedding_dim: int,
    known_values: Mapping[str, np.ndarray] | None = None,
    **kwargs: Any,
  ):
    super().__init__(**kwargs)
    if not features:
      raise ValueError(f"{self.name}: an encoder needs at least one feature.")
    self._specs = [
      {
        "name": str(f["name"]),
        "vocabulary_size": int(f["vocabulary_size"]),
        "multi": bool(f["multi"]),
      }
      for f in features
    ]
    for spec in self._specs:
      if spec["vocabulary_size"] < 1:
        raise ValueError(
          f"{self.name}: feature {spec['name']!r} needs a vocabulary_size "
          f">= 1, got {spec['vocabulary_size']}."
        )
    self.embedding_dim = int(embedding_dim)
    self._known = {}
    for name, known in (known_values or {}).items():
      spec = next((x for x in self._specs if x["name"] == name), None)
      known = np.asarray(known, bool)
      if spec is None or spec["multi"]:
        raise ValueError(
          f"{self.name}: known_values for {name!r}, which is not a "
          "single-valued feature of this encoder."
        )
      if known.shape != (spec["vocabulary_size"],):
        raise ValueError(
          f"{self.name}: known_values[{name!r}] has shape {known.shape}, "
          f"expected ({spec['vocabulary_size']},)."
        )
      self._known[name] = known
    self.tables = [
      self.add_weight(
        name=f"{_variable_name(spec['name'])}_embeddings",
        shape=(spec["vocabulary_size"], self.embedding_dim),
        initializer=self._initializer(),
      )
      for spec in self._specs
    ]
    self.defaults = self.add_weight(
      name="default_embeddings",
      shape=(len(self._specs), self.embedding_dim),
      initializer=self._initializer(),
    )

  def _initializer(self) -> tf_keras.initializers.Initializer:
    # A fresh instance per table: one unseeded instance reused would give
    # every table the same values.
    return tf_keras.initializers.TruncatedNormal(
      stddev=self.embedding_dim**-0.5
    )

  @property
  def feature_names(self) -> list[str]:
    return [spec["name"] for spec in self._specs]

  @property
  def multi_feature_names(self) -> list[str]:
    return [spec["name"] for spec in self._specs if spec["multi"]]

  @property
  def num_features(self) -> int:
    return len(self._specs)

  @property
  def output_dim(self) -> int:
    return self.num_features * self.embedding_dim

  def embed(
    self,
    features: Mapping[str, tf.Tensor],
    feature_mask: tf.Tensor | None = None,
  ) -> tf.Tensor:
    """Per-feature embeddings, stacked.

    Args:
      features: feature name -> ids `[B]` or `[B, L]`; extra keys ignored.
      feature_mask: Optional `[B, F]` (bool or number, nonzero = masked), in
        the encoder's feature order; a `[F]` mask applies to every row.

    Returns:
      float32 `[B, F, D]`.
    """
    stacked = tf.stack(
      [
        self._feature(index, self._ids(features, spec))
        for index, spec in enumerate(self._specs)
      ],
      axis=1,
    )
    if feature_mask is None:
      return stacked
    mask = tf.cast(feature_mask, tf.bool)
    if mask.shape.rank == 1:
      mask = tf.broadcast_to(mask, tf.shape(stacked)[:2])
    return choose(mask, self.defaults[tf.newaxis], stacked)

  def call(
    self,
    features: Mapping[str, tf.Tensor],
    feature_mask: tf.Tensor | None = None,
  ) -> tf.Tensor:
    """Concatenated feature embeddings `[B, F * D]` (see `embed`)."""
    stacked = self.embed(features, feature_mask)
    return tf.reshape(stacked, [-1, self.output_dim])

  def pool(
    self,
    features: Mapping[str, tf.Tensor],
    entries: tf.Tensor,
    rows: tf.Tensor,
    num_rows: tf.Tensor,
    weights: tf.Tensor | None = None,
  ) -> tf.Tensor:
    """Per output row, the sum of its slots' embeddings: `[num_rows, F * D]`.

    Slot `s` holds entry `entries[s]` of `features` (ids `[U]` or
    `[U, L]`, no mask), embedded as `call` embeds it, and adds to row
    `rows[s]` (sorted), times `weights[s]` when given. Equal to summing
    `call(features)` gathered at `entries`, without building that
    `[S, F * D]` block: a single-valued feature embeds each distinct value
    once (a category column of a thousand items is a few rows), so the
    lookups, the unknown-value rule and the rows the optimizer updates
    scale with the values present, not the slots.

    Args:
      features: feature name -> ids of the `U` entries.
      entries: int32 `[S]`, the entry each slot holds.
      rows: int32 `[S]`, the output row of each slot, non-decreasing.
      num_rows: The number of output rows.
      weights: Optional float32 `[S]`.
    """
    columns = []
    for index, spec in enumerate(self._specs):
      ids = self._ids(features, spec)
      if spec["multi"]:
        values, at = self._feature(index, ids), entries
      else:
        distinct, position = tf.unique(ids)
        values, at = (
          self._feature(index, distinct),
          tf.gather(position, entries),
        )
      dense = spec["vocabulary_size"] <= DENSE_POOL_VALUES
      columns.append(_sum_rows(values, at, rows, num_rows, weights, dense))
    return tf.concat(columns, axis=1)

  def _feature(self, index: int, ids: tf.Tensor) -> tf.Tensor:
    """Feature `index`'s embeddings `[B, D]` of its ids `[B]` or `[B, L]`:
    the table row, the bag's mean, or the unknown embedding (module doc)."""
    spec, table = self._specs[index], self.tables[index]
    if spec["multi"]:
      embedding, missing = _bag_mean(table, ids)
    else:
      safe = tf.maximum(ids, 0)
      embedding = _lookup(table, safe)
      missing = ids <= contract.OOV
      if spec["name"] in self._known:
        known = tf.constant(self._known[spec["name"]])
        missing |= ~tf.gather(known, safe)
    return choose(missing, self.defaults[index][tf.newaxis, :], embedding)

  def _ids(self, features: Mapping[str, tf.Tensor], spec: dict) -> tf.Tensor:
    name = spec["name"]
    if name not in features:
      raise ValueError(
        f"{self.name}: feature {name!r} is missing from the input dict "
        f"(got keys {sorted(features)})."
      )
    ids = tf.cast(features[name], tf.int32)
    want = 2 if spec["multi"] else 1
    if ids.shape.rank is not None and ids.shape.rank != want:
      kind = "[B, L] (multi-valued)" if spec["multi"] else "[B]"
      raise ValueError(
        f"{self.name}: feature {name!r} must have shape {kind}, got "
        f"{ids.shape}."
      )
    return ids

  def get_config(self) -> dict[str, Any]:
    config = super().get_config()
    config.update(
      {
        "features": [dict(s) for s in self._specs],
        "embedding_dim": self.embedding_dim,
        "known_values": {
          name: _pack_known(known) for name, known in self._known.items()
        },
      }
    )
    return config

  @classmethod
  def from_config(cls, config: dict[str, Any]) -> FeatureEncoder:
    config = dict(config)
    config["known_values"] = {
      name: _unpack_known(packed)
      for name, packed in (config.get("known_values") or {}).items()
    }
    return cls(**config)

  def known_values(self) -> dict[str, np.ndarray]:
    """The cold rule: feature name -> bool `[vocabulary_size]` (a copy)."""
    return {name: known.copy() for name, known in self._known.items()}


@tf_keras.saving.register_keras_serializable(package=_SERIALIZABLE)
class Tower(tf_keras.layers.Layer):
  """Encoder -> MLP -> L2-normalised embedding.

  Args:
    encoder: The `FeatureEncoder` (may be shared with another tower).
    layer_sizes: Widths of the ReLU hidden layers.
    output_dim: Width of the final linear layer, the embedding width.
    **kwargs: Passed to `tf_keras.layers.Layer`.

  Example:
    >>> tower = Tower(encoder, layer_sizes=(32,), output_dim=16)
    >>> tower(features).shape  # rows have unit L2 norm
    TensorShape([2, 16])
  """

  def __init__(
    self,
    encoder: FeatureEncoder,
    layer_sizes: Sequence[int],
    output_dim: int,
    history: tf_keras.layers.Layer | None = None,
    **kwargs: Any,
  ):
    super().__init__(**kwargs)
    self.encoder = encoder
    # A query tower's `history.HistoryEncoder`: its pooled history joins the
    # encoder's features (a batch without `history` has empty histories).
    self.history = history
    self.layer_sizes = tuple(int(n) for n in layer_sizes)
    self.output_dim = int(output_dim)
    self.hidden = [
      tf_keras.layers.Dense(n, activation="relu", name=f"hidden_{i}")
      for i, n in enumerate(self.layer_sizes)
    ]
    self.projection = tf_keras.layers.Dense(self.output_dim, name="output")

  def call(
    self,
    features: Mapping[str, tf.Tensor],
    feature_mask: tf.Tensor | None = None,
    training: bool | None = None,
  ) -> tf.Tensor:
    """Embeds `features` (ids, see `FeatureEncoder`) to unit vectors [B, E]."""
    x = self.encoder(features, feature_mask=feature_mask)
    if self.history is not None:
      rows = features.get("history")
      if rows is None:
        rows = tf.fill([tf.shape(x)[0], 1], contract.PAD)
      x = tf.concat([x, self.history(rows)], axis=1)
    for layer in self.hidden:
      x = layer(x)
    return tf.math.l2_normalize(self.projection(x), axis=-1)

  def get_config(self) -> dict[str, Any]:
    if self.history is not None:
      # Its corpus table is data, rebuilt with the model from the dataset.
      raise NotImplementedError(
        f"{self.name}: a tower with a history is rebuilt from the dataset, "
        "not from a config."
      )
    config = super().get_config()
    config.update(
      {
        "encoder": tf_keras.layers.serialize(self.encoder),
        "layer_sizes": list(self.layer_sizes),
        "output_dim": self.output_dim,
      }
    )
    return config

  @classmethod
  def from_config(cls, config: dict[str, Any]) -> Tower:
    config = dict(config)
    config["encoder"] = tf_keras.layers.deserialize(config["encoder"])
    return cls(**config)
