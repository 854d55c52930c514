"""Tuning ScaNN's search-time settings on sample queries (see `choice.py`).

Both knobs that set the cost of a ScaNN search are search-time settings of
one built tree: leaves_to_search (how many partitions a query scores) and
the reordering depth (how many of the best quantized scores are re-scored
exactly). So one tree is built and the ladders below are tried on it:

  * reorder: multiples of k. Re-scoring more candidates can only raise
    recall (the best r quantized scores contain the best r' < r), and
    costs one exact dot product per candidate: at 1M items re-scoring
    10,000 per query ran at 7.5x exact search, 1,000 at 36x, with the
    same recall@10 (bench/results/index_1m.md). A value that re-scores
    half of the corpus or more is never tried: that is exact search with
    a tree search on top.
  * leaves_to_search: shares of the leaves, never fewer than the leaves
    that hold 20 corpus points per requested result. How many a query
    needs depends on how queries sit relative to the item clusters (10%
    of the leaves gave recall@10 0.98 for queries that look like items,
    0.85 for queries that do not), so it is measured, not fixed.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import numpy as np
import tensorflow as tf

from tfr_ssl.index import audit as index_audit

# Searched leaves should hold this many corpus points per requested result.
_POINTS_PER_RESULT = 20
# The recall that the floor applies to: recall@10 against exact search (or
# @k when fewer than 10 results are returned).
RECALL_AT = 10
# Shares of the leaves tried for leaves_to_search.
_LEAVES_LADDER = (0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0)
# Multiples of k tried for the reordering depth.
_REORDER_LADDER = (1, 3, 10, 30, 100)


class TunableSearcher(Protocol):
  """What tuning needs of a built searcher (`search.ScaNNIndex` is one):
  its config and a search that takes the two settings per call."""

  def get_config(self) -> dict[str, Any]: ...

  def search(
    self,
    embeddings: tf.Tensor,
    k: int,
    leaves_to_search: int | None = None,
    reorder: int | None = None,
  ) -> tuple[tf.Tensor, tf.Tensor]: ...


def recall_at(k: int) -> int:
  """The cut-off of the recall floor for an index returning k results."""
  return min(RECALL_AT, k)


def min_leaves(num_items: int, num_leaves: int, k: int) -> int:
  """Leaves that hold on average 20 corpus points per requested result."""
  return math.ceil(_POINTS_PER_RESULT * k * num_leaves / num_items)


def leaves_ladder(num_items: int, num_leaves: int, k: int) -> list[int]:
  """The leaves_to_search values tried, ascending (see module doc)."""
  floor = min_leaves(num_items, num_leaves, k)
  return sorted(
    {
      min(num_leaves, max(floor, math.ceil(f * num_leaves)))
      for f in _LEAVES_LADDER
    }
  )


def reorder_ladder(num_items: int, k: int) -> list[int]:
  """The reordering depths tried, ascending: multiples of k that re-score
  less than half of the corpus (empty when even k would not)."""
  return [m * k for m in _REORDER_LADDER if 2 * m * k < num_items]


def fewest_leaves(
  searcher: TunableSearcher,
  queries: tf.Tensor,
  exact_ids: np.ndarray,
  k: int,
  reorder: int,
  ladder: list[int],
  floor: float,
) -> dict[int, float]:
  """Climbs the ladder of leaves_to_search until recall reaches the floor.

  Args:
    searcher: A built ScaNN searcher.
    queries: float [Q, D] tuning queries.
    exact_ids: Identifiers of their exact top `recall_at(k)`, [Q, cut].
    k: Results per search (the index's k).
    reorder: The reordering depth of every search.
    ladder: leaves_to_search values to try, ascending.
    floor: The recall@`recall_at(k)` to reach.

  Returns:
    leaves_to_search -> recall of every value tried, in order; the last is
    the first that reached the floor, or the top of the ladder.
  """
  cut = exact_ids.shape[1]
  tried = {}
  for leaves in ladder:
    _, found = searcher.search(queries, k, leaves, reorder)
    tried[leaves] = index_audit.recall_against(found.numpy(), exact_ids, cut)
    if tried[leaves] >= floor:
      break
  return tried
