"""Tuning ScaNN's leaves_to_search on sample queries (see `index.py`).

How many leaves a query must search depends on how queries sit relative to
the item clusters, so `index.build_searcher` hands a sample of query
embeddings here: a ladder of shares of the leaves is tried with ScaNN's
search-time override (the tree is built once), and the smallest whose
recall@k against exact search reaches the target is kept.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Protocol

import numpy as np
import tensorflow as tf

from tfr_ssl.index import audit as index_audit


class TunableSearcher(Protocol):
  """What tuning needs of a searcher (`index.ScaNNIndex` is one): its
  config, a search-time leaves_to_search, a search, and a place for the
  tuning record."""

  num_leaves_to_search: int
  tuning: dict

  def get_config(self) -> dict[str, Any]: ...

  def search(
    self, queries: tf.Tensor, k: int
  ) -> tuple[tf.Tensor, tf.Tensor]: ...


# Searched leaves should hold this many corpus points per requested result.
_POINTS_PER_RESULT = 20
TARGET_RECALL = 0.95
# Shares of the leaves tried when tuning leaves_to_search on sample queries.
_LEAVES_LADDER = (0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0)

_log = logging.getLogger(__name__)


def min_leaves(num_items: int, num_leaves: int, k: int) -> int:
  """Leaves that hold on average 20 corpus points per requested result."""
  return math.ceil(_POINTS_PER_RESULT * k * num_leaves / num_items)


def tune_leaves_to_search(
  searcher: TunableSearcher,
  query_embeddings: np.ndarray,
  item_embeddings: np.ndarray,
  k: int,
  target_recall: float = TARGET_RECALL,
) -> int:
  """Sets the fewest leaves_to_search whose recall@k reaches the target.

  Tries shares of the leaves from `_LEAVES_LADDER` (never fewer than the
  leaves that hold 20 points per result) with ScaNN's search-time override,
  so the tree is not rebuilt. The recall of every tried value is kept in
  `searcher.tuning` and written to the manifest.

  Args:
    searcher: A built `ScaNNIndex`.
    query_embeddings: float [Q, D] sample queries.
    item_embeddings: float [N, D], the indexed embeddings.
    k: Cut-off of the recall.
    target_recall: Recall@k to reach; all leaves if none reaches it.

  Returns:
    The chosen number of leaves to search.
  """
  queries = np.asarray(query_embeddings, np.float32)
  items = np.asarray(item_embeddings, np.float32)
  k = min(k, items.shape[0])
  num_leaves = searcher.get_config()["num_leaves"]
  floor = min_leaves(items.shape[0], num_leaves, k)
  ladder = sorted(
    {
      min(num_leaves, max(floor, math.ceil(f * num_leaves)))
      for f in _LEAVES_LADDER
    }
  )
  exact_ids = index_audit.exact_ids(searcher, queries, items, k)
  searcher.tuning = {}
  for leaves in ladder:
    searcher.num_leaves_to_search = leaves
    _, found = searcher.search(tf.constant(queries), k)
    searcher.tuning[leaves] = index_audit.recall_against(
      found.numpy(), exact_ids, k
    )
    if searcher.tuning[leaves] >= target_recall:
      break
  _log.info(
    "ScaNN leaves_to_search tuning (leaves: recall@%d): %s", k, searcher.tuning
  )
  return searcher.num_leaves_to_search
