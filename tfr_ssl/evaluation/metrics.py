"""Full-corpus retrieval metrics: Recall@K and MAP@K, overall and by slice.

Every held-out (query, item) pair is scored against the whole corpus with
exact search: one batched matmul per block of distinct queries, the items the
query saw in training masked to -inf by a scatter into the score matrix, and
one `tf.math.top_k` with the largest K. Each pair then only needs the position
of its item in that top-K row, and every smaller K, Recall and MAP alike, is
read off the same positions. Each distinct query is scored once however many
held-out pairs it has.

This replaces `tfrs.metrics.FactorizedTopK` over a `Streaming` index for
offline evaluation: Streaming re-reads the candidate dataset and merges
partial top-K lists per query batch, and cannot exclude training items; here
the corpus stays one in-memory matrix (see bench/results/eval.md for the
speed-up).

Conventions:
  * Ranks are 0-based positions in the top-K list; ties between equal scores
    go to the lower corpus row (the order `tf.math.top_k` returns).
  * `exclude` lists, per query, the items it is known to like already (see
    eval_pairs.py: its training positives, and its validation positives
    when scoring the test split); they are masked out of its ranking. A
    held-out item that is also in that list stays scoreable for that query:
    only the *other* known items are masked
    (`eval_csr.exclusion_without_targets`). Excluding it would make such a
    pair an automatic miss that says nothing about the model. The result
    reports how often this happened (`num_pairs_target_in_train`, "train"
    standing for every excluded split). Item-to-item pairs never get here
    that way: `eval_pairs.select_pairs` drops them first.
  * Recall@K is per pair (a query with three held-out items counts three
    times; `eval_pairs.select_pairs` gives each (query, item) pair once).
    MAP@K is per distinct query: average precision over its distinct
    held-out items, normalised by `min(K, number of its held-out items)`.
  * Slices (head / tail / cold, popularity deciles) are those of
    eval_slices.py over the training counts given (the rows the task trains
    on: `QuerySide.item_train_count`); recall is reported for each, with
    the slice's corpus items (`num_items`), the distinct items of its
    pairs (`num_held_out_items`) and its pairs.
  * The most-popular baseline (`evaluate_most_popular`) ranks every item by
    training count (ties to the lower row), the same fixed ranking for
    every query, with the same exclusions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from tfr_ssl import atomic
from tfr_ssl.data import csr as eval_csr
from tfr_ssl.evaluation import slices as eval_slices

# Cap on the scores matrix of one block ([queries, items] float32 entries):
# 2**26 entries are 256 MB, so a large corpus gets fewer queries per block.
_MAX_BLOCK_SCORES = 1 << 26


class EvaluationInputError(ValueError):
  """Inputs of `evaluate_embeddings` that do not fit together."""


@tf.function(
  input_signature=[
    tf.TensorSpec([None, None], tf.float32),  # query embeddings [B, D]
    tf.TensorSpec([None, None], tf.float32),  # item embeddings [N, D]
    tf.TensorSpec([None, 2], tf.int32),  # excluded (row in block, item)
    tf.TensorSpec([None], tf.int32),  # row in block of each pair [P_b]
    tf.TensorSpec([None], tf.int32),  # item of each pair [P_b]
    tf.TensorSpec([], tf.int32),  # K of the top-k
  ]
)
def _target_positions(queries, items, excluded, pair_row, pair_item, k):
  """Position of each pair's item in its query's top-k list (k if absent)."""
  scores = tf.matmul(queries, items, transpose_b=True)
  masked = tf.fill(tf.shape(excluded)[:1], float("-inf"))
  scores = tf.tensor_scatter_nd_update(scores, excluded, masked)
  _, top = tf.math.top_k(scores, k=k)
  # A pair's item occurs at most once in its row: argmax finds where.
  hits = tf.equal(tf.gather(top, pair_row), pair_item[:, tf.newaxis])
  position = tf.argmax(tf.cast(hits, tf.int32), axis=1, output_type=tf.int32)
  return tf.where(tf.reduce_any(hits, axis=1), position, k)


def evaluate_embeddings(
  query_embeddings: np.ndarray,
  item_embeddings: np.ndarray,
  pairs_query: np.ndarray,
  pairs_item: np.ndarray,
  exclude: tuple[np.ndarray, np.ndarray] | None = None,
  item_train_count: np.ndarray | None = None,
  ks: Sequence[int] = (10, 50, 100),
  head_fraction: float = 0.1,
  batch_size: int = 1024,
  pair_slices: Mapping[str, np.ndarray] | None = None,
) -> dict[str, Any]:
  """Full-corpus Recall@K and MAP@K of held-out pairs, overall and by slice.

  User-to-item: one query row per user, `pairs_query` names the user of each
  held-out pair and `exclude` holds the users' known positives (see
  `eval_pairs.select_pairs`). Item-to-item: one query row per distinct seed
  item, `exclude` holding the seed itself.

  Args:
    query_embeddings: float [Q, D], one row per query.
    item_embeddings: float [N, D], one row per corpus item.
    pairs_query: int [P], query row of each held-out pair.
    pairs_item: int [P], corpus row of each held-out item.
    exclude: CSR `(indptr int [Q + 1], indices int [nnz])` of the corpus rows
      each query already knows (its training positives, and on the test
      split its validation positives too); they are masked out of its
      ranking, except the query's own held-out items (see the module
      docstring). None masks nothing.
    item_train_count: int [N], training occurrences per item; enables the
      head / tail / cold and decile slices. None skips the slices.
    ks: Cut-offs K of Recall@K and MAP@K.
    head_fraction: Share of the items seen in training called head.
    batch_size: Distinct queries scored per matmul (fewer on a corpus so
      large that the [batch, N] score matrix would exceed 256 MB).
    pair_slices: Optional name -> bool [P]: more slices of the pairs (e.g.
      by the query user's activity), reported under `user_slices` with
      their pairs, queries and recall@K.

  Returns:
    A JSON-ready dict: `recall@K` and `map@K` for every K, counts
    (`num_pairs`, `num_queries`, `num_items`, `num_pairs_target_in_train`),
    and with `item_train_count` also `slices` (head / tail / cold: number of
    corpus items, of held-out items, of pairs, `recall@K`) and `deciles` (a
    list of 10 such rows plus the decile's train-count range). Recall of an
    empty slice is None.

  Raises:
    EvaluationInputError: shapes, ranges or values that do not fit together.

  Example:
    >>> m = evaluate_embeddings(q, items, pairs_query, pairs_item,
    ...                         exclude=data.train_items_by_query,
    ...                         item_train_count=data.item_train_count)
    >>> m["recall@10"], m["slices"]["tail"]["recall@10"]
  """
  queries, items, pairs_query, pairs_item, ks = _check_inputs(
    query_embeddings, item_embeddings, pairs_query, pairs_item, ks, batch_size
  )
  num_items = items.shape[0]
  if exclude is not None:
    exclude = _check_csr(exclude, queries.shape[0], num_items)
  if item_train_count is not None and np.shape(item_train_count) != (
    num_items,
  ):
    raise EvaluationInputError(
      f"item_train_count must have one entry per item ({num_items}), got "
      f"shape {np.shape(item_train_count)}."
    )
  k_max = min(ks[-1], num_items)
  positions, target_in_train = _positions(
    queries, items, pairs_query, pairs_item, exclude, k_max, batch_size
  )

  metrics = _metrics_from_positions(
    positions, pairs_query, pairs_item, ks, item_train_count, head_fraction
  )
  _add_pair_slices(metrics, pair_slices, positions, pairs_query, ks)
  metrics["num_items"] = int(num_items)
  metrics["num_pairs_target_in_train"] = int(target_in_train)
  return metrics


def metrics_from_topk(
  topk_rows: np.ndarray,
  pairs_query: np.ndarray,
  pairs_item: np.ndarray,
  item_train_count: np.ndarray | None = None,
  ks: Sequence[int] = (10, 50, 100),
  head_fraction: float = 0.1,
) -> dict[str, Any]:
  """The metrics of `evaluate_embeddings` from ready-made top-k lists.

  For retrieval that happened elsewhere, e.g. through the saved index. The
  exclusion is whatever produced the lists did: the index's `exclude`
  signature drops every listed id, so give it lists from
  `eval_csr.exclusion_without_targets` to keep the convention of
  `evaluate_embeddings` (a pair's own item stays rankable), as
  `workflow.evaluate_run` does.

  Args:
    topk_rows: int [Q, K'], corpus rows retrieved per query, best first;
      -1 (or any row that is no held-out item) fills missing results.
    pairs_query: int [P], row of `topk_rows` of each held-out pair.
    pairs_item: int [P], corpus row of each held-out item.
    item_train_count: int [N], enables the slices (as in
      `evaluate_embeddings`).
    ks: Cut-offs; each must be at most K'.
    head_fraction: Share of the items seen in training called head.

  Returns:
    The same dict as `evaluate_embeddings` (without
    `num_pairs_target_in_train`; `num_items` only with item_train_count).

  Raises:
    EvaluationInputError: a K beyond the lists, or pairs out of range.
  """
  topk_rows = np.asarray(topk_rows)
  if topk_rows.ndim != 2:
    raise EvaluationInputError(
      f"topk_rows must be [queries, k], got shape {topk_rows.shape}."
    )
  pairs_query, pairs_item = _check_pairs(
    pairs_query, pairs_item, topk_rows.shape[0], None
  )
  ks = _check_ks(ks)
  if ks[-1] > topk_rows.shape[1]:
    raise EvaluationInputError(
      f"ks {ks} need top-k lists of at least {ks[-1]} columns; topk_rows "
      f"has {topk_rows.shape[1]}."
    )
  k_max = ks[-1]
  hits = topk_rows[pairs_query, :k_max] == pairs_item[:, np.newaxis]
  positions = np.where(hits.any(axis=1), hits.argmax(axis=1), k_max)
  metrics = _metrics_from_positions(
    positions, pairs_query, pairs_item, ks, item_train_count, head_fraction
  )
  if item_train_count is not None:
    metrics["num_items"] = int(np.asarray(item_train_count).shape[0])
  return metrics


def most_popular_positions(
  item_train_count: np.ndarray,
  pairs_query: np.ndarray,
  pairs_item: np.ndarray,
  exclude: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
  """Position of each pair's item in the most-popular ranking of its query.

  Every query ranks the corpus by training count, descending, ties to the
  lower row; its excluded items are skipped. The position of item t for
  query q is t's place in that fixed order minus the number of q's excluded
  items ahead of it, so nothing of size [queries, items] is built: the cost
  is one sort of the corpus and one of the exclusion entries.

  Args:
    item_train_count: int [N], training occurrences of each corpus row.
    pairs_query: int [P], query row of each held-out pair.
    pairs_item: int [P], corpus row of each held-out item.
    exclude: CSR (indptr [Q + 1], indices [nnz]) of the corpus rows removed
      from each query's ranking, used as given (a target listed there is
      still ranked; drop targets first with
      `eval_csr.exclusion_without_targets`).

  Returns:
    int64 [P], 0-based positions (no cut-off).
  """
  count = np.asarray(item_train_count).astype(np.int64)
  pairs_query = np.asarray(pairs_query).astype(np.int64, copy=False)
  pairs_item = np.asarray(pairs_item).astype(np.int64, copy=False)
  n = count.shape[0]
  rows = np.arange(n, dtype=np.int64)
  rank = np.empty(n, np.int64)
  rank[np.lexsort((rows, -count))] = rows
  position = rank[pairs_item]
  if exclude is None:
    return position
  indptr = np.asarray(exclude[0]).astype(np.int64, copy=False)
  indices = np.asarray(exclude[1]).astype(np.int64, copy=False)
  num_queries = indptr.shape[0] - 1
  # One sorted key per distinct (query, rank of excluded item): the entries
  # of query q with a rank below r lie between keys q * n and q * n + r.
  owner = np.repeat(np.arange(num_queries, dtype=np.int64), np.diff(indptr))
  keys = eval_csr.sorted_distinct(owner * n + rank[indices])
  ahead = np.searchsorted(keys, pairs_query * n + position) - np.searchsorted(
    keys, pairs_query * n
  )
  return position - ahead


def evaluate_most_popular(
  item_train_count: np.ndarray,
  pairs_query: np.ndarray,
  pairs_item: np.ndarray,
  exclude: tuple[np.ndarray, np.ndarray] | None = None,
  ks: Sequence[int] = (10, 50, 100),
  head_fraction: float = 0.1,
  with_slices: bool = True,
  pair_slices: Mapping[str, np.ndarray] | None = None,
) -> dict[str, Any]:
  """The metrics of `evaluate_embeddings` for the most-popular recommender.

  Same pairs, same exclusions (the pairs' own items stay scoreable), same
  keys; the ranking is the items by training count (ties to the lower row)
  for every query. Handles a million items and a hundred thousand queries
  in memory linear in items + exclusions + pairs.

  Args:
    item_train_count: int [N], training occurrences per corpus row; both
      the ranking and the slices.
    pairs_query: int [P], query row of each held-out pair (rows of
      `exclude`).
    pairs_item: int [P], corpus row of each held-out item.
    exclude: CSR of the corpus rows each query must not be recommended, as
      in `evaluate_embeddings`. None excludes nothing.
    ks: Cut-offs K.
    head_fraction: Share of the seen items called head.
    with_slices: Also report the slices and deciles.
    pair_slices: More slices of the pairs, as in `evaluate_embeddings`.

  Returns:
    The dict of `evaluate_embeddings` (recall@K, map@K, counts, slices).

  Example:
    >>> evaluate_most_popular(data.item_train_count, pairs.query_of_pair,
    ...                       pairs.targets,
    ...                       exclude=pairs.excluded_items)["recall@10"]
  """
  count = np.asarray(item_train_count)
  if count.ndim != 1 or count.shape[0] == 0:
    raise EvaluationInputError(
      f"item_train_count must be a non-empty 1-D array, got {count.shape}."
    )
  num_items = count.shape[0]
  # Without exclusions the queries are not rows of anything: any id goes.
  num_queries = None if exclude is None else np.asarray(exclude[0]).shape[0] - 1
  pairs_query, pairs_item = _check_pairs(
    pairs_query, pairs_item, num_queries, num_items
  )
  ks = _check_ks(ks)
  target_in_train = 0
  if exclude is not None:
    exclude = _check_csr(exclude, num_queries, num_items)
    exclude, target_in_train = eval_csr.exclusion_without_targets(
      exclude, pairs_query, pairs_item
    )
  positions = most_popular_positions(count, pairs_query, pairs_item, exclude)
  positions = np.minimum(positions, min(ks[-1], num_items))
  metrics = _metrics_from_positions(
    positions,
    pairs_query,
    pairs_item,
    ks,
    count if with_slices else None,
    head_fraction,
  )
  _add_pair_slices(metrics, pair_slices, positions, pairs_query, ks)
  metrics["num_items"] = int(num_items)
  metrics["num_pairs_target_in_train"] = int(target_in_train)
  return metrics


def _metrics_from_positions(
  positions, pairs_query, pairs_item, ks, item_train_count, head_fraction
):
  """Recall, MAP and slices from each pair's top-k position."""
  metrics: dict[str, Any] = {
    "ks": list(ks),
    "num_pairs": int(pairs_query.shape[0]),
    "num_queries": int(np.unique(pairs_query).shape[0]),
  }
  for k in ks:
    metrics[f"recall@{k}"] = _recall(positions < k)
  average_precision = _mean_average_precision(
    pairs_query, pairs_item, positions, ks
  )
  for k in ks:
    metrics[f"map@{k}"] = average_precision[k]
  if item_train_count is not None:
    metrics.update(
      _slice_metrics(item_train_count, head_fraction, pairs_item, positions, ks)
    )
  return metrics


def _add_pair_slices(metrics, pair_slices, positions, pairs_query, ks):
  """`metrics["user_slices"]`: recall@K of each named subset of pairs."""
  if not pair_slices:
    return
  out = {}
  for name, mask in pair_slices.items():
    mask = np.asarray(mask, bool)
    if mask.shape != positions.shape:
      raise EvaluationInputError(
        f"pair slice {name!r} has shape {mask.shape}, expected one entry "
        f"per pair {positions.shape}."
      )
    row = {
      "num_pairs": int(mask.sum()),
      "num_queries": int(eval_csr.sorted_distinct(pairs_query[mask]).shape[0]),
    }
    for k in ks:
      row[f"recall@{k}"] = _recall(positions[mask] < k)
    out[name] = row
  metrics["user_slices"] = out


def _check_inputs(queries, items, pairs_query, pairs_item, ks, batch_size):
  queries = np.asarray(queries, np.float32)
  items = np.asarray(items, np.float32)
  if queries.ndim != 2 or items.ndim != 2:
    raise EvaluationInputError(
      "query_embeddings and item_embeddings must be 2-D, got shapes "
      f"{queries.shape} and {items.shape}."
    )
  if queries.shape[1] != items.shape[1]:
    raise EvaluationInputError(
      f"query_embeddings have {queries.shape[1]} dims but item_embeddings "
      f"have {items.shape[1]}."
    )
  if items.shape[0] == 0:
    raise EvaluationInputError("item_embeddings has no rows.")
  for name, value in (
    ("query_embeddings", queries),
    ("item_embeddings", items),
  ):
    if not np.all(np.isfinite(value)):
      raise EvaluationInputError(f"{name} contains NaN or infinite values.")
  pairs_query, pairs_item = _check_pairs(
    pairs_query, pairs_item, queries.shape[0], items.shape[0]
  )
  ks = _check_ks(ks)
  if batch_size < 1:
    raise EvaluationInputError(f"batch_size must be >= 1, got {batch_size}.")
  return queries, items, pairs_query, pairs_item, ks


def _check_pairs(pairs_query, pairs_item, num_queries, num_items):
  """The held-out pairs as int64, checked: 1-D, as many queries as items,
  at least one, rows in range (a bound of None leaves those ids unchecked)."""
  pairs_query = np.asarray(pairs_query).astype(np.int64, copy=False)
  pairs_item = np.asarray(pairs_item).astype(np.int64, copy=False)
  if pairs_query.shape != pairs_item.shape or pairs_query.ndim != 1:
    raise EvaluationInputError(
      "pairs_query and pairs_item must be 1-D of equal length, got shapes "
      f"{pairs_query.shape} and {pairs_item.shape}."
    )
  if pairs_query.shape[0] == 0:
    raise EvaluationInputError("No held-out pairs to evaluate.")
  for name, value, bound in (
    ("pairs_query", pairs_query, num_queries),
    ("pairs_item", pairs_item, num_items),
  ):
    if bound is None:
      continue
    bad = np.flatnonzero((value < 0) | (value >= bound))
    if bad.size:
      raise EvaluationInputError(
        f"{name}[{bad[0]}] = {value[bad[0]]} is outside [0, {bound})."
      )
  return pairs_query, pairs_item


def _check_ks(ks) -> list[int]:
  """The cut-offs, sorted and distinct; at least one, all >= 1."""
  ks = sorted({int(k) for k in ks})
  if not ks or ks[0] < 1:
    raise EvaluationInputError(f"ks must be positive integers, got {ks}.")
  return ks


def _check_csr(exclude, num_queries, num_items):
  indptr, indices = (np.asarray(a).astype(np.int64) for a in exclude)
  if indptr.shape != (num_queries + 1,):
    raise EvaluationInputError(
      f"exclude indptr must have num_queries + 1 = {num_queries + 1} "
      f"entries, got shape {indptr.shape}."
    )
  if indptr[0] != 0 or indptr[-1] != indices.shape[0]:
    raise EvaluationInputError(
      f"exclude indptr must run from 0 to len(indices) = {indices.shape[0]}, "
      f"got {indptr[0]}..{indptr[-1]}."
    )
  if np.any(np.diff(indptr) < 0):
    raise EvaluationInputError("exclude indptr must be non-decreasing.")
  if indices.size and (indices.min() < 0 or indices.max() >= num_items):
    raise EvaluationInputError(
      f"exclude indices must be corpus rows in [0, {num_items})."
    )
  return indptr, indices


def _positions(queries, items, pairs_query, pairs_item, exclude, k, batch_size):
  """Top-k position of every pair's item (k = not retrieved)."""
  num_items = items.shape[0]
  unique_queries, pair_query_rank = np.unique(pairs_query, return_inverse=True)
  pair_query_rank = pair_query_rank.reshape(-1)
  target_in_train = 0
  if exclude is not None:
    # Keep each query's own held-out items scoreable.
    exclude, target_in_train = eval_csr.exclusion_without_targets(
      exclude, pairs_query, pairs_item
    )
  # Pairs grouped by query, so a block of distinct queries owns one
  # contiguous run of pairs.
  order = np.argsort(pair_query_rank, kind="stable")
  starts = np.searchsorted(
    pair_query_rank[order], np.arange(unique_queries.shape[0] + 1)
  )
  block = max(1, min(batch_size, _MAX_BLOCK_SCORES // num_items))
  items_tensor = tf.constant(items)
  positions = np.empty(pairs_query.shape[0], np.int32)
  for first in range(0, unique_queries.shape[0], block):
    last = min(first + block, unique_queries.shape[0])
    block_pairs = order[starts[first] : starts[last]]
    pair_row = pair_query_rank[block_pairs] - first
    pair_item = pairs_item[block_pairs]
    excluded = np.zeros((0, 2), np.int32)
    if exclude is not None:
      rows, cols = eval_csr.csr_entries(exclude, unique_queries[first:last])
      excluded = np.stack([rows, cols], axis=1)
    positions[block_pairs] = _target_positions(
      tf.constant(queries[unique_queries[first:last]]),
      items_tensor,
      tf.constant(excluded, tf.int32),
      tf.constant(pair_row, tf.int32),
      tf.constant(pair_item, tf.int32),
      tf.constant(k, tf.int32),
    ).numpy()
  return positions, target_in_train


def _recall(hit: np.ndarray) -> float | None:
  return float(hit.mean()) if hit.size else None


def _mean_average_precision(pairs_query, pairs_item, positions, ks):
  """MAP@k for every k over distinct queries and their distinct items."""
  width = int(pairs_item.max()) + 1
  _, first = np.unique(pairs_query * width + pairs_item, return_index=True)
  query, position = pairs_query[first], positions[first].astype(np.int64)
  # Within a query, sorted by position: the j-th relevant item (0-based) at
  # position p has precision (j + 1) / (p + 1) at its own cut-off.
  order = np.lexsort((position, query))
  query, position = query[order], position[order]
  _, group, relevant = np.unique(query, return_inverse=True, return_counts=True)
  group_start = np.cumsum(relevant) - relevant
  precision = (np.arange(query.shape[0]) - group_start[group] + 1) / (
    position + 1
  )
  result = {}
  for k in ks:
    hits = np.where(position < k, precision, 0.0)
    per_query = np.bincount(group, hits) / np.minimum(k, relevant)
    result[k] = float(per_query.mean())
  return result


def _slice_metrics(item_train_count, head_fraction, pairs_item, positions, ks):
  count = np.asarray(item_train_count)
  if count.ndim != 1 or pairs_item.max() >= count.shape[0]:
    raise EvaluationInputError(
      "item_train_count must have one entry per corpus item, got shape "
      f"{count.shape} for item rows up to {pairs_item.max()}."
    )
  try:
    slices = eval_slices.item_slices(count, head_fraction)
  except ValueError as error:
    # To evaluate's callers a bad head_fraction is one more input that
    # does not fit: one exception type for all of them.
    raise EvaluationInputError(str(error)) from error

  def summary(item_mask):
    in_slice = item_mask[pairs_item]
    row = {
      "num_items": int(item_mask.sum()),
      "num_held_out_items": int(
        eval_csr.sorted_distinct(pairs_item[in_slice]).shape[0]
      ),
      "num_pairs": int(in_slice.sum()),
    }
    for k in ks:
      row[f"recall@{k}"] = _recall(positions[in_slice] < k)
    return row

  deciles = []
  for decile in range(eval_slices.NUM_DECILES):
    mask = slices["decile"] == decile
    row = {"decile": decile, **summary(mask)}
    row["min_train_count"] = int(count[mask].min()) if mask.any() else None
    row["max_train_count"] = int(count[mask].max()) if mask.any() else None
    deciles.append(row)
  return {
    "head_fraction": float(head_fraction),
    "slices": {name: summary(slices[name]) for name in eval_slices.SLICES},
    "deciles": deciles,
  }


def write_metrics(metrics: Mapping[str, Any], path: str) -> None:
  """Writes a metrics dict as indented JSON, atomically."""
  atomic.write_json(path, dict(metrics))
