"""Sample queries and users' training histories, for the page.

The page offers a few real queries from the run's prepared dataset and shows
a known user's training interactions beside the recommendations. This is
read once at start, only from the dataset cache (`data.is_cached`): the
service must start quickly and must start at all where the dataset is not
available (a serving machine usually has only the workdir), and then the
page simply has no samples and no histories.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from tfr_ssl import data as data_lib
from tfr_ssl.data import contract, query_side
from tfr_ssl.serving import export
from tfr_ssl.training import train

log = logging.getLogger(__name__)


class Samples:
  """Sample queries and per-user training histories.

  Args:
    prepared: The run's prepared dataset.
    task: The run's task (`user_to_item` or `item_to_item`).
    num_samples: Sample queries offered.
  """

  def __init__(
    self,
    prepared: contract.PreparedDataset,
    task: str,
    num_samples: int = 12,
  ):
    self._keys = np.array(prepared.item_keys(), dtype=object)
    schema = prepared.schema
    self.query_id = None
    self._row_of = {}
    self._starts = self._items = None
    side = query_side.query_side(task)
    if side.is_item:
      # Queries are items: offer popular items, which have no "history",
      # counted over the rows the task trains on.
      count = side.item_train_count(prepared)
      self.samples = _samples(
        prepared,
        side.table(prepared),
        side.features(schema),
        _spread(np.argsort(-count), num_samples),
        lambda row, _: (
          f"item {self._keys[row]} ({int(count[row])} in training)"
        ),
      )
      return
    self.query_id = schema.query_id
    train_split = prepared.splits["train"]
    queries = np.asarray(train_split.query_index)
    # Interactions by query, then time, then file order (the last key of
    # lexsort is its first): most recent last.
    keys = [np.arange(len(queries))]
    if train_split.timestamp is not None:
      keys.append(np.asarray(train_split.timestamp))
    order = np.lexsort((*keys, queries))
    self._items = np.asarray(train_split.item_index)[order]
    counts = np.bincount(queries, minlength=prepared.num_queries)
    self._starts = np.concatenate([[0], np.cumsum(counts)])
    vocab = prepared.vocabularies[schema.query_id]
    ids = prepared.queries[schema.query_id]
    self._row_of = {vocab[v - 1]: row for row, v in enumerate(ids) if v > 0}
    # Heavy to light users, so the samples show both.
    order = np.argsort(-counts, kind="stable")
    self.samples = _samples(
      prepared,
      prepared.queries,
      schema.query_features,
      _spread(order[counts[order] > 0], num_samples),
      lambda row, features: (
        f"{schema.query_id} {features[schema.query_id]} "
        f"({_items(int(counts[row]))} in training)"
      ),
    )

  def history(self, query_id: str, limit: int) -> dict[str, Any] | None:
    """A user's training interactions, most recent first, or None if unknown.

    Args:
      query_id: The raw query (user) id.
      limit: Ids returned at most.

    Returns:
      {"query_id", "total", "ids"}.
    """
    row = self._row_of.get(query_id)
    if row is None:
      return None
    items = self._items[self._starts[row] : self._starts[row + 1]]
    recent = items[::-1][:limit]
    return {
      "query_id": query_id,
      "total": len(items),
      "ids": [str(k) for k in self._keys[recent]],
    }


def _samples(
  prepared: contract.PreparedDataset,
  table: Mapping[str, np.ndarray],
  features: Sequence[contract.Feature],
  rows: np.ndarray,
  label: Callable[[int, dict[str, str]], str],
) -> list[dict[str, Any]]:
  """The page's samples of `rows` of `table` (the items or the queries).

  Each is the row's raw features, as a user would send them, and a label
  written by `label(row, those features)`: the one shape the page reads
  whichever side the queries come from.
  """
  raw = export.raw_features(table, features, prepared.vocabularies, rows)
  samples = []
  for i, row in enumerate(rows):
    values = {name: str(column[i]) for name, column in raw.items()}
    samples.append({"label": label(int(row), values), "features": values})
  return samples


def _items(n: int) -> str:
  return f"{n} item" if n == 1 else f"{n} items"


def _spread(order: np.ndarray, n: int) -> np.ndarray:
  """n entries of `order` evenly spaced from its start to its end."""
  if len(order) <= n:
    return order
  return order[np.linspace(0, len(order) - 1, n).round().astype(int)]


def load_samples(workdir: str, num_samples: int = 12) -> Samples | None:
  """The samples of a run from the dataset cache, or None (logged why)."""
  try:
    config = train.read_config(workdir)
    if not data_lib.is_cached(config.data):
      log.warning(
        "The run's dataset is not in the cache %s: the page has no sample "
        "queries or histories.",
        config.data.cache_dir,
      )
      return None
    prepared = data_lib.load(config.data)
    return Samples(prepared, config.model.task, num_samples)
  except Exception as e:  # The page is optional; serving is not.
    log.warning("No sample queries for the page: %s", e)
    return None
