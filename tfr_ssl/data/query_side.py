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
`workflow.py`) all ask `query_side(task)`.
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
  """

  task: str
  is_item: bool

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


_SIDES = {
  USER_TO_ITEM: QuerySide(USER_TO_ITEM, is_item=False),
  ITEM_TO_ITEM: QuerySide(ITEM_TO_ITEM, is_item=True),
}


def query_side(task: str) -> QuerySide:
  """The `QuerySide` of `task` (ValueError for an unknown task)."""
  if task not in _SIDES:
    raise ValueError(f"task must be one of {list(TASKS)}, got {task!r}.")
  return _SIDES[task]
