"""Exports the towers as SavedModels that take raw features.

Training runs on integer ids; users and servers have strings. The exported
towers own the vocabularies as lookup tables, so a serving request carries
raw values: a string per categorical feature and a `|`-joined string per
multi-valued feature (`"Action|Comedy"`), exactly as in the data files.
Unknown values map to the out-of-vocabulary bucket and an empty bag to
padding; the encoder reads both as the feature's unknown embedding, as it
does in training (see features.py).

A query tower with a history (`model.history_length` N > 0) takes one more
string input, `history`: the user's item ids `|`-joined, **oldest first**,
as a log lists them (the last one is the most recent). The tower looks each
id up in the item-id vocabulary and maps it to its corpus row; an id the
corpus does not hold drops out (the one rule for unseen values), and the
latest N that remain become the `[B, N]` rows, latest first, that the
model's history encoder reads (`data/history.py`). A request that gives no
history (an empty string) for a user the data knows reads the history the
system knew at export, the user's training and validation items
(`history.latest_items`), a constant of the tower; for any other user an
empty history reads the encoder's learned empty vector. A history that is
given (any non-empty string) replaces the stored one, even if none of its
ids is known; `NO_HISTORY` (`|`, no id) says "this user has no history"
where an empty string would read the stored one.

Layout (WORKDIR/export/):
  query/          SavedModel: {feature: string [B]} -> float32 [B, D]
                  (plus `history`: string [B] when the tower has one)
  item/           SavedModel: {feature: string [B]} -> float32 [B, D]
  manifest.json   schema, vocabulary sizes, dims, config, versions
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import tensorflow as tf

from tfr_ssl import atomic
from tfr_ssl import config as config_lib
from tfr_ssl.data import contract, history, query_side

MULTI_SEPARATOR = "|"
SIGNATURE = "serving_default"
# The query input holding the user's history (a reserved feature name).
HISTORY = history.HISTORY
# A history given with no item in it (an empty string gives none, and a
# known user then reads the stored one).
NO_HISTORY = MULTI_SEPARATOR


@dataclasses.dataclass(frozen=True)
class HistoryInput:
  """What an exported query tower needs to read a history of item ids.

  Attributes:
    length: N, the history columns the model reads.
    item_id: The item id feature (its vocabulary names history items).
    item_vocabulary: The item id values (value v has id v + 1).
    item_rows: int32 `[len(item_vocabulary) + 1]`: item id -> corpus row,
      -1 for an id with no row (and for OOV, id 0).
    query_id: The query id feature (it picks the stored history).
    query_rows: int32 `[query id vocabulary size + 1]`: query id -> row of
      `stored`, -1 for none.
    stored: int32 `[num_queries, N]`: each query's history at export,
      corpus rows latest first, padded with PAD.
  """

  length: int
  item_id: str
  item_vocabulary: tuple[str, ...]
  item_rows: np.ndarray
  query_id: str
  query_rows: np.ndarray
  stored: np.ndarray


def history_input(
  prepared: contract.PreparedDataset, length: int
) -> HistoryInput | None:
  """The `HistoryInput` of a run (None when `length` is 0).

  The stored histories are what the system knows at export: each user's
  training and validation items, the latest `length`, the histories the
  test split is scored with (`history.evaluation_histories`).
  """
  if length <= 0:
    return None
  schema = prepared.schema
  item_vocabulary = tuple(prepared.vocabularies[schema.item_id])
  item_rows = np.full(len(item_vocabulary) + 1, contract.PAD, np.int32)
  item_ids = np.asarray(prepared.items[schema.item_id])
  item_rows[item_ids] = np.arange(item_ids.shape[0], dtype=np.int32)
  item_rows[contract.OOV] = contract.PAD
  query_ids = np.asarray(prepared.queries[schema.query_id])
  query_rows = np.full(
    prepared.vocabulary_size(schema.query_id), contract.PAD, np.int32
  )
  query_rows[query_ids] = np.arange(query_ids.shape[0], dtype=np.int32)
  query_rows[contract.OOV] = contract.PAD
  # Exactly the histories the test split is scored with.
  stored = history.evaluation_histories(prepared, "test", length)
  return HistoryInput(
    length=int(length),
    item_id=schema.item_id,
    item_vocabulary=item_vocabulary,
    item_rows=item_rows,
    query_id=schema.query_id,
    query_rows=query_rows,
    stored=stored,
  )


def history_strings(rows: np.ndarray, item_keys: Sequence[str]) -> np.ndarray:
  """History rows back to the strings a client sends (the inverse of the
  exported tower's parsing).

  Args:
    rows: int `[R, N]` corpus rows, latest first, padded with PAD.
    item_keys: The item id of every corpus row.

  Returns:
    object array `[R]` of item ids `|`-joined, oldest first; a row without
    items gives `NO_HISTORY`, so that the tower reads it empty rather than
    the user's stored history.

  Example:
    Rows `[[2, 0, -1], [-1, -1, -1]]` with keys `["a", "b", "c"]` give
    `["a|c", "|"]`.
  """
  keys = np.asarray(item_keys, dtype=object)
  return np.array(
    [
      MULTI_SEPARATOR.join(keys[r[r >= 0]][::-1]) or NO_HISTORY
      for r in np.asarray(rows)
    ],
    dtype=object,
  )


class RawFeatureTower(tf.Module):
  """A tower over integer ids, fronted by string lookups.

  Args:
    tower: Maps a dict of int32 ids ([B] or [B, L] padded with -1) to
      [B, D] embeddings.
    features: The features the tower reads, in order.
    vocabularies: feature name -> raw values (value v has id v + 1).
    history: For a query tower with a history: how to read the `history`
      input (see the module doc); None for a tower without one.

  Example:
    tower = RawFeatureTower(model.item_tower, schema.item_features, vocabs)
    tower({"movie_id": tf.constant(["1"]), "genres": tf.constant(["Drama"])})
  """

  def __init__(
    self,
    tower: Callable[[Mapping[str, tf.Tensor]], tf.Tensor],
    features: Sequence[contract.Feature],
    vocabularies: Mapping[str, Sequence[str]],
    history: HistoryInput | None = None,
  ):
    super().__init__()
    self.tower = tower
    self._features = tuple(features)
    self._history = history
    self.tables = {}
    for feature in self._features:
      self.tables[feature.name] = _vocabulary_table(vocabularies[feature.name])
    if history is not None:
      if history.query_id not in self.tables:
        raise ValueError(
          f"A tower with a history needs the query id {history.query_id!r} "
          f"among its features {[f.name for f in self._features]}."
        )
      self.item_ids = _vocabulary_table(history.item_vocabulary)
      # Data, not weights: constants of the saved graph.
      self._item_rows = tf.constant(history.item_rows, tf.int32)
      self._query_rows = tf.constant(history.query_rows, tf.int32)
      # One PAD row past the end, read by queries without a stored history.
      self._stored = tf.constant(
        np.concatenate(
          [
            np.asarray(history.stored, np.int32),
            np.full((1, history.length), contract.PAD, np.int32),
          ]
        )
      )
    spec = {
      name: tf.TensorSpec([None], tf.string, name=name)
      for name in self.input_names
    }
    # Built per instance because the signature depends on the features.
    self.serve = tf.function(self._embed, input_signature=[spec])
    self.ids = tf.function(self._to_ids, input_signature=[spec])

  @property
  def input_names(self) -> list[str]:
    """The string inputs of `serve`: the features, then `history`."""
    names = [f.name for f in self._features]
    return [*names, HISTORY] if self._history is not None else names

  def __call__(self, raw: Mapping[str, tf.Tensor]) -> tf.Tensor:
    return self.serve(raw)

  def _to_ids(self, raw: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    ids = {}
    for feature in self._features:
      table = self.tables[feature.name]
      values = raw[feature.name]
      if feature.multi:
        bags = tf.strings.split(values, MULTI_SEPARATOR)
        bag_ids = tf.ragged.map_flat_values(
          lambda v, t=table: tf.where(
            tf.strings.length(v) > 0, t.lookup(v), contract.PAD
          ),
          bags,
        )
        dense = bag_ids.to_tensor(default_value=contract.PAD)
        # A batch of empty bags still needs one (padding) column.
        width = tf.maximum(tf.shape(dense)[1], 1)
        ids[feature.name] = tf.pad(
          dense,
          [[0, 0], [0, width - tf.shape(dense)[1]]],
          constant_values=contract.PAD,
        )
      else:
        ids[feature.name] = table.lookup(values)
    if self._history is not None:
      ids[HISTORY] = self._history_rows(
        raw[HISTORY], ids[self._history.query_id]
      )
    return ids

  def _history_rows(self, text: tf.Tensor, query_ids: tf.Tensor) -> tf.Tensor:
    """`[B, N]` corpus rows, latest first, of `|`-joined ids oldest first;
    the stored history of a known user where none is given."""
    length = self._history.length
    names = tf.strings.split(text, MULTI_SEPARATOR)
    given = tf.strings.length(text) > 0
    # An unknown id (OOV 0) or an id without a corpus row maps to -1 and
    # drops out, as an unseen value does everywhere.
    rows = names.with_flat_values(
      tf.gather(self._item_rows, self.item_ids.lookup(names.flat_values))
    )
    rows = tf.ragged.boolean_mask(rows, rows >= 0)
    # The latest N, latest first (the twin of `history.latest_items`):
    # column c reads the (c + 1)-th entry from the end of each row.
    ends = rows.row_limits()
    at = (ends - 1)[:, tf.newaxis] - tf.range(length, dtype=ends.dtype)
    valid = at >= rows.row_starts()[:, tf.newaxis]
    # A PAD past the end gives invalid positions an in-range index.
    flat = tf.concat([rows.flat_values, [contract.PAD]], 0)
    outside = tf.shape(flat, out_type=ends.dtype)[0] - 1
    typed = tf.gather(flat, tf.where(valid, at, outside))
    stored_row = tf.gather(self._query_rows, query_ids)
    stored_row = tf.where(
      stored_row >= 0, stored_row, tf.shape(self._stored)[0] - 1
    )
    stored = tf.gather(self._stored, stored_row)
    return tf.where(given[:, tf.newaxis], typed, stored)

  def _embed(self, raw: Mapping[str, tf.Tensor]) -> tf.Tensor:
    return self.tower(self._to_ids(raw))


def _vocabulary_table(vocabulary: Sequence[str]) -> tf.lookup.StaticHashTable:
  """value -> id (value v has id v + 1; anything else OOV)."""
  vocabulary = list(vocabulary)
  return tf.lookup.StaticHashTable(
    tf.lookup.KeyValueTensorInitializer(
      tf.constant(vocabulary, tf.string),
      tf.range(1, len(vocabulary) + 1, dtype=tf.int32),
    ),
    default_value=contract.OOV,
  )


def raw_features(
  table: Mapping[str, np.ndarray],
  features: Sequence[contract.Feature],
  vocabularies: Mapping[str, Sequence[str]],
  rows: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
  """Turns rows of an id table back into the raw strings a user would send.

  Args:
    table: feature name -> int ids ([R] or [R, L] padded with -1).
    features: Which features to convert.
    vocabularies: feature name -> raw values.
    rows: Rows to convert (default all).

  Returns:
    feature name -> object array of strings [len(rows)].
  """
  out = {}
  for feature in features:
    ids = table[feature.name]
    if rows is not None:
      ids = ids[rows]
    lookup = np.array(["", *list(vocabularies[feature.name])], dtype=object)
    if feature.multi:
      out[feature.name] = np.array(
        [MULTI_SEPARATOR.join(lookup[r[r > 0]]) for r in ids], dtype=object
      )
    else:
      out[feature.name] = lookup[np.maximum(ids, 0)]
  return out


def query_features(
  schema: contract.Schema, task: str
) -> tuple[contract.Feature, ...]:
  """The features the query tower reads for a task."""
  return query_side.query_side(task).features(schema)


def export_towers(
  query_tower: Callable,
  item_tower: Callable,
  schema: contract.Schema,
  vocabularies: Mapping[str, Sequence[str]],
  config: config_lib.Config,
  export_dir: str,
  extra_manifest: Mapping | None = None,
  extra_files: Mapping[str, str] | None = None,
  history: HistoryInput | None = None,
) -> dict:
  """Writes query/ and item/ SavedModels and manifest.json, atomically.

  The previous export, if any, stays loadable until the new one is complete.

  Args:
    query_tower: The query tower (int ids to embeddings).
    item_tower: The item tower.
    schema: The data's schema.
    vocabularies: feature name -> raw values.
    config: The run's config (recorded in the manifest).
    export_dir: Where to write (replaced atomically).
    extra_manifest: More manifest entries.
    extra_files: file name -> text, written beside the manifest.
    history: `history_input(prepared, N)` for a query tower with a history
      (the query tower then takes `history`); None for one without.

  Returns:
    The manifest. Its `query_features` lists the query tower's inputs
    (`history` last when it has one); `history_length` is N (0: none).

  Raises:
    ValueError: the query tower has a history but `history` is None.
  """
  if history is None and getattr(query_tower, "history", None) is not None:
    raise ValueError(
      "The query tower reads a history: pass history=history_input(...)."
    )
  query = RawFeatureTower(
    query_tower,
    query_features(schema, config.model.task),
    vocabularies,
    history=history,
  )
  item = RawFeatureTower(item_tower, schema.item_features, vocabularies)
  manifest = {
    "schema": schema.to_dict(),
    "task": config.model.task,
    "query_features": query.input_names,
    "history_length": history.length if history is not None else 0,
    "item_features": [f.name for f in item._features],
    "vocabulary_sizes": {k: len(v) for k, v in vocabularies.items()},
    "output_dim": config.model.output_dim,
    "config": config.to_dict(),
    "versions": versions(),
    "multi_separator": MULTI_SEPARATOR,
    **(extra_manifest or {}),
  }
  with atomic.atomic_dir(export_dir) as tmp:
    for name, module in (("query", query), ("item", item)):
      tf.saved_model.save(
        module,
        os.path.join(tmp, name),
        signatures={SIGNATURE: module.serve},
      )
    atomic.write_json(os.path.join(tmp, "manifest.json"), manifest)
    for name, text in (extra_files or {}).items():
      atomic.write_text(os.path.join(tmp, name), text)
  return manifest


def load_tower(path: str):
  """Loads an exported tower.

  Returns:
    The loaded object; `tower.serve(raw_features)` embeds. Keep the object
    (not just `serve`) alive: it owns the variables and lookup tables.
  """
  return tf.saved_model.load(path)


def read_manifest(export_dir: str) -> dict:
  with open(os.path.join(export_dir, "manifest.json")) as f:
    return json.load(f)


def versions() -> dict[str, str]:
  """Versions of the libraries an artifact was written with."""
  out = {"numpy": np.__version__}
  for package in (
    "tfr_ssl",
    "tensorflow",
    "tf-keras",
    "tensorflow-recommenders",
    "scann",
  ):
    try:
      out[package] = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
      out[package] = "unknown"
  return out
