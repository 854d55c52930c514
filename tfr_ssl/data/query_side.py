"""How a query is formed, one object per task (`model.task`), chosen once.

  - `user_to_item`: the query is the interaction's row of the query table
    (the user and its features); every interaction has one.
  - `item_to_item`: the query is an item (`prev_item_index`: the seed item
    named by the schema's query-item column, or the previous item of the
    same query's history); its features are item features, embedded by the
    shared item encoder; interactions without one are not used.

Everything that differs between the two tasks is here: the training stream
(`data/pipeline.py`), the query tower's encoder (`model.py`), the steps per
epoch (`train.py`), the exported query signature (`export.py`), the
evaluation pairs and query tables (`eval_pairs.py`, `embed.py`,
`workflow.py`) and the training counts of the rows a task trains on
(`item_train_count`: the popularity slices, the cold definition) all ask
`query_side(task)`.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from tfr_ssl.data import contract

USER_TO_ITEM = "user_to_item"
ITEM_TO_ITEM = "item_to_item"
TASKS = (USER_TO_ITEM, ITEM_TO_ITEM)


@dataclasses.dataclass(frozen=True)
class QuerySide:
  """The query of one task (see the module doc).

  Attributes:
    task: `user_to_item` or `item_to_item`.
    is_item: The query is an item: its features are item features and the
      query tower embeds them with the shared item encoder.
    scores_known_pairs: A held-out pair that repeats a (query, item) pair of
      an earlier split is still scored (user-to-item: the user chose the
      item again, and the model is asked to rank it). Item-to-item drops it
      from the evaluation instead: its pairs are formed by adjacency, so
      a popular transition recurs across splits (on MovieLens-1M, random
      split, 20,121 of the 43,570 distinct test pairs are training or
      validation pairs) and scoring them would measure how well the
      training transitions are remembered (see `eval_pairs.select_pairs`).
    trained_rows: What the rows this task trains on are, in words, for the
      reports (the definition of "seen in training" and of cold items).
  """

  task: str
  is_item: bool
  scores_known_pairs: bool
  trained_rows: str

  def features(self, schema: contract.Schema) -> tuple[contract.Feature, ...]:
    """The features the query tower reads."""
    return schema.item_features if self.is_item else schema.query_features

  def table(self, prepared: contract.PreparedDataset) -> dict[str, np.ndarray]:
    """The table whose rows are queries: the corpus, or the query table."""
    return prepared.items if self.is_item else prepared.queries

  def query_of(self, split: contract.Interactions) -> np.ndarray:
    """int32 [n]: each interaction's query row (-1: it has none)."""
    return split.prev_item_index if self.is_item else split.query_index

  def usable(self, split: contract.Interactions) -> np.ndarray:
    """int64 [m]: the rows of `split` that have a query, ascending."""
    return np.flatnonzero(self.query_of(split) >= 0)

  def item_train_count(self, prepared: contract.PreparedDataset) -> np.ndarray:
    """int64 [num_items]: each corpus row's occurrences in the training rows
    this task trains on (the `usable` rows of the train split).

    The one training count of a task: the popularity slices, the cold
    definition and the most-popular baseline of its evaluation read it.
    User-to-item trains on every row, so this is the prepared
    `item_train_count`; item-to-item skips the rows without a query item,
    which then do not count.

    Example:
      Train rows (query item, item): (none, i0), (i0, i1), (i1, i0).
      User-to-item counts i0 twice and i1 once; item-to-item skips the
      first row: i0 once, i1 once.
    """
    train = prepared.splits["train"]
    rows = self.usable(train)
    if rows.shape[0] == len(train):
      return np.asarray(prepared.item_train_count)
    return np.bincount(
      train.item_index[rows], minlength=prepared.num_items
    ).astype(np.int64)

  def trained_on(
    self, prepared: contract.PreparedDataset
  ) -> contract.PreparedDataset:
    """`prepared` with `item_train_count` counting the rows this task trains
    on (`item_train_count` above); the same object when nothing changes.

    A model built from it gets the same counts for static logQ, unigram
    negatives and the cold-item rule as the evaluation's slices.
    """
    count = self.item_train_count(prepared)
    if count is prepared.item_train_count:
      return prepared
    return dataclasses.replace(prepared, item_train_count=count)


_SIDES = {
  USER_TO_ITEM: QuerySide(
    USER_TO_ITEM,
    is_item=False,
    scores_known_pairs=True,
    trained_rows="training interactions",
  ),
  ITEM_TO_ITEM: QuerySide(
    ITEM_TO_ITEM,
    is_item=True,
    scores_known_pairs=False,
    trained_rows="training interactions that have a query item",
  ),
}


def query_side(task: str) -> QuerySide:
  """The `QuerySide` of `task` (ValueError for an unknown task)."""
  if task not in _SIDES:
    raise ValueError(f"task must be one of {list(TASKS)}, got {task!r}.")
  return _SIDES[task]
