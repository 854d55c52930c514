"""Which held-out pairs an evaluation scores, and what each query must not see.

The one place that selects the pairs of a split and builds their exclusion
lists, for the exact evaluation (`embed.evaluate_model`, used by training-time
validation and `workflow.evaluate_run`), for the evaluation through the saved
index (`workflow._evaluate_through_index`) and for the most-popular baseline,
so that all of them score the same pairs against the same exclusions.

Protocol, in the order applied:
  * The pairs: the rows of the split that have a query (`query_side`):
    user-to-item, the user (`query_index`), every row; item-to-item, the
    query item (`prev_item_index`), rows without one skipped.
  * Duplicates: a (query, item) pair repeated in the split is scored once
    (its first row), or a query with the same item twice would count it
    twice in recall.
  * Seen items (`seen_items`): the (query, item) pairs of the earlier
    splits (train when scoring `validation`, train and validation when
    scoring `test`) are excluded from the query's ranking; item-to-item
    also excludes the seed item itself. A held-out pair that is itself a
    seen pair (a "known pair" in metrics.json):
    user-to-item scores it (the pair's own item stays rankable, counted as
    `num_pairs_target_in_train` by evaluate.py); item-to-item drops it, so
    it is neither rankable for that seed nor scored (see
    `QuerySide.scores_known_pairs`), and counts it.
  * `max_pairs`: a sample of whole queries (uniform, without replacement,
    seeded), each with all its pairs; its size is the number of queries
    that holds `max_pairs` pairs at the average pairs per query. Sampling
    pairs instead would split a query's positives and bias MAP@K down (a
    query whose two items are ranked first and second has AP 1; keep only
    the second and it has AP 1/2). With a fixed number m of the Q queries
    drawn uniformly, each query is in the sample with probability m / Q,
    so the expected sampled MAP is the full MAP; recall, a ratio of hits to
    pairs over the sampled queries, is consistent, with a bias of order
    1 / m. (Drawing queries until a pair budget is reached would not do:
    the stopping point depends on the sizes of the queries drawn, and so
    on their AP.)
  * Training rows dropped by `data.train_fraction` are not known positives
    of anything: with less data they would not exist.

`EvalPairs.selection` records each of these counts for metrics.json.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from tfr_ssl.data import contract, query_side
from tfr_ssl.data import csr as eval_csr

# What `EvalPairs.exclusion_sources` names for the item-to-item exclusion.
SEED_ITEM = "seed_item"


@dataclasses.dataclass(frozen=True)
class EvalPairs:
  """The held-out pairs of one evaluation and their exclusion lists.

  Attributes:
    split: The split the pairs come from.
    task: `user_to_item` or `item_to_item`.
    pair_rows: int64 [P], rows of `prepared.splits[split]`, ascending.
    queries: int [Q], the distinct query rows, ascending: rows of the query
      table (user-to-item) or of the corpus (item-to-item, the seed items).
    query_of_pair: int64 [P], index into `queries` of each pair's query.
    targets: int [P], corpus row of each pair's held-out item.
    excluded_items: CSR (indptr int64 [Q + 1], indices [nnz]) over
      `queries`: row i holds the corpus rows excluded from the ranking of
      `queries[i]`, sorted ascending and distinct (the pairs' own targets
      included; the evaluation keeps those scoreable).
    exclusion_sources: Where `excluded_items` comes from, the names written
      to metrics.json as `excluded`: the earlier splits (`("train",)`,
      `("train", "validation")`), after `"seed_item"` for item-to-item.
    selection: The rules applied and their counts, for metrics.json:
      `pairs_with_a_query`, `duplicates_removed`, `known_pairs` (`scored`
      or `dropped`), `known_pairs_dropped`, `excluded` and `sampling`
      (`unit` `all` or `query`, `max_pairs`, and the numbers of queries and
      pairs kept, `of_queries` and `of_pairs` before sampling).
  """

  split: str
  task: str
  pair_rows: np.ndarray
  queries: np.ndarray
  query_of_pair: np.ndarray
  targets: np.ndarray
  excluded_items: tuple[np.ndarray, np.ndarray]
  exclusion_sources: tuple[str, ...]
  selection: dict = dataclasses.field(default_factory=dict)

  def __len__(self) -> int:
    return int(self.pair_rows.shape[0])

  @property
  def query_rows(self) -> np.ndarray:
    """int [P], the query row of each pair."""
    return self.queries[self.query_of_pair]


def earlier_splits(split: str) -> tuple[str, ...]:
  """The splits whose positives are known when scoring `split`.

  >>> earlier_splits("test")
  ('train', 'validation')
  """
  if split not in contract.SPLITS:
    raise ValueError(
      f"split must be one of {list(contract.SPLITS)}, got {split!r}."
    )
  return contract.SPLITS[: contract.SPLITS.index(split)]


def seen_items(
  prepared: contract.PreparedDataset,
  splits: tuple[str, ...] | list[str],
  queries: np.ndarray,
  task: str = query_side.USER_TO_ITEM,
) -> tuple[np.ndarray, np.ndarray]:
  """The distinct items `queries` were followed by in `splits`, as CSR.

  User-to-item: the items each user interacted with; the training ones
  come from `prepared.train_items_by_query`. Item-to-item: the items that
  followed each seed item (rows whose query item it is). The other splits
  are scanned keeping only the given queries, so the cost follows the
  queries evaluated rather than the whole table.

  Args:
    prepared: The dataset.
    splits: Names of the splits whose positives to collect.
    queries: int [Q] distinct query rows, ascending.
    task: Whose queries they are (`query_side.query_side(task)`).

  Returns:
    (indptr int64 [Q + 1], indices int32 [nnz]): row i holds the distinct
    items of `queries[i]`, ascending.
  """
  side = query_side.query_side(task)
  queries = np.asarray(queries)
  rows, cols = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
  for name in splits:
    if name == "train" and not side.is_item:
      indptr, indices = eval_csr.select_csr_rows(
        prepared.train_items_by_query, queries
      )
      rows.append(np.repeat(np.arange(queries.shape[0]), np.diff(indptr)))
      cols.append(np.asarray(indices, np.int64))
      continue
    interactions = prepared.splits[name]
    query_of = side.query_of(interactions)
    position = np.searchsorted(queries, query_of)
    # Rows without a query (-1) match no query row.
    inside = position < queries.shape[0]
    inside[inside] = queries[position[inside]] == query_of[inside]
    rows.append(position[inside])
    cols.append(np.asarray(interactions.item_index[inside], np.int64))
  return eval_csr.from_entries(
    np.concatenate(rows), np.concatenate(cols), queries.shape[0]
  )


def select_pairs(
  prepared: contract.PreparedDataset,
  split: str,
  task: str = query_side.USER_TO_ITEM,
  max_pairs: int = 0,
  seed: int = 0,
) -> EvalPairs:
  """The pairs of `split` to score, their queries and exclusion lists.

  Applies the protocol of the module docstring: distinct pairs, seen items
  excluded (and, item-to-item, seen pairs dropped), then a
  sample of whole queries.

  Args:
    prepared: The dataset.
    split: `validation` or `test` (`train` is accepted and excludes
      nothing).
    task: `user_to_item` or `item_to_item`.
    max_pairs: Score a uniform sample of whole queries holding about this
      many pairs (0 = all).
    seed: Seed of that sample.

  Returns:
    An `EvalPairs`.

  Raises:
    ValueError: an unknown split or task, or a negative `max_pairs`.
  """
  if max_pairs < 0:
    raise ValueError(f"max_pairs must be >= 0, got {max_pairs}.")
  earlier = earlier_splits(split)
  side = query_side.query_side(task)
  pairs = prepared.splits[split]
  rows = side.usable(pairs).astype(np.int64)
  usable = int(rows.shape[0])
  query = side.query_of(pairs)[rows].astype(np.int64)
  # Each distinct (query, item) once, at its first row; rows stay ascending.
  width = max(prepared.num_items, 1)
  _, first = np.unique(
    query * width + pairs.item_index[rows], return_index=True
  )
  first = np.sort(first)
  rows, query = rows[first], query[first]
  candidates = eval_csr.sorted_distinct(query)
  seen = seen_items(prepared, earlier, candidates, task)
  seen_pairs = 0
  if not side.scores_known_pairs:
    is_seen = eval_csr.contains(
      seen,
      np.searchsorted(candidates, query),
      pairs.item_index[rows],
    )
    seen_pairs = int(is_seen.sum())
    rows, query = rows[~is_seen], query[~is_seen]
  kept, sampling = _sample_queries(query, max_pairs, seed)
  rows, query = rows[kept], query[kept]
  queries, query_of_pair = np.unique(query, return_inverse=True)
  (indptr, indices), sources = _exclusions(
    seen, candidates, queries, earlier, side.is_item
  )
  selection = {
    "split": split,
    "task": task,
    "pairs_with_a_query": usable,
    "duplicates_removed": usable - int(first.shape[0]),
    "known_pairs": "scored" if side.scores_known_pairs else "dropped",
    "known_pairs_dropped": seen_pairs,
    "excluded": list(sources),
    "sampling": sampling,
  }
  return EvalPairs(
    split=split,
    task=task,
    pair_rows=rows,
    queries=queries,
    query_of_pair=query_of_pair.reshape(-1).astype(np.int64),
    targets=pairs.item_index[rows],
    excluded_items=(indptr, indices),
    exclusion_sources=sources,
    selection=selection,
  )


def _exclusions(seen, candidates, queries, earlier, query_is_item):
  """(the CSR of what each kept query must not be recommended, its sources).

  The items the query saw in the earlier splits; a seed item (item-to-item)
  also excludes itself from its own ranking.
  """
  indptr, indices = eval_csr.select_csr_rows(
    seen, np.searchsorted(candidates, queries)
  )
  if not query_is_item:
    return (indptr, indices), earlier
  owner = np.repeat(np.arange(queries.shape[0]), np.diff(indptr))
  csr = eval_csr.from_entries(
    np.concatenate([owner, np.arange(queries.shape[0])]),
    np.concatenate([indices, queries]),
    queries.shape[0],
  )
  return csr, (SEED_ITEM, *earlier)


def _sample_queries(
  query: np.ndarray, max_pairs: int, seed: int
) -> tuple[np.ndarray, dict]:
  """Which pairs a sample of whole queries keeps, and how it was drawn.

  Args:
    query: int [P], query of each candidate pair.
    max_pairs: About how many pairs to keep (0, or at least P: all).
    seed: Seed of the draw.

  Returns:
    (bool [P] mask of the kept pairs, the sampling record of metrics.json).
  """
  total = int(query.shape[0])
  distinct, inverse = np.unique(query, return_inverse=True)
  if not max_pairs or total <= max_pairs:
    return np.ones(total, bool), {
      "unit": "all",
      "max_pairs": int(max_pairs),
      "num_queries": int(distinct.shape[0]),
      "num_pairs": total,
    }
  num_queries = int(distinct.shape[0])
  # m queries hold m * P / Q pairs on average: m = round(max_pairs * Q / P).
  size = min(
    max(1, math.floor(max_pairs * num_queries / total + 0.5)), num_queries
  )
  chosen = np.zeros(num_queries, bool)
  rng = np.random.default_rng(seed)
  chosen[rng.choice(num_queries, size, replace=False)] = True
  kept = chosen[inverse.reshape(-1)]
  return kept, {
    "unit": "query",
    "max_pairs": int(max_pairs),
    "seed": int(seed),
    "num_queries": size,
    "of_queries": num_queries,
    "num_pairs": int(kept.sum()),
    "of_pairs": total,
  }


def protocol(pairs: EvalPairs) -> dict:
  """What an evaluation of `pairs` counted, for metrics.json.

  The selection rules and their counts (`EvalPairs.selection`), and which
  training rows the popularity slices count, hence what "cold" means.

  Example:
    >>> protocol(select_pairs(prepared, "test", "item_to_item"))["cold"]
    'items in no training interactions that have a query item'
  """
  trained_rows = query_side.query_side(pairs.task).trained_rows
  return {
    **pairs.selection,
    "train_counts": trained_rows,
    "cold": f"items in no {trained_rows}",
  }
