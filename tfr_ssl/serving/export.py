"""Exports the towers as SavedModels that take raw features.

Training runs on integer ids; users and servers have strings. The exported
towers own the vocabularies as lookup tables, so a serving request carries
raw values: a string per categorical feature and a `|`-joined string per
multi-valued feature (`"Action|Comedy"`), exactly as in the data files.
Unknown values map to the out-of-vocabulary bucket and an empty bag to
padding; the encoder reads both as the feature's unknown embedding, as it
does in training (see features.py).

Layout (WORKDIR/export/):
  query/          SavedModel: {feature: string [B]} -> float32 [B, D]
  item/           SavedModel: {feature: string [B]} -> float32 [B, D]
  manifest.json   schema, vocabulary sizes, dims, config, versions
"""

from __future__ import annotations

import importlib.metadata
import json
import os
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import tensorflow as tf

from tfr_ssl import atomic
from tfr_ssl import config as config_lib
from tfr_ssl.data import contract, query_side

MULTI_SEPARATOR = "|"
SIGNATURE = "serving_default"


class RawFeatureTower(tf.Module):
  """A tower over integer ids, fronted by string lookups.

  Args:
    tower: Maps a dict of int32 ids ([B] or [B, L] padded with -1) to
      [B, D] embeddings.
    features: The features the tower reads, in order.
    vocabularies: feature name -> raw values (value v has id v + 1).

  Example:
    tower = RawFeatureTower(model.item_tower, schema.item_features, vocabs)
    tower({"movie_id": tf.constant(["1"]), "genres": tf.constant(["Drama"])})
  """

  def __init__(
    self,
    tower: Callable[[Mapping[str, tf.Tensor]], tf.Tensor],
    features: Sequence[contract.Feature],
    vocabularies: Mapping[str, Sequence[str]],
  ):
    super().__init__()
    self.tower = tower
    self._features = tuple(features)
    self.tables = {}
    for feature in self._features:
      vocabulary = list(vocabularies[feature.name])
      self.tables[feature.name] = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(
          tf.constant(vocabulary, tf.string),
          tf.range(1, len(vocabulary) + 1, dtype=tf.int32),
        ),
        default_value=contract.OOV,
      )
    spec = {
      f.name: tf.TensorSpec([None], tf.string, name=f.name)
      for f in self._features
    }
    # Built per instance because the signature depends on the features.
    self.serve = tf.function(self._embed, input_signature=[spec])
    self.ids = tf.function(self._to_ids, input_signature=[spec])

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
    return ids

  def _embed(self, raw: Mapping[str, tf.Tensor]) -> tf.Tensor:
    return self.tower(self._to_ids(raw))


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
) -> dict:
  """Writes query/ and item/ SavedModels and manifest.json, atomically.

  The previous export, if any, stays loadable until the new one is complete.

  Returns:
    The manifest.
  """
  query = RawFeatureTower(
    query_tower, query_features(schema, config.model.task), vocabularies
  )
  item = RawFeatureTower(item_tower, schema.item_features, vocabularies)
  manifest = {
    "schema": schema.to_dict(),
    "task": config.model.task,
    "query_features": [f.name for f in query._features],
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
