"""Which held-out pairs an evaluation scores, and what each query must not see.

The one place that selects the pairs of a split and builds their exclusion
lists, for the exact evaluation (`embed.evaluate_model`, used by training-time
validation and `workflow.evaluate_run`), for the evaluation through the saved
index (`workflow._evaluate_through_index`) and for the most-popular baseline,
so that all of them score the same pairs against the same exclusions.

Protocol:
  * `user_to_item`: the query is the user (`query_index`) and every pair of
    the split is scored. The user's known positives of the earlier splits
    are excluded from its ranking: its training items when scoring
    `validation`, its training and validation items when scoring `test`.
  * `item_to_item`: the query is the previous item (`prev_item_index`);
    pairs without one are skipped. The seed item itself is excluded, and
    nothing else.
  * A pair's own held-out item stays scoreable even when it is also among
    the excluded items; `eval_csr.exclusion_without_targets` takes it out of
    the lists (see the conventions of evaluate.py).
  * `max_pairs`: a uniform sample of that many pairs (without replacement,
    seeded), kept in split order.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from tfr_ssl import eval_csr
from tfr_ssl.data import contract, query_side

USER_TO_ITEM = query_side.USER_TO_ITEM
ITEM_TO_ITEM = query_side.ITEM_TO_ITEM
TASKS = query_side.TASKS
# What `EvalPairs.excluded` names for the item-to-item exclusion.
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
    exclude: CSR (indptr int64 [Q + 1], indices [nnz]) over `queries`: row i
      holds the corpus rows excluded from the ranking of `queries[i]`,
      sorted ascending and distinct (the pairs' own targets included; the
      evaluation keeps those scoreable).
    excluded: What `exclude` holds, for metrics.json: the earlier splits
      (`["train"]`, `["train", "validation"]`) or `["seed_item"]`.
  """

  split: str
  task: str
  pair_rows: np.ndarray
  queries: np.ndarray
  query_of_pair: np.ndarray
  targets: np.ndarray
  exclude: tuple[np.ndarray, np.ndarray]
  excluded: tuple[str, ...]

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


def known_items(
  prepared: contract.PreparedDataset,
  splits: tuple[str, ...] | list[str],
  queries: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
  """The union of the items `queries` interacted with in `splits`, as CSR.

  Training items come from `prepared.train_items_by_query`; the other
  splits from their interactions, keeping only the given queries, so the
  cost follows the queries evaluated rather than the whole table.

  Args:
    prepared: The dataset.
    splits: Names of the splits whose positives to collect.
    queries: int [Q] distinct query rows, ascending.

  Returns:
    (indptr int64 [Q + 1], indices int32 [nnz]): row i holds the distinct
    items of `queries[i]`, ascending.
  """
  queries = np.asarray(queries)
  rows, cols = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
  for name in splits:
    if name == "train":
      indptr, indices = eval_csr.select_csr_rows(
        prepared.train_items_by_query, queries
      )
      rows.append(np.repeat(np.arange(queries.shape[0]), np.diff(indptr)))
      cols.append(np.asarray(indices, np.int64))
      continue
    interactions = prepared.splits[name]
    position = np.searchsorted(queries, interactions.query_index)
    inside = position < queries.shape[0]
    inside[inside] = (
      queries[position[inside]] == interactions.query_index[inside]
    )
    rows.append(position[inside])
    cols.append(np.asarray(interactions.item_index[inside], np.int64))
  rows, cols = np.concatenate(rows), np.concatenate(cols)
  # As stats.items_by_query, with a sort where np.unique would hash (see
  # eval_csr.sorted_distinct): the union of the splits, distinct per query.
  width = max(int(cols.max(initial=-1)) + 1, 1)
  codes = eval_csr.sorted_distinct(rows * width + cols)
  indptr = np.zeros(queries.shape[0] + 1, np.int64)
  np.cumsum(
    np.bincount(codes // width, minlength=queries.shape[0]), out=indptr[1:]
  )
  return indptr, (codes % width).astype(np.int32)


def select_pairs(
  prepared: contract.PreparedDataset,
  split: str,
  task: str = USER_TO_ITEM,
  max_pairs: int = 0,
  seed: int = 0,
) -> EvalPairs:
  """The pairs of `split` to score, their queries and exclusion lists.

  Args:
    prepared: The dataset.
    split: `validation` or `test` (`train` is accepted and excludes
      nothing).
    task: `user_to_item` or `item_to_item` (see the module docstring).
    max_pairs: Score a uniform sample of this many pairs (0 = all).
    seed: Seed of that sample.

  Returns:
    An `EvalPairs`.

  Raises:
    ValueError: an unknown split or task.
  """
  known = earlier_splits(split)
  side = query_side.query_side(task)
  pairs = prepared.splits[split]
  pair_rows = side.usable(pairs).astype(np.int64)
  if max_pairs and len(pair_rows) > max_pairs:
    rng = np.random.default_rng(seed)
    pair_rows = np.sort(rng.choice(pair_rows, max_pairs, replace=False))
  queries, query_of_pair = np.unique(
    side.query_of(pairs)[pair_rows], return_inverse=True
  )
  if side.is_item:
    # Each seed item excludes itself from its own ranking.
    exclude = (np.arange(queries.shape[0] + 1, dtype=np.int64), queries)
    excluded = (SEED_ITEM,)
  else:
    exclude = known_items(prepared, known, queries)
    excluded = known
  return EvalPairs(
    split=split,
    task=task,
    pair_rows=pair_rows,
    queries=queries,
    query_of_pair=query_of_pair.reshape(-1).astype(np.int64),
    targets=pairs.item_index[pair_rows],
    exclude=exclude,
    excluded=excluded,
  )
