"""The served retrieval model: query tower + index in one SavedModel.

`save_retrieval_model` writes one SavedModel (raw query features in, top-k
ids and scores out) with `manifest.json` next to it; `load_retrieval_model`
imports ScaNN's ops first (a SavedModel holding them loads only then) and
refuses an index whose manifest does not match the model the caller
expects.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from tfr_ssl import atomic
from tfr_ssl.index.search import ExactIndex, ScaNNIndex
from tfr_ssl.serving import export

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
EXCLUDE_KEY = "exclude"
EXCLUDE_SIGNATURE = "exclude"


class IndexMismatchError(ValueError):
  """A saved index that does not belong to the model the caller expects."""


class _RetrievalModule(tf.Module):
  """Query tower + index; its tf.functions become the served signatures."""

  def __init__(self, query_model, searcher, k: int):
    super().__init__()
    self.query_model = query_model
    self.searcher = searcher
    self._k = k
    self._num_items = searcher.num_items

  def _embed(self, features):
    return _query_function(self.query_model)(features)

  @tf.function
  def retrieve(self, features):
    """{"scores": [B, k], "ids": [B, k]} of raw query features."""
    scores, ids = _clean(*self.searcher.search(self._embed(features), self._k))
    return {"scores": scores, "ids": ids}

  @tf.function
  def retrieve_excluding(self, features, exclude):
    """Like `retrieve`, minus the ids in `exclude` [B, E] (padded with "")."""
    # Over-fetch by E so that k results survive even if all E are in them.
    fetch = tf.minimum(self._k + tf.shape(exclude)[1], self._num_items)
    scores, ids = self.searcher.search(self._embed(features), fetch)
    excluded = tf.reduce_any(
      tf.logical_and(
        tf.equal(ids[:, :, tf.newaxis], exclude[:, tf.newaxis, :]),
        tf.not_equal(exclude, "")[:, tf.newaxis, :],
      ),
      axis=-1,
    )
    scores = tf.where(excluded, tf.constant(np.nan, scores.dtype), scores)
    scores, ids = _clean(scores, ids)
    scores, columns = tf.math.top_k(scores, k=self._k)
    return {"scores": scores, "ids": tf.gather(ids, columns, batch_dims=1)}


def _clean(scores, ids):
  """Missing results (NaN: ScaNN padding or excluded) -> score -inf, id ""."""
  missing = tf.math.is_nan(scores)
  return (
    tf.where(missing, tf.constant(-np.inf, scores.dtype), scores),
    tf.where(missing, tf.constant(""), ids),
  )


def _query_function(query_model):
  """The callable of a query model: itself, or its `serve` function.

  A loaded export (what `tf.saved_model.load` returns) may only offer
  `serve`; the object itself must be passed so that the new SavedModel
  tracks its variables and tables.
  """
  if isinstance(query_model, tf.types.experimental.GenericFunction):
    raise ValueError(
      "The query model is a bare tf.function; pass the object that owns it "
      "(a tf_keras model, a tf.Module, or what tf.saved_model.load "
      "returned), so that its variables and lookup tables are saved too."
    )
  if callable(query_model):
    return query_model
  serve = getattr(query_model, "serve", None)
  if serve is None:
    raise ValueError(
      f"The query model {type(query_model).__name__} is not callable and "
      "has no `serve` function."
    )
  return serve


def _feature_names(query_model, manifest: Mapping[str, Any]) -> list[str]:
  names = manifest.get("query_features")
  if names is None:
    names = getattr(query_model, "input_names", None)
  if not names:
    raise ValueError(
      "save_retrieval_model needs the raw query feature names: pass "
      "manifest['query_features'] (or a functional query model with named "
      "dict inputs)."
    )
  names = [str(n) for n in names]
  if EXCLUDE_KEY in names:
    raise ValueError(
      f"A query feature is named {EXCLUDE_KEY!r}, which the exclude "
      "signature reserves."
    )
  return names


def save_retrieval_model(
  query_model: tf.keras.Model | tf.Module | None,
  searcher: ExactIndex | ScaNNIndex,
  path: str,
  manifest: Mapping[str, Any],
  k: int,
) -> dict[str, Any]:
  """Writes the retrieval SavedModel and its manifest, atomically.

  Signatures (every input a tf.string tensor of shape [None]):
    * `serving_default`: query features -> {"scores": float [B, k],
      "ids": string [B, k]}.
    * `exclude`: the same plus `exclude`: string [B, E] of item ids to leave
      out per query, padded with "" (served by fetching k + E and
      filtering).
  Rows with fewer than k results are padded with score -inf and id "".

  Args:
    query_model: Raw query features (dict name -> string [B]) to [B, D]
      embeddings: a tf_keras model, a tf.Module, or a loaded SavedModel
      object (called, or through its `serve` function); never a bare
      function, whose variables could not be saved. None uses the
      searcher's own query model.
    searcher: An index from `build_searcher`.
    path: The index directory (WORKDIR/index); replaced atomically.
    manifest: Caller facts recorded in `manifest.json`, checked again on
      load: at least `query_features` (names) unless the query model is a
      functional model with named inputs; typically also `model_id`,
      `schema` and the audit recall.
    k: Results per query (capped at the corpus size).

  Returns:
    The manifest as written.

  Raises:
    ValueError: no query model, unknown feature names, or a query model
      whose embedding width differs from the index's.
  """
  if query_model is None:
    query_model = getattr(searcher, "query_model", None)
    if query_model is None:
      raise ValueError("save_retrieval_model needs a query model.")
  names = _feature_names(query_model, manifest)
  probe = _query_function(query_model)({n: tf.constant([""]) for n in names})
  if probe.shape[-1] != searcher.dim:
    raise ValueError(
      f"The query model produces {probe.shape[-1]}-dim embeddings but the "
      f"index holds {searcher.dim}-dim items."
    )
  k = min(int(k), searcher.num_items)
  module = _RetrievalModule(query_model, searcher, k)
  features = {n: tf.TensorSpec([None], tf.string, name=n) for n in names}
  exclude = tf.TensorSpec([None, None], tf.string, name=EXCLUDE_KEY)
  signatures = {
    "serving_default": module.retrieve.get_concrete_function(features),
    EXCLUDE_SIGNATURE: module.retrieve_excluding.get_concrete_function(
      features, exclude
    ),
  }
  settings = searcher.settings()
  written = {
    **manifest,
    "format_version": FORMAT_VERSION,
    "query_features": names,
    "embedding_dim": searcher.dim,
    "num_items": searcher.num_items,
    "k": k,
    "index": settings,
    "signatures": {
      "serving_default": names,
      EXCLUDE_SIGNATURE: [*names, EXCLUDE_KEY],
    },
    "versions": {**export.versions(), **manifest.get("versions", {})},
  }
  for key in ("embedding_dim", "num_items"):
    if key in manifest and manifest[key] != written[key]:
      raise ValueError(
        f"manifest[{key!r}] = {manifest[key]!r} but the index has "
        f"{written[key]!r}."
      )
  options = None
  if settings["kind"] == "scann":
    # ScaNN's ops live outside TF's core op namespace.
    options = tf.saved_model.SaveOptions(namespace_whitelist=["Scann"])
  with atomic.atomic_dir(path) as tmp:
    tf.saved_model.save(module, tmp, signatures=signatures, options=options)
    atomic.write_json(os.path.join(tmp, MANIFEST), written)
  return written


def read_manifest(path: str) -> dict[str, Any]:
  """The manifest of the index at `path`.

  Raises:
    IndexMismatchError: `path` has no readable manifest.
  """
  manifest_path = os.path.join(path, MANIFEST)
  try:
    with open(manifest_path) as f:
      return json.load(f)
  except FileNotFoundError:
    raise IndexMismatchError(
      f"{manifest_path} does not exist: {path} is not a retrieval index "
      "written by save_retrieval_model."
    ) from None
  except json.JSONDecodeError as e:
    raise IndexMismatchError(
      f"{manifest_path}, line {e.lineno}: not valid JSON ({e.msg})."
    ) from None


def check_manifest(
  manifest: Mapping[str, Any], expected: Mapping[str, Any], path: str = ""
) -> None:
  """Raises IndexMismatchError naming every expected key that differs."""
  differences = []
  for key, value in expected.items():
    if key not in manifest:
      differences.append(f"{key}: index has none, expected {value!r}")
    elif _normalise(manifest[key]) != _normalise(value):
      differences.append(
        f"{key}: index has {manifest[key]!r}, expected {value!r}"
      )
  if differences:
    raise IndexMismatchError(
      f"The index at {path or '<unknown>'} was built for a different model; "
      + "; ".join(differences)
      + ". Rebuild the index from this model's exported towers."
    )


def _normalise(value):
  """JSON round trip, so tuples equal lists and keys are strings."""
  return json.loads(json.dumps(value, sort_keys=True))


class RetrievalModel:
  """A loaded retrieval SavedModel with its manifest.

  Calls return `(scores, ids)` like a TFRS top-k layer.

  Args:
    loaded: The object `tf.saved_model.load` returned.
    manifest: Its manifest.

  Example:
    >>> model = load_retrieval_model("workdir/index")
    >>> scores, ids = model({"user_id": ["42"]}, exclude=[["7", "9"]])
    >>> ids[0]
  """

  def __init__(self, loaded, manifest: Mapping[str, Any]):
    self.loaded = loaded
    self.manifest = dict(manifest)
    self.query_features = list(manifest["query_features"])
    self.k = int(manifest["k"])

  def __call__(
    self,
    features: Mapping[str, Any],
    exclude: Sequence[Sequence[str]] | np.ndarray | tf.Tensor | None = None,
  ) -> tuple[tf.Tensor, tf.Tensor]:
    """Top-k (scores float [B, k], ids string [B, k]) of raw query features.

    Args:
      features: Feature name -> B string values (one per query).
      exclude: Optional item ids to leave out, one list per query; lists of
        different lengths are padded with "".

    Raises:
      ValueError: feature names that differ from the index's, or an
        exclude list per query that does not match the batch.
    """
    missing = sorted(set(self.query_features) - set(features))
    unknown = sorted(set(features) - set(self.query_features))
    if missing or unknown:
      raise ValueError(
        f"Query features do not match the index: missing {missing}, "
        f"unknown {unknown}; expected {self.query_features}."
      )
    inputs = {n: _strings(features[n]) for n in self.query_features}
    if exclude is None:
      out = self.loaded.signatures["serving_default"](**inputs)
    else:
      batch = int(next(iter(inputs.values())).shape[0])
      exclude = _pad_exclude(exclude, batch)
      out = self.loaded.signatures[EXCLUDE_SIGNATURE](
        **inputs, **{EXCLUDE_KEY: exclude}
      )
    return out["scores"], out["ids"]


def _strings(values) -> tf.Tensor:
  """`values` (strings, any shape) as a 1-D string tensor.

  Each eager op costs tens to hundreds of microseconds, a noticeable part
  of a one-query call: a tensor that is already a 1-D string tensor is used
  as it is, Python values become one constant, and only another rank is
  reshaped.
  """
  tensor = values
  if not isinstance(tensor, tf.Tensor):
    tensor = tf.constant(values, tf.string)
  elif tensor.dtype != tf.string:
    tensor = tf.convert_to_tensor(tensor, tf.string)  # Raises as before.
  if tensor.shape.rank != 1:
    tensor = tf.reshape(tensor, [-1])
  return tensor


def _pad_exclude(exclude, batch: int) -> tf.Tensor:
  """[B, E] string tensor from per-query lists of any lengths."""
  if isinstance(exclude, tf.Tensor):
    exclude = exclude.numpy()
  rows = [
    [v.decode() if isinstance(v, bytes) else str(v) for v in row]
    for row in exclude
  ]
  if len(rows) != batch:
    raise ValueError(
      f"exclude has {len(rows)} lists for a batch of {batch} queries."
    )
  width = max((len(row) for row in rows), default=0)
  padded = np.full((batch, width), "", dtype=object)
  for i, row in enumerate(rows):
    padded[i, : len(row)] = row
  return tf.constant(padded.astype(str).reshape(batch, width), tf.string)


def load_retrieval_model(
  path: str, expected_manifest: Mapping[str, Any] | None = None
) -> RetrievalModel:
  """Loads a retrieval SavedModel, refusing one built for another model.

  Args:
    path: The index directory.
    expected_manifest: Keys the manifest must match, e.g. `model_id`,
      `embedding_dim`, `query_features`, `schema`; None checks nothing.

  Returns:
    A callable `RetrievalModel`.

  Raises:
    IndexMismatchError: no manifest, or one that differs from the expected.
  """
  # Registers the ScaNN ops that a ScaNN index's graph refers to.
  import scann  # noqa: F401

  manifest = read_manifest(path)
  if expected_manifest:
    check_manifest(manifest, expected_manifest, path)
  return RetrievalModel(tf.saved_model.load(path), manifest)
