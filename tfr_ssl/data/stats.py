"""Statistics of a prepared dataset: item frequencies, seen items, and the
dependence between item features.

The dependence (`feature_dependence`) is what correlated feature masking
(CFM) uses to mask related features together: the plug-in mutual
information of two features minus its own bias, divided by the geometric
mean of their entropies. It is computed from the item table when a model is
built (and when `describe` reports it); the prepared dataset does not store
it.

The plug-in MI underneath (`mutual_information`): for multi-valued features
each item contributes a total weight of 1, spread evenly over the cross
product of its two bags: an item with genres {a, b} and decade {x} adds 1/2
to (a, x) and 1/2 to (b, x). The marginals of that joint are the "spread"
marginals (each value of a bag of size k gets 1/k), so the diagonal, the
entropy of a feature, is consistent with the off-diagonal terms: 0 <= MI(a,
b) <= min(H(a), H(b)). Units are nats. All pairs are accumulated in one
streaming pass over the corpus, chunk by chunk.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from tfr_ssl.data import csr, query_side
from tfr_ssl.data.contract import PAD, PreparedDataset

# Joint tables up to this many cells are accumulated densely (bincount);
# larger ones (e.g. item id x tags) as sparse (code, weight) lists.
_DENSE_CELLS = 1 << 20
_COMPACT_AT = 1 << 22


def item_train_count(item_rows: np.ndarray, num_items: int) -> np.ndarray:
  """int64 [num_items]: how often each corpus row occurs in `item_rows`."""
  return np.bincount(item_rows, minlength=num_items).astype(np.int64)


def items_by_query(
  query_rows: np.ndarray, item_rows: np.ndarray, num_queries: int
) -> tuple[np.ndarray, np.ndarray]:
  """CSR of the distinct items each query interacted with.

  The same CSR as the evaluation's exclusion lists, by the same builder
  (`csr.from_entries`).

  Returns:
    (indptr int64 [num_queries + 1], indices int32 [nnz]); the items of query
    q are `indices[indptr[q]:indptr[q + 1]]`, sorted ascending.
  """
  return csr.from_entries(query_rows, item_rows, num_queries)


def _spread(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """[rows, L] ids and weights; each row's valid entries share weight 1."""
  if ids.ndim == 1:
    return ids[:, None], np.ones((ids.shape[0], 1))
  valid = ids != PAD
  sizes = np.maximum(valid.sum(axis=1, keepdims=True), 1)
  return np.where(valid, ids, 0), valid / sizes


class _Joint:
  """Accumulates weights of (a, b) value pairs, densely or sparsely."""

  def __init__(self, size_a: int, size_b: int):
    self.size_b = size_b
    self.dense = None
    if size_a * size_b <= _DENSE_CELLS:
      self.dense = np.zeros(size_a * size_b)
    self.codes, self.weights, self.pending = [], [], 0

  def add(self, codes: np.ndarray, weights: np.ndarray) -> None:
    if self.dense is not None:
      self.dense += np.bincount(
        codes, weights=weights, minlength=self.dense.shape[0]
      )
      return
    self.codes.append(codes)
    self.weights.append(weights)
    self.pending += codes.shape[0]
    if self.pending > _COMPACT_AT:
      codes, weights = self.compact()
      self.codes, self.weights = [codes], [weights]
      self.pending = codes.shape[0]

  def compact(self) -> tuple[np.ndarray, np.ndarray]:
    """(distinct codes, summed weights)."""
    if self.dense is not None:
      codes = np.flatnonzero(self.dense)
      return codes, self.dense[codes]
    codes = np.concatenate(self.codes)
    unique, inverse = np.unique(codes, return_inverse=True)
    return unique, np.bincount(
      inverse.reshape(-1), weights=np.concatenate(self.weights)
    )


def _entropies_and_mi(
  left: Mapping[str, np.ndarray],
  right: Mapping[str, np.ndarray],
  names: Sequence[str],
  chunk_rows: int,
) -> np.ndarray:
  """[F, F]: entropies of `left` on the diagonal, MI(left[a], right[b]) off it.

  `left` and `right` hold the same columns, possibly with `right`'s rows
  permuted (the independence baseline of `feature_dependence`). Only a < b
  is computed; the matrix is mirrored.
  """
  count = len(names)
  num_items = int(left[names[0]].shape[0]) if count else 0
  sizes = [int(left[n].max(initial=0)) + 1 for n in names]
  marginals = [np.zeros(size) for size in sizes]
  joints = {
    (a, b): _Joint(sizes[a], sizes[b])
    for a in range(count)
    for b in range(a + 1, count)
  }
  for start in range(0, num_items, chunk_rows):
    spread = [_spread(left[n][start : start + chunk_rows]) for n in names]
    other = spread
    if right is not left:
      other = [_spread(right[n][start : start + chunk_rows]) for n in names]
    for f, (ids, weights) in enumerate(spread):
      marginals[f] += np.bincount(
        ids.ravel(), weights=weights.ravel(), minlength=sizes[f]
      )
    for (a, b), joint in joints.items():
      ids_a, w_a = spread[a]
      ids_b, w_b = other[b]
      # The cross product of the two bags of every row: [rows, La, Lb].
      codes = ids_a[:, :, None].astype(np.int64) * sizes[b] + ids_b[:, None]
      weights = w_a[:, :, None] * w_b[:, None, :]
      keep = weights > 0
      joint.add(codes[keep], weights[keep])
  matrix = np.zeros((count, count))
  if num_items == 0:
    return matrix
  probabilities = [m / num_items for m in marginals]
  for f, p in enumerate(probabilities):
    p = p[p > 0]
    matrix[f, f] = -(p * np.log(p)).sum()
  for (a, b), joint in joints.items():
    codes, weights = joint.compact()
    joint_p = weights / num_items
    p_a = probabilities[a][codes // sizes[b]]
    p_b = probabilities[b][codes % sizes[b]]
    value = (joint_p * (np.log(joint_p) - np.log(p_a) - np.log(p_b))).sum()
    matrix[a, b] = matrix[b, a] = max(value, 0.0)
  return matrix


def mutual_information(
  items: Mapping[str, np.ndarray],
  names: Sequence[str],
  chunk_rows: int = 8192,
) -> np.ndarray:
  """The plug-in MI matrix between item features, in one pass.

  Plug-in MI is biased upwards by about (|A| - 1)(|B| - 1) / 2N, so between
  high-cardinality features it is large even when they are independent;
  CFM ranks features by `feature_dependence`, which removes that bias. This
  raw estimate is for analysing a corpus (e.g. checking that one feature
  determines another: MI(a, b) = H(a)), and the paper's dependence that
  `ssl.dependence=raw_mi` compares against.

  Args:
    items: feature name -> ids, [num_items] or [num_items, L] padded with
      PAD (an OOV id 0 is an ordinary value here).
    names: The features, in matrix order.
    chunk_rows: Corpus rows per streamed chunk.

  Returns:
    float32 [F, F], symmetric, MI in nats; the diagonal is each feature's
    entropy.
  """
  return _entropies_and_mi(items, items, names, chunk_rows).astype(np.float32)


def feature_dependence(
  items: Mapping[str, np.ndarray],
  names: Sequence[str],
  seed: int = 0,
  chunk_rows: int = 8192,
) -> np.ndarray:
  """Bias-corrected, normalised dependence between item features (for CFM).

  `D(a, b) = max(0, MI(a, b) - MI(a, shuffled b)) / sqrt(H(a) H(b))`, where
  `shuffled b` is column b with its rows permuted (seeded): independent of
  a by construction, with the same values and cardinalities, so its plug-in
  MI is the estimator's bias at exactly these sizes. The result is 0 for
  independent columns up to sampling noise, 1 for a column and its copy,
  and comparable across features of very different cardinalities.

  Args:
    items: feature name -> ids, as in `mutual_information`.
    names: The features, in matrix order.
    seed: Seed of the row permutation.
    chunk_rows: Corpus rows per streamed chunk.

  Returns:
    float32 [F, F], symmetric, in [0, 1]; the diagonal is 1 (0 for a
    constant feature).
  """
  observed = _entropies_and_mi(items, items, names, chunk_rows)
  count = len(names)
  num_items = int(items[names[0]].shape[0]) if count else 0
  permutation = np.random.default_rng(seed).permutation(num_items)
  shuffled = {n: np.asarray(items[n])[permutation] for n in names}
  baseline = _entropies_and_mi(items, shuffled, names, chunk_rows)
  entropy = np.diag(observed).copy()
  scale = np.sqrt(np.outer(entropy, entropy))
  corrected = np.maximum(observed - baseline, 0.0)
  dependence = np.divide(
    corrected, scale, out=np.zeros_like(corrected), where=scale > 0
  )
  np.fill_diagonal(dependence, (entropy > 0).astype(np.float64))
  return np.clip(dependence, 0.0, 1.0).astype(np.float32)


def key_like_features(
  items: Mapping[str, np.ndarray],
  names: Sequence[str],
  min_distinct_share: float = 0.5,
) -> list[str]:
  """Single-valued features whose distinct values reach a share of the rows.

  Such a feature (an id, a title, a URL) identifies the item almost alone:
  its MI with every other feature is that feature's entropy, so it is the
  "twin" of everything. CFM never uses it as a seed or partner, and the SSL
  views treat it like the item id.
  """
  keys = []
  for name in names:
    values = np.asarray(items[name])
    if values.ndim != 1 or values.shape[0] == 0:
      continue
    distinct = np.unique(values).shape[0]
    if distinct >= min_distinct_share * values.shape[0]:
      keys.append(name)
  return keys


def gini(counts: np.ndarray) -> float:
  """Gini coefficient of non-negative counts (0 = equal, ->1 = skewed)."""
  x = np.sort(np.asarray(counts, dtype=np.float64))
  n, total = x.shape[0], x.sum()
  if n == 0 or total == 0:
    return 0.0
  ranks = np.arange(1, n + 1)
  return float(((2 * ranks - n - 1) * x).sum() / (n * total))


def top_share(counts: np.ndarray, fraction: float = 0.1) -> float:
  """Share of the total held by the top `fraction` of entries."""
  counts = np.asarray(counts, dtype=np.float64)
  total = counts.sum()
  if total == 0:
    return 0.0
  top = max(1, int(np.ceil(counts.shape[0] * fraction)))
  return float(np.sort(counts)[::-1][:top].sum() / total)


def describe(prepared: PreparedDataset) -> dict:
  """Statistics of a prepared dataset, as a JSON-ready dict.

  Keys: version, num_items, num_queries, interactions (per split),
  has_timestamps, features (name, kind, role, vocabulary_size, max_len),
  train_items_seen, top10_share (share of training interactions held by the
  10% most frequent items), gini (of training counts over the corpus),
  cold_items (corpus items in no training interaction: the cold slice of a
  user-to-item evaluation), cold_test_items / cold_test_interactions /
  cold_test_share (the distinct test items among them, the test
  interactions with one, and their share of the test split),
  item_to_item_train (training rows that have a query item, the rows the
  item-to-item task trains on), item_to_item_cold_items (corpus items in
  none of those: the cold slice of an item-to-item evaluation),
  dependence ({features, matrix}: `feature_dependence` of the item
  features, the matrix CFM masks by).
  """
  counts = prepared.item_train_count
  test_items = prepared.splits["test"].item_index
  cold = counts[test_items] == 0
  item_to_item = query_side.query_side(query_side.ITEM_TO_ITEM)
  item_names = [f.name for f in prepared.schema.item_features]
  features = []
  for feature in prepared.schema.features:
    table = prepared.items if feature.role == "item" else prepared.queries
    values = table[feature.name]
    features.append(
      {
        "name": feature.name,
        "kind": feature.kind,
        "role": feature.role,
        "vocabulary_size": prepared.vocabulary_size(feature.name),
        "max_len": int(values.shape[1]) if values.ndim == 2 else 1,
      }
    )
  return {
    "version": prepared.version,
    "num_items": prepared.num_items,
    "num_queries": prepared.num_queries,
    "interactions": {name: len(s) for name, s in prepared.splits.items()},
    "has_timestamps": prepared.splits["train"].timestamp is not None,
    "features": features,
    "train_items_seen": int((counts > 0).sum()),
    "top10_share": top_share(counts, 0.1),
    "gini": gini(counts),
    "cold_items": int((counts == 0).sum()),
    "cold_test_items": int(np.unique(test_items[cold]).shape[0]),
    "cold_test_interactions": int(cold.sum()),
    "cold_test_share": float(cold.mean()) if cold.shape[0] else 0.0,
    "item_to_item_train": int(
      item_to_item.usable(prepared.splits["train"]).shape[0]
    ),
    "item_to_item_cold_items": int(
      (item_to_item.item_train_count(prepared) == 0).sum()
    ),
    "dependence": {
      "features": item_names,
      "matrix": np.round(
        feature_dependence(prepared.items, item_names), 6
      ).tolist(),
    },
  }
